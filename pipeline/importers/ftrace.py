"""ftrace text (tracefs `trace` / `trace_pipe`, `trace-cmd report`) into a run.

Event line layouts read (kernel trace_output.c / trace.c, trace-cmd's trace-read.c):
    python-23688   (  23688) [001] .....  3521.003127: sys_madvise(start: 0x7eff81000000, len_in: 0x1000, behavior: 4)
           CPU 5/KVM-4145    [002] d..1.    86.581928: kvm_page_fault: vcpu 5 rip 0x7f08 address 0x1136 error_code 0x181
    host.dat:  qemu-system-x86-8397  [002]  1404.389366: kvm_exit: ...         (trace-cmd report of several files)
      <idle>-0       0d..1 12345.678901: ...                                  (trace-cmd report -l)
with or without the TGID column, with 0 or 1-7 flag characters, comms with spaces and dashes, and
leading blanks or none. Header lines (`#...`, `cpus=N`, `CPU N is empty`, `version = N`) are skipped;
`CPU:N [LOST M EVENTS]` (tracefs) and `CPU:N [M EVENTS DROPPED]` / `CPU:N [EVENTS DROPPED]` (trace-cmd)
become lost_events rows.
Any other line is counted as a non-trace line (count and first line numbers in the manifest), except
the continuation of an event line that a mail client wrapped, which is joined back (counted too).

The file prefix of a multi-file trace-cmd report keeps each file's threads apart: the first file's
ids stay as they are, the k-th file's ids are moved up by k * PID_MAX_LIMIT (manifest: namespaces).
Without a TGID column, QEMU's threads (`CPU n/KVM`, `IO ...`, `qemu-system-*`, `vhost-N`) are grouped
into one process per file (--pid, else the process a vhost-N worker is named after, else the smallest
QEMU thread id as a stand-in); other threads' ids stand in for their process; pid_from says which.

Times are the trace clock's. The clock is what the trace states (a pasted tracefs `trace_clock` line)
or what --trace-clock says; mono gives CLOCK_MONOTONIC, any clock plus --clock-offset is aligned,
anything else stays relative within the file (the session clock domain says so).

Parsing is vectorised over Arrow batches of lines; rows are staged in Arrow IPC files and copied into the
run only when the whole input has been read, so a rejected import leaves the run as it was.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.constants import (FALLOC_FL_PUNCH_HOLE, KVM_CLEAR_DIRTY_LOG, KVM_GET_DIRTY_LOG,
                                KVM_RESET_DIRTY_RINGS, KVM_RUN, MADV_DONTNEED, MADV_DONTNEED_LOCKED,
                                MADV_FREE, MADV_REMOVE, PF_VECTOR, PID_MAX_LIMIT)
from pipeline.importers import TraceFormatError
from pipeline.importers.ftrace_events import EVENTS, KVM_EXIT, SYSCALL_ARGS, SYSCALL_RET
from pipeline.importers.ftrace_lines import InputFile, line_batches
from pipeline.importers.ftrace_pairing import SYSCALLS, FaultPairing, SyscallPairing
from pipeline.importers.ftrace_pids import assign_pids, parse_pid_options
from pipeline.importers.ftrace_prefix import event_fields
from pipeline.importers.ftrace_template import Template, explain, match_any
from pipeline.manifest import clock as manifest_clock
from pipeline.runstore import RunWriter, conform
from pipeline.schema import FAMILY_BY_NAME

HEADER = r"^\s*(?:\S+: )?\s*(?:#.*|cpus=\d+|CPU \d+ is empty|version = \S+)\s*$"
FILE_HEADER = r"^\s*(?P<file>\S+): cpus=\d+\s*$"
LOST = (r"^\s*(?:(?P<file>\S+): \s*)?CPU:(?P<cpu>\d{1,6}) \[(?:LOST (?P<lost>\d{1,19}) EVENTS|"
        r"(?P<dropped>\d{1,19}) EVENTS DROPPED|(?P<unknown>EVENTS DROPPED))\]\s*$")
CLOCKS = ("local", "global", "counter", "uptime", "perf", "mono", "mono_raw", "boot", "tai", "x86-tsc")
# tracefs's trace_clock file lists the clocks with the selected one in brackets: "[local] global ... mono"
CLOCK_LINE = r"^\s*(?P<clocks>(?:\[?[\w-]+\]? )*\[[\w-]+\](?: \[?[\w-]+\]?)*)\s*$"
VCPU_COMM = r"^CPU (?P<n>\d{1,6})/KVM$"

DISCARD_ADVICE = [MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_DONTNEED_LOCKED]
DIRTY_IOCTLS = {KVM_GET_DIRTY_LOG: "kvm_get_dirty_log", KVM_CLEAR_DIRTY_LOG: "kvm_clear_dirty_log",
                KVM_RESET_DIRTY_RINGS: "kvm_reset_dirty_rings"}
NS_LIMIT = (1 << 31) // PID_MAX_LIMIT  # namespaces whose moved ids still fit the int32 pid column
FIRST_KEPT = 20


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.nulls(n, type_).fill_null(pa.scalar(value, type_))


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.fill_null(False), dtype=bool)


@dataclass
class Staged:
    """Rows of one family, written to an Arrow IPC file (LZ4) as batches arrive (pids are fixed at
    commit). IPC rather than Parquet: the rows are read back once, and IPC writes them at a fraction
    of Parquet's encoding cost."""

    path: Path
    schema: pa.Schema
    writer: pa.ipc.RecordBatchFileWriter | None = None
    rows: int = 0

    def add(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_file(str(self.path), self.schema,
                                          options=pa.ipc.IpcWriteOptions(compression="lz4"))
        self.writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def tables(self, rows: int) -> Iterator[pa.Table]:
        """The staged rows again, about `rows` at a time (read, not mapped: memory stays bounded)."""
        with pa.OSFile(str(self.path)) as src:
            reader = pa.ipc.open_file(src)
            held: list[pa.RecordBatch] = []
            held_rows = 0
            for i in range(reader.num_record_batches):
                held.append(reader.get_batch(i))
                held_rows += held[-1].num_rows
                if held_rows >= rows:
                    yield pa.Table.from_batches(held)
                    held, held_rows = [], 0
            if held:
                yield pa.Table.from_batches(held)


@dataclass
class Batch:
    """One batch of lines and, for its event lines, the columns every event needs."""

    path: Path
    lines: pa.Array
    is_event: np.ndarray
    ev_idx: np.ndarray  # line index of each event line
    consumed: np.ndarray  # lines joined back into the event line before them
    key: np.ndarray = None  # namespace * PID_MAX_LIMIT + tid
    ts: np.ndarray = None
    comm: pa.Array = None
    lineno: np.ndarray = None
    pos: np.ndarray = None  # position across all files, for pairing


@dataclass
class Parse:
    """Everything an import learns beside the rows: counts, threads, clock, pairing state."""

    staging: Path
    skip_bad: bool
    staged: dict[str, Staged] = field(default_factory=dict)
    namespaces: dict[str, int] = field(default_factory=dict)
    file_prefixes: set[str] = field(default_factory=set)
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    context: dict[str, int] = field(default_factory=dict)
    not_imported: dict[str, int] = field(default_factory=dict)
    non_trace: int = 0
    other_lines: dict[str, int] = field(default_factory=lambda: {"header": 0, "blank": 0, "lost": 0, "clock": 0})
    non_trace_first: list[tuple[str, int]] = field(default_factory=list)
    rejoined: int = 0
    bad: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # this batch's (line, file, why)
    lost: list[dict[str, Any]] = field(default_factory=list)
    stated_clock: str | None = None
    event_lines: int = 0
    lines: int = 0
    raw_counter_times: bool = False
    last_ts: int | None = None
    first_line_consumed: bool = False  # the next batch's first line was joined into this batch's last event
    syscalls: SyscallPairing = field(default_factory=SyscallPairing)
    faults: FaultPairing = field(default_factory=FaultPairing)

    def stage(self, family: str, columns: dict[str, Any], n: int) -> None:
        if n == 0:
            return
        fam = FAMILY_BY_NAME[family]
        arrays = {}
        for name, value in columns.items():
            if isinstance(value, np.ndarray):
                value = pa.array(value)
            arrays[name] = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else \
                _const(value, n, fam.schema.field(name).type)
        table = conform(fam, pa.table(arrays))
        if family not in self.staged:
            loose = fam.schema.set(0, fam.schema.field("event_id").with_nullable(True))
            self.staged[family] = Staged(self.staging / f"{family}.arrow", loose)
        self.staged[family].add(table)

    def reject(self, where: tuple[str, int], message: str) -> None:
        """A line that cannot be imported: kept for --skip-bad, else raised once its batch is read
        (the first in the file, whichever check found it)."""
        self.rejected.append((where[1], where[0], message))

    def namespace(self, prefix: str) -> int:
        if prefix not in self.namespaces:
            if len(self.namespaces) >= NS_LIMIT:
                raise ValueError(f"more than {NS_LIMIT} trace-cmd file prefixes")
            self.namespaces[prefix] = len(self.namespaces)
        return self.namespaces[prefix]


# -- one batch of lines --------------------------------------------------------------------------

def _batch(p: Parse, path: Path, lines: pa.Array, first_line: int, lookahead: int,
           cut: tuple[np.ndarray, dict[str, pa.Array]]) -> None:
    """Parse lines[:-lookahead]; the last line is only read ahead, for wrapped continuations.
    `cut` is event_fields(lines), computed ahead on another core."""
    n = len(lines) - lookahead
    lineno = np.arange(first_line, first_line + n, dtype=np.int64)
    pos = np.arange(p.lines, p.lines + n, dtype=np.int64)
    p.lines += n
    is_event, fields = cut
    ev_idx = np.flatnonzero(is_event)
    inside = ev_idx < n
    if not inside.all():
        keep = pa.array(inside)
        fields = {k: v.filter(keep) for k, v in fields.items()}
        ev_idx = ev_idx[inside]
    consumed = np.zeros(len(lines), dtype=bool)
    consumed[0] = p.first_line_consumed
    b = Batch(path, lines, is_event, ev_idx, consumed)
    ts = np.empty(0, np.int64)
    if len(ev_idx):
        b.lineno, b.pos = lineno[ev_idx], pos[ev_idx]
        ts = _event_rows(p, b, fields)
    p.first_line_consumed = bool(lookahead and consumed[n])
    other = np.flatnonzero(~is_event[:n])
    if len(other):
        _other_lines(p, path, lines.take(pa.array(other)), lineno[other], consumed[other], lineno[ev_idx], ts)


def _other_lines(p: Parse, path: Path, text: pa.Array, lineno: np.ndarray, consumed: np.ndarray,
                 ev_lineno: np.ndarray, ev_ts: np.ndarray) -> None:
    blank = _mask(pc.equal(pc.utf8_trim_whitespace(text), ""))
    header = _mask(pc.match_substring_regex(text, HEADER))
    if header.any():
        files = pc.extract_regex(text.filter(pa.array(header)), FILE_HEADER)
        p.file_prefixes.update(files.filter(files.is_valid()).field("file").to_pylist())
    lost = pc.extract_regex(text, LOST)
    is_lost = _mask(lost.is_valid())
    for row, ln in zip(lost.filter(pa.array(is_lost)).to_pylist() if is_lost.any() else [], lineno[is_lost]):
        # the loss ends where the CPU's next event starts: the next event line printed
        after = np.searchsorted(ev_lineno, ln)
        reason = (f"ring buffer overrun on CPU {row['cpu']} before {path.name}:{ln}" if not row["unknown"] else
                  f"events dropped on CPU {row['cpu']} before {path.name}:{ln} (at least 1; trace-cmd did not "
                  "say how many)")
        p.lost.append({"count": int(row["lost"] or row["dropped"] or 1), "reason": reason,
                       "ts": int(ev_ts[after]) if after < len(ev_ts) else None})
    clock = pc.extract_regex(text, CLOCK_LINE)
    is_clock = _mask(clock.is_valid())
    for i in np.flatnonzero(is_clock):
        words = clock[int(i)]["clocks"].as_py().split()
        chosen = [w.strip("[]") for w in words if w.startswith("[")]
        if {w.strip("[]") for w in words} <= set(CLOCKS) and len(chosen) == 1:
            p.stated_clock = chosen[0]
        else:
            is_clock[i] = False  # bracketed words that are not tracefs's clock list
    rest = ~(blank | header | is_lost | is_clock | consumed)
    for kind, mask in (("blank", blank), ("header", header & ~blank), ("lost", is_lost), ("clock", is_clock)):
        p.other_lines[kind] += int((mask & ~consumed).sum())
    count = int(rest.sum())
    if count:
        p.non_trace += count
        room = FIRST_KEPT - len(p.non_trace_first)
        if room > 0:
            p.non_trace_first.extend((str(path), int(ln)) for ln in lineno[rest][:room])


def _event_rows(p: Parse, b: Batch, f: dict[str, pa.Array]) -> np.ndarray:
    k = len(b.ev_idx)
    p.event_lines += k
    sec = np.asarray(pc.cast(f["sec"], pa.int64()))
    no_frac = _mask(pc.equal(f["frac"], ""))
    if no_frac.any():
        p.raw_counter_times = True  # counter / x86-tsc clocks print raw counts without a decimal point
    nsec = np.asarray(pc.cast(pc.utf8_rpad(pc.if_else(pa.array(no_frac), "0", f["frac"]), 9, "0"), pa.int64()))
    ts = np.where(no_frac, sec, sec * 1_000_000_000 + nsec)
    p.last_ts = int(ts[-1])

    enc = pc.dictionary_encode(f["file"])
    ns_of_code = np.array([p.namespace(x) for x in enc.dictionary.to_pylist()], dtype=np.int64)
    ns = ns_of_code[np.asarray(enc.indices)]
    tid = np.asarray(pc.cast(f["tid"], pa.int64()))
    tgid_known = _mask(pc.utf8_is_digit(f["tgid"])) & _mask(pc.not_equal(f["tgid"], ""))
    tgid = np.asarray(pc.cast(pc.if_else(pa.array(tgid_known), f["tgid"], "0"), pa.int64()))
    bad_tid = (tid >= PID_MAX_LIMIT) | (tgid >= PID_MAX_LIMIT)
    for i in np.flatnonzero(bad_tid):
        p.reject((str(b.path), int(b.lineno[i])), f"thread id beyond the kernel's PID_MAX_LIMIT ({PID_MAX_LIMIT})")
    b.key, b.ts, b.comm = tid + ns * PID_MAX_LIMIT, ts, f["comm"]
    _threads(p, b.key, f["comm"], tgid + ns * PID_MAX_LIMIT, tgid_known & ~bad_tid)

    names = pc.dictionary_encode(f["event"])
    codes = np.asarray(names.indices)
    records: list[pa.Table] = []
    exits: list[pa.Table] = []
    faults: list[pa.Table] = []
    for code, name in enumerate(names.dictionary.to_pylist()):
        sel = (codes == code) & ~bad_tid
        if not sel.any():
            continue
        if name in EVENTS:
            rows = _known_event(p, b, name, sel, f["args"])
            if rows is not None:
                faults.append(rows)
        elif name == "kvm_exit":
            exits.append(_kvm_exits(p, b, sel, f["args"]))
        elif name.startswith("sys_") and name[4:] in SYSCALL_ARGS:
            records.append(_syscalls(p, b, name[4:], sel, f["sep"], f["args"]))
        else:
            p.unknown[name] = p.unknown.get(name, 0) + int(sel.sum())
    if records:
        _syscall_rows(p, p.syscalls.feed(records))
    if exits or faults:
        _fault_rows(p, exits, pa.concat_tables(faults) if faults else None)
    return ts


def _threads(p: Parse, key: np.ndarray, comm: pa.Array, tgid: np.ndarray, tgid_known: np.ndarray) -> None:
    t = pa.table({"key": key, "comm": comm, "tgid": pa.array(tgid, mask=~tgid_known)})
    for row in t.group_by(["key", "comm"]).aggregate([("tgid", "max")]).to_pylist():
        th = p.threads.setdefault(row["key"], {"comms": set(), "tgid": None})
        if len(th["comms"]) < 8:
            th["comms"].add(row["comm"])
        if row["tgid_max"] is not None:
            th["tgid"] = row["tgid_max"]


def _envelope(b: Batch, sel: np.ndarray) -> dict[str, Any]:
    key = pa.array(b.key[sel], pa.int32())
    return {"ts_ns": b.ts[sel], "tid": key, "pid": key, "comm": b.comm.filter(pa.array(sel)), "source": "ftrace"}


def _vcpu_from_comm(comm: pa.Array) -> pa.Array:
    """QEMU names a vCPU thread 'CPU n/KVM' with n its cpu_index."""
    if isinstance(comm, pa.ChunkedArray):
        comm = comm.combine_chunks()
    is_vcpu = pc.and_(pc.starts_with(comm, "CPU "), pc.ends_with(comm, "/KVM"))
    if not _mask(is_vcpu).any():
        return pa.nulls(len(comm), pa.int32())
    got = pc.extract_regex(comm.filter(is_vcpu), VCPU_COMM)
    n = pc.cast(pc.if_else(got.is_valid(), got.field("n"), pa.scalar(None, pa.string())), pa.int32())
    values, valid = np.zeros(len(comm), np.int32), np.zeros(len(comm), bool)
    values[_mask(is_vcpu)] = np.asarray(n.fill_null(0))
    valid[_mask(is_vcpu)] = _mask(n.is_valid())
    return pa.array(values, pa.int32(), mask=~valid)


def _parse_args(p: Parse, b: Batch, what: str, layouts: tuple[Template, ...], sel: np.ndarray,
                args: pa.Array, *, rejoin: bool = True) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Match one event's arguments. A line that does not match is joined with the next line when that is
    a continuation (a mail client wrapped it) and then matches; otherwise it is rejected."""
    sub = args.filter(pa.array(sel))
    ok, values = match_any(layouts, sub)
    if ok.all():
        return values, sel
    where = np.flatnonzero(sel)
    fixed = sub.to_pylist()
    for j in np.flatnonzero(~ok):
        nxt = b.ev_idx[where[j]] + 1
        if rejoin and nxt < len(b.lines) and not b.is_event[nxt] and not b.consumed[nxt]:
            cont = b.lines[int(nxt)].as_py().strip()
            joined = fixed[j].rstrip() + " " + cont
            if cont and match_any(layouts, pa.array([joined]))[0][0]:
                fixed[j] = joined
                b.consumed[nxt] = True
                p.rejoined += 1
                continue
        p.reject((str(b.path), int(b.lineno[where[j]])),
                 f"{what}: arguments {fixed[j]!r} do not match its format ({explain(layouts, fixed[j])}; "
                 f"layouts: {' | '.join(t.text for t in layouts)})")
    ok, values = match_any(layouts, pa.array(fixed, pa.string()))
    keep = sel.copy()
    keep[where[~ok]] = False
    return values, keep


def _known_event(p: Parse, b: Batch, name: str, sel: np.ndarray, args: pa.Array) -> pa.Table | None:
    """Stage one known event's rows; kvm_page_fault rows are returned instead, for pairing."""
    spec = EVENTS[name]
    values, sel = _parse_args(p, b, name, spec.layouts, sel, args)
    n = int(sel.sum())
    if n == 0:
        return None
    cols = {**_envelope(b, sel), **spec.build(values)}
    if spec.family == "guest_accesses":
        vcpu = _vcpu_from_comm(cols["comm"])
        given = cols.get("vcpu")
        cols["vcpu"] = vcpu if given is None else pc.coalesce(pc.cast(given, pa.int32()), vcpu)
    if name != "kvm_page_fault":
        p.stage(spec.family, cols, n)
        return None
    fam = FAMILY_BY_NAME["guest_accesses"]
    table = conform(fam, pa.table({c: pa.array(v) if isinstance(v, np.ndarray) else v
                                   if isinstance(v, (pa.Array, pa.ChunkedArray))
                                   else _const(v, n, fam.schema.field(c).type) for c, v in cols.items()}))
    return table.append_column("key", pa.array(b.key[sel])).append_column("pos", pa.array(b.pos[sel]))


def _kvm_exits(p: Parse, b: Batch, sel: np.ndarray, args: pa.Array) -> pa.Table:
    """kvm_exit lines as pairing records: was this exit a #PF intercept?"""
    values, sel = _parse_args(p, b, "kvm_exit", KVM_EXIT, sel, args)
    n = int(sel.sum())
    p.context["kvm_exit"] = p.context.get("kvm_exit", 0) + n
    if n == 0:
        return pa.table({"key": pa.array([], pa.int64()), "pos": pa.array([], pa.int64()),
                         "pf_exit": pa.array([], pa.bool_()), "row": pa.array([], pa.int64())})
    vector = pc.bit_wise_and(values["intr"], pa.scalar(0xFF, pa.uint64()))
    vmx_pf = pc.and_(pc.equal(values["reason"], "EXCEPTION_NMI"), pc.equal(vector, PF_VECTOR))
    svm_pf = pc.and_(pc.equal(values["reason"], "PF"), pc.equal(values["reason2"], "excp"))
    pf = pc.or_(vmx_pf.fill_null(False), svm_pf.fill_null(False))
    return pa.table({"key": b.key[sel], "pos": b.pos[sel], "pf_exit": pf, "row": np.full(n, -1)})


def _fault_rows(p: Parse, exits: list[pa.Table], faults: pa.Table | None) -> None:
    gva = p.faults.feed(exits, faults)
    if faults is None:
        return
    table = faults.drop_columns(["key", "pos"])
    mask = pa.array(gva)
    gpa = table["gpa"]
    table = table.set_column(table.schema.get_field_index("gva"), "gva",
                             pc.if_else(mask, gpa, pa.scalar(None, pa.uint64())))
    table = table.set_column(table.schema.get_field_index("gpa"), "gpa",
                             pc.if_else(mask, pa.scalar(None, pa.uint64()), gpa))
    p.stage("guest_accesses", {c: table[c] for c in table.column_names}, table.num_rows)


def _syscalls(p: Parse, b: Batch, name: str, sel: np.ndarray, sep: pa.Array, args: pa.Array) -> pa.Table:
    """Entries and exits of one syscall as pairing records, arguments in a0..a3 in format order."""
    is_exit = _mask(pc.equal(sep, " -> "))
    is_enter = _mask(pc.equal(sep, "("))
    parts = []
    enter = sel & is_enter
    if enter.any():
        inner = pc.if_else(pc.ends_with(args, ")"), pc.utf8_slice_codeunits(args, 0, -1), args)
        values, enter = _parse_args(p, b, f"sys_{name}", (SYSCALL_ARGS[name],), enter, inner)
        cols = {f"a{i}": values[fname] for i, fname in enumerate(SYSCALL_ARGS[name].fields)}
        parts.append(_sys_table(b, enter, name, False, cols))
    leave = sel & is_exit
    if leave.any():
        values, leave = _parse_args(p, b, f"sys_{name}", (SYSCALL_RET,), leave, args, rejoin=False)
        parts.append(_sys_table(b, leave, name, True, {"ret": values.get("ret")}))
    for ln in b.lineno[sel & ~is_exit & ~is_enter]:
        p.reject((str(b.path), int(ln)), f"sys_{name}: neither 'sys_{name}(ARGS)' nor 'sys_{name} -> RET'")
    return pa.concat_tables(parts) if parts else SYSCALLS.empty_table()


def _sys_table(b: Batch, sel: np.ndarray, name: str, exit_: bool, cols: dict[str, pa.Array]) -> pa.Table:
    n = int(sel.sum())
    data = {"key": b.key[sel], "pos": b.pos[sel], "ts": b.ts[sel], "comm": b.comm.filter(pa.array(sel)),
            "name": _const(name, n, pa.string()), "exit": _const(exit_, n, pa.bool_())}
    for c in ("a0", "a1", "a2", "a3", "ret"):
        data[c] = cols[c] if cols.get(c) is not None else pa.nulls(n, pa.uint64())
    return pa.table(data, schema=SYSCALLS)


def _syscall_rows(p: Parse, rows: pa.Table) -> None:
    def envelope(t: pa.Table) -> dict[str, Any]:
        return {"ts_ns": t["ts"], "tid": pc.cast(t["key"], pa.int32()), "pid": pc.cast(t["key"], pa.int32()),
                "comm": t["comm"], "source": "ftrace", "ret": t["ret_signed"], "end_ns": t["end"]}

    def take(name: str, wanted) -> pa.Table:
        mine = rows.filter(pc.equal(rows["name"], name))
        kept = mine.filter(wanted(mine)) if mine.num_rows else mine
        if mine.num_rows - kept.num_rows:
            p.not_imported[f"sys_{name}"] = p.not_imported.get(f"sys_{name}", 0) + mine.num_rows - kept.num_rows
        return kept

    m = take("madvise", lambda t: pc.is_in(t["a2"], pa.array(DISCARD_ADVICE, pa.uint64())))
    p.stage("discards", {**envelope(m), "syscall": "madvise", "hva_start": m["a0"], "size": m["a1"],
                         "advice": m["a2"]}, m.num_rows)
    punch = pa.scalar(FALLOC_FL_PUNCH_HOLE, pa.uint64())
    f = take("fallocate", lambda t: pc.not_equal(pc.bit_wise_and(t["a1"], punch), 0))
    p.stage("discards", {**envelope(f), "syscall": "fallocate", "fd": f["a0"], "mode": f["a1"],
                         "offset": f["a2"], "size": f["a3"]}, f.num_rows)
    io = take("ioctl", lambda t: pc.is_in(t["a1"], pa.array([KVM_RUN, *DIRTY_IOCTLS], pa.uint64())))
    run = io.filter(pc.equal(io["a1"], KVM_RUN))
    p.stage("vcpu_runs", {**envelope(run), "op": "run", "vcpu_fd": run["a0"],
                          "vcpu": _vcpu_from_comm(run["comm"])}, run.num_rows)
    for cmd, op in DIRTY_IOCTLS.items():
        d = io.filter(pc.equal(io["a1"], cmd))
        p.stage("dirty_log", {**envelope(d), "op": op, "fd": d["a0"]}, d.num_rows)


# -- whole input -----------------------------------------------------------------------------------

def _blocks(paths: list[Path], inputs: list[InputFile]) -> Iterator[tuple[Path, pa.Array, int, int]]:
    """(file, lines, first line number, read-ahead lines) for every block of every file; a block's last
    line is parsed with the next block, so that a wrapped continuation can be joined to it."""
    for path in paths:
        info = InputFile(Path(path))
        inputs.append(info)
        held: tuple[pa.Array, int] | None = None
        for lines, first in line_batches(Path(path), info):
            if held is not None:
                lines, first = pa.concat_arrays([held[0], lines]), held[1]
            held = (lines.slice(len(lines) - 1), first + len(lines) - 1)
            yield Path(path), lines, first, 1
        if held is not None:
            yield Path(path), held[0], held[1], 0


def _read_ahead(paths: list[Path], inputs: list[InputFile], out: queue.Queue, stop: threading.Event) -> None:
    """Second thread: read and split every block, hand it over with a future of its cut prefixes, then
    cut them (Arrow kernels release the GIL); ends with None, or with the exception reading raised."""
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    blocks = _blocks(paths, inputs)
    try:
        for block in blocks:
            cut: Future = Future()
            if not put((block, cut)):
                return
            try:
                cut.set_result(event_fields(block[1]))
            except Exception as e:  # raised where the block is parsed, as before
                cut.set_exception(e)
        put(None)
    except Exception as e:
        put(e)
    finally:
        blocks.close()


def parse(paths: list[Path], staging: Path, *, skip_bad: bool = False) -> tuple[Parse, list[InputFile]]:
    """Read every file, staging rows under `staging`; raise TraceFormatError on the first bad line
    (unless skip_bad) and when no file holds a single event line.

    Reading, line splitting and cutting the line prefixes of the next blocks run on a second thread
    while this one parses the arguments and pairs the events of the current block. A block is
    parsed once the next one has been read, so that a read error stops the import first, as it did
    when both were read here."""
    p = Parse(staging=staging, skip_bad=skip_bad)
    inputs: list[InputFile] = []
    current: Path | None = None
    handover: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    ahead = threading.Thread(target=_read_ahead, args=(paths, inputs, handover, stop), daemon=True)
    ahead.start()
    try:
        pending = None
        while (job := handover.get()) is not None:
            if isinstance(job, Exception):
                raise job
            if pending is not None:
                current = _run_batch(p, *pending, current)
            pending = job
        if pending is not None:
            _run_batch(p, *pending, current)
    finally:
        stop.set()
        ahead.join()
    _syscall_rows(p, p.syscalls.feed([], final=True))
    for s in p.staged.values():
        s.close()
    if p.event_lines == 0:
        raise TraceFormatError(str(paths[0]) if paths else "-", 0,
                               "no ftrace event line ('COMM-TID [CPU] ... SECONDS.FRACTION: event: ...') "
                               "in the input")
    return p, inputs


def _run_batch(p: Parse, block: tuple[Path, pa.Array, int, int], cut: Future, current: Path | None) -> Path:
    path, lines, first, lookahead = block
    if path != current:
        p.first_line_consumed = False  # a new file: nothing of it was read ahead
    if len(lines) > lookahead:
        try:
            _batch(p, path, lines, first, lookahead, cut.result())
        except TraceFormatError:
            raise
        except ValueError as e:
            raise TraceFormatError(str(path), first, str(e)) from None
        p.rejected.sort()
        if p.rejected and not p.skip_bad:
            line, where, message = p.rejected[0]
            raise TraceFormatError(where, line, message)
        p.bad.extend(f"{where}:{line}: {message}" for line, where, message in p.rejected)
        p.rejected.clear()
    return path


# -- into the run ------------------------------------------------------------------------------------

def clock_of(p: Parse, trace_clock: str | None, clock_offset_ns: int | None, where: str) -> dict[str, Any]:
    """The session's clock: what the trace states or --trace-clock says, never assumed."""
    if p.stated_clock and trace_clock and trace_clock != p.stated_clock:
        raise TraceFormatError(where, 0, f"--trace-clock {trace_clock} but the trace says it was recorded "
                                         f"with {p.stated_clock}")
    name = trace_clock or p.stated_clock
    source = (f"ftrace trace_clock {name} ({'stated in the trace' if p.stated_clock else '--trace-clock'})"
              if name else "ftrace: trace_clock not stated (times are relative within the file)")
    if p.raw_counter_times and name not in ("counter", "x86-tsc"):
        source += "; some times are raw counter values"
    if clock_offset_ns is not None:
        return manifest_clock("monotonic", source + ", --clock-offset", "given", offset_ns=clock_offset_ns)
    if name == "mono":
        return manifest_clock("monotonic", source, "none", offset_ns=0)
    return manifest_clock("relative", source)


def import_ftrace(paths: list[Path], run_dir: Path, *, trace_clock: str | None = None,
                  clock_offset_ns: int | None = None, skip_bad: bool = False, pids: list[str] | None = None,
                  host: str | None = None, kernel: str | None = None) -> dict[str, Any]:
    where = str(paths[0]) if paths else "-"
    if trace_clock is not None and trace_clock not in CLOCKS:
        raise TraceFormatError(where, 0, f"unknown trace clock {trace_clock!r}; one of {', '.join(CLOCKS)}")
    parse_pid_options(pids or [])
    with tempfile.TemporaryDirectory(prefix="vmemtrace-ftrace-") as tmp:
        parsed, inputs = parse(paths, Path(tmp), skip_bad=skip_bad)
        clock = clock_of(parsed, trace_clock, clock_offset_ns, where)
        keys, pid_of, account = assign_pids(parsed.threads, parsed.namespaces, pids or [])
        info = {
            "inputs": [i.manifest() for i in inputs],
            "clock": clock,
            "traced": {"host": host or "unknown", "kernel": kernel or "unknown", "qemu_version": None,
                       "qemu_binaries": []},
            "unknown_events": parsed.unknown,
            "non_trace_lines": {"count": parsed.non_trace, "first": [ln for _, ln in parsed.non_trace_first],
                                "first_at": [f"{f}:{ln}" for f, ln in parsed.non_trace_first]},
            "pid_from": account,
            "ftrace": {"namespaces": {name or "(no prefix)": {"index": i, "id_offset": i * PID_MAX_LIMIT,
                                                              "file": name in parsed.file_prefixes}
                                      for name, i in parsed.namespaces.items()},
                       "rejoined_lines": parsed.rejoined, "context_events": parsed.context,
                       "not_imported": parsed.not_imported, "exits_without_entry": parsed.syscalls.exits_without_entry,
                       "lines": {"read": parsed.lines, "event": parsed.event_lines, **parsed.other_lines,
                                 "non_trace": parsed.non_trace, "rejoined": parsed.rejoined},
                       "trace_clock": trace_clock or parsed.stated_clock},
        }
        shift = clock["offset_ns"] or 0
        with RunWriter(run_dir, source="ftrace", kind="importer", info=info) as w:
            for family, staged in parsed.staged.items():
                for table in staged.tables(262_144):
                    w.write(family, _finish(table, keys, pid_of, shift))
            for lost in parsed.lost:
                ts = lost["ts"] if lost["ts"] is not None else parsed.last_ts
                w.count_lost("ftrace", lost["count"], lost["reason"], ts_ns=ts - shift)
            if parsed.bad:
                w.count_lost("ftrace", len(parsed.bad), "lines that could not be parsed (--skip-bad)")
                w.update_session(bad_lines=parsed.bad[:100])
    rows = {f: s.rows for f, s in parsed.staged.items()}
    return {"rows": rows, "unknown": parsed.unknown, "bad": len(parsed.bad), "non_trace": parsed.non_trace,
            "lost": sum(x["count"] for x in parsed.lost), "clock": clock, "pid_from": account,
            "rejoined": parsed.rejoined}


def _finish(table: pa.Table, keys: np.ndarray, pid_of: np.ndarray, shift: int) -> pa.Table:
    """Staged rows with their process ids and the clock offset applied."""
    tid = np.asarray(table["tid"], dtype=np.int64)
    pid = pid_of[np.searchsorted(keys, tid)]
    table = table.set_column(table.schema.get_field_index("pid"), "pid", pa.array(pid, pa.int32()))
    if shift:
        for col in ("ts_ns", "end_ns"):
            if col in table.column_names:
                i = table.schema.get_field_index(col)
                table = table.set_column(i, col, pc.subtract(table[col], pa.scalar(shift, pa.int64())))
    return table
