"""Events that only mean something next to another event of the same thread, paired per batch.

- A syscall's entry line holds the arguments and its exit line the return value; a thread is in
  at most one syscall at a time, so an entry pairs with the next record of its thread when that
  is the exit of the same call.
- kvm_page_fault names a guest-physical address after an EPT/NPT violation, but a guest-virtual
  one after a #PF intercept (VMX EXCEPTION_NMI with vector 14, SVM 'PF excp'): it is read against
  the kvm_exit before it on the same vCPU thread.
Both work on Arrow tables sorted by (thread key, position); what a batch leaves open (an entry
whose exit is in the next batch, each thread's last exit) is carried to the next one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SYSCALLS = pa.schema([("key", pa.int64()), ("pos", pa.int64()), ("ts", pa.int64()), ("comm", pa.string()),
                      ("name", pa.string()), ("exit", pa.bool_()), ("a0", pa.uint64()), ("a1", pa.uint64()),
                      ("a2", pa.uint64()), ("a3", pa.uint64()), ("ret", pa.uint64())])
EXITS = pa.schema([("key", pa.int64()), ("pos", pa.int64()), ("pf_exit", pa.bool_()), ("row", pa.int64())])


def _sorted(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("key", "ascending"), ("pos", "ascending")]))


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(mask.fill_null(False), dtype=bool)


class SyscallPairing:
    """Entry/exit records in, finished calls out (with ret and end time, null when the exit is missing)."""

    def __init__(self) -> None:
        self.open = SYSCALLS.empty_table()
        self.exits_without_entry = 0

    def feed(self, records: list[pa.Table], *, final: bool = False) -> pa.Table:
        stream = pa.concat_tables([self.open, *records])
        if stream.num_rows == 0:
            return stream.append_column("ret_signed", pa.array([], pa.int64())).append_column(
                "end", pa.array([], pa.int64()))
        stream = _sorted(stream).combine_chunks()
        n = stream.num_rows
        key = np.asarray(stream["key"])
        is_exit = _np(stream["exit"])
        same_next = np.zeros(n, dtype=bool)
        same_next[:-1] = key[1:] == key[:-1]
        name_next = np.zeros(n, dtype=bool)
        name_next[:-1] = _np(pc.equal(stream["name"].slice(1), stream["name"].slice(0, n - 1)))
        exit_next = np.zeros(n, dtype=bool)
        exit_next[:-1] = is_exit[1:]
        paired = ~is_exit & same_next & name_next & exit_next
        waiting = ~is_exit & ~same_next & (not final)  # the thread's last record: its exit may come later
        self.open = stream.filter(pa.array(waiting))
        matched = np.zeros(n, dtype=bool)
        matched[1:] = paired[:-1]
        self.exits_without_entry += int((is_exit & ~matched).sum())
        nxt = pa.array(np.minimum(np.arange(n) + 1, n - 1))
        pm = pa.array(paired)
        ret = pc.if_else(pm, stream["ret"].take(nxt), pa.scalar(None, pa.uint64()))
        end = pc.if_else(pm, stream["ts"].take(nxt), pa.scalar(None, pa.int64()))
        done = pa.array(~is_exit & ~waiting)
        # return values are the register as unsigned hex: -22 prints as 0xffffffffffffffea
        return (stream.append_column("ret_signed", pc.cast(ret, pa.int64(), safe=False))
                .append_column("end", end).filter(done))


class FaultPairing:
    """kvm_exit records and kvm_page_fault rows in; which fault rows follow a #PF intercept out."""

    def __init__(self) -> None:
        self.last = EXITS.empty_table()  # each thread's last record so far

    def feed(self, exits: list[pa.Table], faults: pa.Table | None) -> np.ndarray:
        """`faults` has key and pos columns; returns a mask over its rows: True = the address is a GVA."""
        parts = [self.last, *exits]
        n_faults = 0 if faults is None else faults.num_rows
        if n_faults:
            parts.append(pa.table({"key": faults["key"], "pos": faults["pos"],
                                   "pf_exit": pa.nulls(n_faults, pa.bool_()).fill_null(False),
                                   "row": np.arange(n_faults, dtype=np.int64)}, schema=EXITS))
        stream = _sorted(pa.concat_tables([t.cast(EXITS) for t in parts])).combine_chunks()
        key = np.asarray(stream["key"])
        pf_exit = _np(stream["pf_exit"])
        rows = np.asarray(stream["row"])
        after_pf = np.zeros(len(key), dtype=bool)
        after_pf[1:] = (key[1:] == key[:-1]) & pf_exit[:-1]
        last = np.ones(len(key), dtype=bool)
        last[:-1] = key[1:] != key[:-1]
        self.last = stream.filter(pa.array(last)).set_column(3, "row", pa.array(np.full(int(last.sum()), -1)))
        gva = np.zeros(n_faults, dtype=bool)
        hit = (rows >= 0) & after_pf
        gva[rows[hit]] = True
        return gva
