"""ftrace text (tracefs `trace` / `trace_pipe`, `trace-cmd report`) into a run.

Event line layouts read (kernel trace_output.c / trace.c, trace-cmd's trace-read.c):
    python-23688   (  23688) [001] .....  3521.003127: sys_madvise(start: 0x7eff81000000, len_in: 0x1000, behavior: 4)
           CPU 5/KVM-4145    [002] d..1.    86.581928: kvm_page_fault: vcpu 5 rip 0x7f08 address 0x1136 error_code 0x181
    host.dat:  qemu-system-x86-8397  [002]  1404.389366: kvm_exit: ...         (trace-cmd report of several files)
      <idle>-0       0d..1 12345.678901: ...                                  (trace-cmd report -l)
with or without the TGID column, with 0 or 1-7 flag characters, comms with spaces and dashes, and
leading blanks or none. Header lines (`#...`, `cpus=N`, `CPU N is empty`, `version = N`) are skipped;
`CPU:N [LOST M EVENTS]` (tracefs) and `CPU:N [M EVENTS DROPPED]` (trace-cmd) become lost_events rows.
Any other line is counted as a non-trace line (count and first line numbers in the manifest), except
the continuation of an event line that a mail client wrapped, which is joined back (counted too).

The file prefix of a multi-file trace-cmd report keeps each file's threads apart: the first file's
ids stay as they are, the k-th file's ids are moved up by k * PID_MAX_LIMIT (manifest: namespaces).
Without a TGID column, QEMU's threads (`CPU n/KVM`, `IO ...`, `qemu-system-*`, `vhost-N`) are grouped
into one process per file (the pid of vhost-N workers, else --pid, else the smallest QEMU thread id as
a stand-in); other threads' ids stand in for their process; the manifest's pid_from says which.

Times are the trace clock's. The clock is what the trace states (a pasted tracefs `trace_clock` line)
or what --trace-clock says; mono gives CLOCK_MONOTONIC, any clock plus --clock-offset is aligned,
anything else stays relative within the file (the session clock domain says so).

Parsing is vectorised over Arrow batches of lines; rows are staged in Parquet and copied into the
run only when the whole input has been read, so a rejected import leaves the run as it was.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.constants import (FALLOC_FL_PUNCH_HOLE, KVM_CLEAR_DIRTY_LOG, KVM_GET_DIRTY_LOG,
                                KVM_RESET_DIRTY_RINGS, KVM_RUN, MADV_DONTNEED, MADV_DONTNEED_LOCKED,
                                MADV_FREE, MADV_REMOVE, PF_VECTOR, PID_MAX_LIMIT)
from pipeline.importers import TraceFormatError
from pipeline.importers.ftrace_events import EVENTS, KVM_EXIT, SYSCALL_ARGS, SYSCALL_RET
from pipeline.importers.ftrace_lines import InputFile, hex_u64, line_batches, signed
from pipeline.runstore import RunWriter, conform
from pipeline.schema import FAMILY_BY_NAME

LINE = (r"^\s*(?:(?P<file>\S+): \s+)?(?P<comm>.*?)-(?P<tid>\d{1,10})\s+(?:\(\s*(?P<tgid>[\d-]{1,10})\)\s+)?"
        r"(?:\[(?P<cpu>\d{1,6})\]|(?P<lcpu>\d{1,6})(?P<lflags>[^\s\d]\S{2,6}))\s+"
        r"(?:(?P<flags>[^\s\d]\S{0,6})\s+)?(?P<sec>\d{1,11})(?:\.(?P<frac>\d{1,9}))?:\s+"
        r"(?P<event>[\w.-]+)(?P<sep>: ?|\(| -> |$)(?P<args>.*)$")
HEADER = r"^\s*(?:\S+: )?\s*(?:#.*|cpus=\d+|CPU \d+ is empty|version = \S+)\s*$"
FILE_HEADER = r"^\s*(?P<file>\S+): cpus=\d+\s*$"
LOST = (r"^\s*(?:(?P<file>\S+): \s*)?CPU:(?P<cpu>\d{1,6}) \[(?:LOST (?P<lost>\d{1,19}) EVENTS|"
        r"(?P<dropped>\d{1,19}) EVENTS DROPPED|(?P<unknown>EVENTS DROPPED))\]\s*$")
CLOCKS = ("local", "global", "counter", "uptime", "perf", "mono", "mono_raw", "boot", "tai", "x86-tsc")
# tracefs's trace_clock file lists the clocks with the selected one in brackets: "[local] global ... mono"
CLOCK_LINE = r"^\s*(?P<clocks>(?:\[?[\w-]+\]? )*\[[\w-]+\](?: \[?[\w-]+\]?)*)\s*$"
VCPU_COMM = r"^CPU (?P<n>\d{1,6})/KVM$"
QEMU_COMM = re.compile(r"^(?:CPU \d+/(?:KVM|TCG)|IO .+|qemu-system-.*|qemu-kvm|call_rcu|vnc_worker|"
                       r"live_migration|multifd.*|SPICE Worker)$")
VHOST_COMM = re.compile(r"^vhost-(\d+)$")

DISCARD_ADVICE = [MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_DONTNEED_LOCKED]
DIRTY_IOCTLS = {KVM_GET_DIRTY_LOG: "kvm_get_dirty_log", KVM_CLEAR_DIRTY_LOG: "kvm_clear_dirty_log",
                KVM_RESET_DIRTY_RINGS: "kvm_reset_dirty_rings"}
NS_LIMIT = (1 << 31) // PID_MAX_LIMIT  # namespaces whose moved ids still fit the int32 pid column
FIRST_KEPT = 20
SYS_COLS = ("key", "pos", "ts", "comm", "name", "exit", "a0", "a1", "a2", "a3", "ret")
SYS_SCHEMA = pa.schema([("key", pa.int64()), ("pos", pa.int64()), ("ts", pa.int64()), ("comm", pa.string()),
                        ("name", pa.string()), ("exit", pa.bool_()), ("a0", pa.uint64()), ("a1", pa.uint64()),
                        ("a2", pa.uint64()), ("a3", pa.uint64()), ("ret", pa.uint64())])
PF_SCHEMA = pa.schema([("key", pa.int64()), ("pos", pa.int64()), ("pf_exit", pa.bool_()),
                       ("fault", pa.bool_()), ("row", pa.int64())])


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.nulls(n, type_).fill_null(pa.scalar(value, type_))


def _mask(values: pa.Array) -> np.ndarray:
    return np.asarray(values.fill_null(False), dtype=bool)


@dataclass
class Staged:
    """Rows of one family, written to a Parquet file as batches arrive (pids are fixed at commit)."""

    path: Path
    schema: pa.Schema
    writer: pq.ParquetWriter | None = None
    rows: int = 0

    def add(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="lz4")
        self.writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Parse:
    """Everything an import learns beside the rows: counts, threads, clock, carried pairing state."""

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
    non_trace_first: list[tuple[str, int]] = field(default_factory=list)
    rejoined: int = 0
    bad: list[str] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    stated_clock: str | None = None
    event_lines: int = 0
    lines: int = 0
    raw_counter_times: bool = False
    orphan_exits: int = 0
    last_ts: int | None = None
    sys_carry: pa.Table = field(default_factory=lambda: SYS_SCHEMA.empty_table())
    pf_carry: pa.Table = field(default_factory=lambda: PF_SCHEMA.empty_table())

    # -- output ------------------------------------------------------------------------------

    def stage(self, family: str, columns: dict[str, Any], n: int) -> None:
        if n == 0:
            return
        fam = FAMILY_BY_NAME[family]
        arrays = {}
        for name, value in columns.items():
            type_ = fam.schema.field(name).type
            if isinstance(value, np.ndarray):
                value = pa.array(value)
            arrays[name] = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else _const(value, n, type_)
        table = conform(fam, pa.table(arrays))
        if family not in self.staged:
            loose = fam.schema.set(0, fam.schema.field("event_id").with_nullable(True))
            self.staged[family] = Staged(self.staging / f"{family}.parquet", loose)
        self.staged[family].add(table)

    def reject(self, where: tuple[str, int], message: str) -> None:
        if not self.skip_bad:
            raise TraceFormatError(where[0], where[1], message)
        self.bad.append(f"{where[0]}:{where[1]}: {message}")

    def namespace(self, prefix: str) -> int:
        if prefix not in self.namespaces:
            if len(self.namespaces) >= NS_LIMIT:
                raise ValueError(f"more than {NS_LIMIT} trace-cmd file prefixes")
            self.namespaces[prefix] = len(self.namespaces)
        return self.namespaces[prefix]


# -- one batch of lines --------------------------------------------------------------------------

def _batch(p: Parse, path: Path, lines: pa.Array, first_line: int) -> None:
    n = len(lines)
    lineno = np.arange(first_line, first_line + n, dtype=np.int64)
    pos = np.arange(p.lines, p.lines + n, dtype=np.int64)  # order across files, for pairing
    p.lines += n
    m = pc.extract_regex(lines, LINE)
    is_event = _mask(m.is_valid())
    other = np.flatnonzero(~is_event)
    consumed = np.zeros(n, dtype=bool)  # continuation lines joined back into the event line before them
    ev_idx = np.flatnonzero(is_event)
    ts = np.empty(0, np.int64)
    if len(ev_idx):
        ts = _event_rows(p, path, m.filter(pa.array(is_event)), ev_idx, lines, lineno, pos, is_event, consumed)
    if len(other):
        _other_lines(p, path, lines.take(pa.array(other)), lineno[other], consumed[other], lineno[ev_idx], ts)


def _other_lines(p: Parse, path: Path, text: pa.Array, lineno: np.ndarray, consumed: np.ndarray,
                 ev_lineno: np.ndarray, ev_ts: np.ndarray) -> None:
    blank = _mask(pc.equal(pc.utf8_trim_whitespace(text), ""))
    header = _mask(pc.match_substring_regex(text, HEADER))
    for f in pc.extract_regex(text.filter(pa.array(header)), FILE_HEADER).drop_null().field("file").to_pylist():
        p.file_prefixes.add(f)
    lost = pc.extract_regex(text, LOST)
    is_lost = _mask(lost.is_valid())
    if is_lost.any():
        for row, ln in zip(lost.filter(pa.array(is_lost)).to_pylist(), lineno[is_lost]):
            # the loss ends where the CPU's next event starts: the next event line printed
            after = np.searchsorted(ev_lineno, ln)
            count = int(row["lost"] or row["dropped"] or 1)
            reason = (f"ring buffer overrun on CPU {row['cpu']} before {path}:{ln}" if not row["unknown"] else
                      f"events dropped on CPU {row['cpu']} before {path}:{ln} (at least 1; trace-cmd "
                      "did not say how many)")
            p.lost.append({"count": count, "reason": reason, "cpu": int(row["cpu"]),
                           "ts": int(ev_ts[after]) if after < len(ev_ts) else None})
    clock = pc.extract_regex(text, CLOCK_LINE)
    is_clock = _mask(clock.is_valid())
    for listed in clock.filter(pa.array(is_clock)).field("clocks").to_pylist() if is_clock.any() else []:
        names = [w.strip("[]") for w in listed.split()]
        chosen = [w.strip("[]") for w in listed.split() if w.startswith("[")]
        if set(names) <= set(CLOCKS) and len(chosen) == 1:
            p.stated_clock = chosen[0]
        else:
            is_clock[np.flatnonzero(is_clock)[0]] = False  # a bracketed word that is not the clock list
    rest = ~(blank | header | is_lost | is_clock | consumed)
    count = int(rest.sum())
    if count:
        p.non_trace += count
        room = FIRST_KEPT - len(p.non_trace_first)
        if room > 0:
            p.non_trace_first.extend((str(path), int(ln)) for ln in lineno[rest][:room])


def _event_rows(p: Parse, path: Path, ev: pa.StructArray, ev_idx: np.ndarray, lines: pa.Array,
                lineno: np.ndarray, pos: np.ndarray, is_event: np.ndarray, consumed: np.ndarray) -> np.ndarray:
    k = len(ev_idx)
    p.event_lines += k
    f = {name: ev.field(name) for name in ("file", "comm", "tid", "tgid", "cpu", "lcpu", "sec", "frac",
                                           "event", "sep", "args")}
    sec = pc.cast(f["sec"], pa.int64())
    frac = f["frac"]
    no_frac = _mask(pc.equal(frac, ""))
    if no_frac.any():
        p.raw_counter_times = True  # counter / x86-tsc clocks print raw counts without a decimal point
    nsec = pc.cast(pc.utf8_slice_codeunits(pc.utf8_rpad(pc.if_else(pa.array(no_frac), "0", frac), 9, "0"), 0, 9),
                   pa.int64())
    ts = np.where(no_frac, np.asarray(sec), np.asarray(sec) * 1_000_000_000 + np.asarray(nsec))
    p.last_ts = int(ts[-1])

    tid = np.asarray(pc.cast(f["tid"], pa.int64()))
    prefixes = f["file"]
    ns = np.zeros(k, np.int64)
    enc = pc.dictionary_encode(prefixes)
    codes = np.asarray(enc.indices)
    for i, prefix in enumerate(enc.dictionary.to_pylist()):
        ns[codes == i] = p.namespace(prefix)
    bad_tid = tid >= PID_MAX_LIMIT
    tgid_raw = f["tgid"]
    tgid_known = _mask(pc.match_substring_regex(tgid_raw, r"^\d+$"))
    tgid = np.zeros(k, np.int64)
    if tgid_known.any():
        tgid[tgid_known] = np.asarray(pc.cast(tgid_raw.filter(pa.array(tgid_known)), pa.int64()))
    bad_tid |= tgid >= PID_MAX_LIMIT
    if bad_tid.any():
        for i in np.flatnonzero(bad_tid):
            p.reject((str(path), int(lineno[ev_idx[i]])), f"thread id beyond the kernel's PID_MAX_LIMIT "
                                                          f"({PID_MAX_LIMIT}): not a thread id")
    key = tid + ns * PID_MAX_LIMIT
    _threads(p, key, f["comm"], tgid + ns * PID_MAX_LIMIT, tgid_known & ~bad_tid)

    env = {"key": key, "ts": ts, "comm": f["comm"], "lineno": lineno[ev_idx], "pos": pos[ev_idx]}
    event = f["event"]
    sep = f["sep"]
    args = f["args"]
    names = pc.dictionary_encode(event)
    ncodes = np.asarray(names.indices)
    sys_parts: list[pa.Table] = []
    exits: list[pa.Table] = []
    faults: list[pa.Table] = []
    for code, name in enumerate(names.dictionary.to_pylist()):
        sel = (ncodes == code) & ~bad_tid
        if not sel.any():
            continue
        if name in EVENTS:
            rows = _known_event(p, path, name, sel, args, env, ev_idx, lines, is_event, consumed)
            if rows is not None:
                faults.append(rows)
        elif name == "kvm_exit":
            exits.append(_kvm_exits(p, path, sel, args, env))
        elif name.startswith("sys_") and name[4:] in SYSCALL_ARGS:
            sys_parts.append(_syscalls(p, path, name[4:], sel, sep, args, env))
        else:
            p.unknown[name] = p.unknown.get(name, 0) + int(sel.sum())
    if sys_parts:
        _pair_syscalls(p, sys_parts)
    if exits or faults:
        _pair_page_faults(p, exits, faults)
    return ts


def _threads(p: Parse, key: np.ndarray, comm: pa.Array, tgid: np.ndarray, tgid_known: np.ndarray) -> None:
    t = pa.table({"key": key, "comm": comm, "tgid": pa.array(tgid, mask=~tgid_known)})
    for row in t.group_by(["key", "comm"]).aggregate([("tgid", "max")]).to_pylist():
        th = p.threads.setdefault(row["key"], {"comms": set(), "tgid": None})
        if len(th["comms"]) < 8:
            th["comms"].add(row["comm"])
        if row["tgid_max"] is not None:
            th["tgid"] = row["tgid_max"]


def _envelope(env: dict[str, Any], sel: np.ndarray) -> dict[str, Any]:
    s = pa.array(sel)
    return {"ts_ns": env["ts"][sel], "tid": pa.array(env["key"][sel], pa.int32()), "pid": pa.array(env["key"][sel],
            pa.int32()), "comm": env["comm"].filter(s), "source": "ftrace"}


def _vcpu_from_comm(comm: pa.Array) -> pa.Array:
    """QEMU names a vCPU thread 'CPU n/KVM' with n its cpu_index."""
    if isinstance(comm, pa.ChunkedArray):
        comm = comm.combine_chunks()
    got = pc.extract_regex(comm, VCPU_COMM)
    return pc.cast(pc.if_else(got.is_valid(), got.field("n"), pa.scalar(None, pa.string())), pa.int32())


def _parse_args(p: Parse, path: Path, what: str, pattern: str, sel: np.ndarray, args: pa.Array,
                env: dict[str, Any], ev_idx: np.ndarray, lines: pa.Array | None, is_event: np.ndarray | None,
                consumed: np.ndarray | None) -> tuple[pa.StructArray, np.ndarray]:
    """Match one event's arguments; a line that does not match is joined with a wrapped continuation
    line when the next line is one, else rejected. Returns the matches and the selection they cover."""
    sub = args.filter(pa.array(sel))
    got = pc.extract_regex(sub, pattern)
    ok = _mask(got.is_valid())
    if ok.all():
        return got, sel
    where = np.flatnonzero(sel)
    fixed = sub.to_pylist()
    for j in np.flatnonzero(~ok):
        line_i = ev_idx[where[j]]
        nxt = line_i + 1
        if lines is not None and nxt < len(lines) and not is_event[nxt] and not consumed[nxt]:
            cont = lines[nxt].as_py().strip()
            if cont and not cont.startswith("#"):
                joined = fixed[j].rstrip() + " " + cont
                if pc.match_substring_regex(pa.array([joined]), pattern)[0].as_py():
                    fixed[j] = joined
                    consumed[nxt] = True
                    p.rejoined += 1
                    continue
        p.reject((str(path), int(env["lineno"][where[j]])), f"{what}: arguments {fixed[j]!r} do not match "
                                                          f"its format")
    got = pc.extract_regex(pa.array(fixed, pa.string()), pattern)
    ok = _mask(got.is_valid())
    keep = sel.copy()
    keep[where[~ok]] = False
    return got.filter(pa.array(ok)), keep


def _known_event(p: Parse, path: Path, name: str, sel: np.ndarray, args: pa.Array, env: dict[str, Any],
                 ev_idx: np.ndarray, lines: pa.Array, is_event: np.ndarray, consumed: np.ndarray) -> pa.Table | None:
    """Stage one known event's rows; kvm_page_fault rows are returned instead, for pairing."""
    spec = EVENTS[name]
    got, sel = _parse_args(p, path, name, spec.pattern, sel, args, env, ev_idx, lines, is_event, consumed)
    if not sel.any():
        return None
    groups = {fld.name: got.field(fld.name) for fld in got.type}
    try:
        built = spec.build(groups)
    except ValueError as e:
        for ln in env["lineno"][sel]:
            p.reject((str(path), int(ln)), f"{name}: {e}")
        return None
    cols = {**_envelope(env, sel), **built}
    n = int(sel.sum())
    if spec.family == "guest_accesses":
        vcpu = _vcpu_from_comm(cols["comm"])
        given = cols.get("vcpu")
        cols["vcpu"] = vcpu if given is None else pc.coalesce(pc.cast(given, pa.int32()), vcpu)
    if name != "kvm_page_fault":
        p.stage(spec.family, cols, n)
        return None
    fam = FAMILY_BY_NAME["guest_accesses"]
    table = conform(fam, pa.table({k: pa.array(v) if isinstance(v, np.ndarray) else v
                                   if isinstance(v, (pa.Array, pa.ChunkedArray))
                                   else _const(v, n, fam.schema.field(k).type) for k, v in cols.items()}))
    return table.append_column("_key", pa.array(env["key"][sel])).append_column("_pos", pa.array(env["pos"][sel]))


def _kvm_exits(p: Parse, path: Path, sel: np.ndarray, args: pa.Array, env: dict[str, Any]) -> pa.Table:
    """kvm_exit lines as pairing records: was this exit a #PF intercept?"""
    got, sel = _parse_args(p, path, "kvm_exit", KVM_EXIT, sel, args, env, np.empty(0, np.int64), None, None, None)
    p.context["kvm_exit"] = p.context.get("kvm_exit", 0) + int(sel.sum())
    reason = got.field("reason")
    intr = pc.coalesce(hex_u64(got.field("intr")), hex_u64(got.field("oi2")))  # VMX: vector in bits 0-7
    vmx_pf = pc.and_(pc.starts_with(reason, "EXCEPTION_NMI"),
                     pc.equal(pc.bit_wise_and(intr, pa.scalar(0xFF, pa.uint64())), PF_VECTOR))
    pf = pc.or_(vmx_pf.fill_null(False), pc.equal(reason, "PF excp"))
    n = int(sel.sum())
    return pa.table({"key": env["key"][sel], "pos": env["pos"][sel], "pf_exit": pf,
                     "fault": _const(False, n, pa.bool_()), "row": np.full(n, -1, np.int64)})


def _pair_page_faults(p: Parse, exits: list[pa.Table], faults: list[pa.Table]) -> None:
    """A kvm_page_fault right after a #PF-intercept kvm_exit on the same thread names a guest-virtual
    address (the guest's own page fault); otherwise (EPT/NPT violation) a guest-physical one."""
    fault_rows = pa.concat_tables(faults) if faults else None
    parts = [p.pf_carry, *exits]
    if fault_rows is not None:
        n = fault_rows.num_rows
        parts.append(pa.table({"key": fault_rows["_key"], "pos": fault_rows["_pos"],
                               "pf_exit": _const(False, n, pa.bool_()), "fault": _const(True, n, pa.bool_()),
                               "row": np.arange(n, dtype=np.int64)}, schema=PF_SCHEMA))
    stream = pa.concat_tables([t.cast(PF_SCHEMA) for t in parts])
    stream = stream.take(pc.sort_indices(stream, [("key", "ascending"), ("pos", "ascending")]))
    key = np.asarray(stream["key"])
    pf_exit = _mask(stream["pf_exit"])
    fault = _mask(stream["fault"])
    prev_same = np.zeros(len(key), dtype=bool)
    prev_same[1:] = key[1:] == key[:-1]
    after_pf = np.zeros(len(key), dtype=bool)
    after_pf[1:] = prev_same[1:] & pf_exit[:-1]
    last = np.ones(len(key), dtype=bool)
    last[:-1] = key[1:] != key[:-1]
    p.pf_carry = stream.filter(pa.array(last)).cast(PF_SCHEMA)
    if fault_rows is None:
        return
    rows = np.asarray(stream["row"])
    gva_rows = np.zeros(fault_rows.num_rows, dtype=bool)
    gva_rows[rows[fault & after_pf]] = True
    gva_mask = pa.array(gva_rows)
    table = fault_rows.drop_columns(["_key", "_pos"])
    gpa = table["gpa"]
    table = table.set_column(table.schema.get_field_index("gva"), "gva",
                             pc.if_else(gva_mask, gpa, pa.scalar(None, pa.uint64())))
    table = table.set_column(table.schema.get_field_index("gpa"), "gpa",
                             pc.if_else(gva_mask, pa.scalar(None, pa.uint64()), gpa))
    p.stage("guest_accesses", {c: table[c] for c in table.column_names}, table.num_rows)


def _syscalls(p: Parse, path: Path, name: str, sel: np.ndarray, sep: pa.Array, args: pa.Array,
              env: dict[str, Any]) -> pa.Table:
    """Entries and exits of one syscall as pairing records, arguments in a0..a3 in format order."""
    is_exit = _mask(pc.equal(sep, " -> "))
    is_enter = _mask(pc.equal(sep, "("))
    parts = []
    enter = sel & is_enter
    if enter.any():
        inner = pc.utf8_replace_slice(args, -1, 2 ** 31 - 1, "")  # drop the closing parenthesis
        inner = pc.if_else(pc.ends_with(args, ")"), inner, args)
        got, enter = _parse_args(p, path, f"sys_{name}", SYSCALL_ARGS[name], enter, inner, env,
                                 np.empty(0, np.int64), None, None, None)
        fields = [fld.name for fld in got.type]
        n = int(enter.sum())
        cols = {f"a{i}": hex_u64(got.field(fname)) for i, fname in enumerate(fields)}
        parts.append(_sys_table(env, enter, name, False, cols, n))
    leave = sel & is_exit
    if leave.any():
        got, leave = _parse_args(p, path, f"sys_{name}", SYSCALL_RET, leave, args, env,
                                 np.empty(0, np.int64), None, None, None)
        parts.append(_sys_table(env, leave, name, True, {"ret": hex_u64(got.field("ret"))}, int(leave.sum())))
    other = sel & ~is_exit & ~is_enter
    for ln in env["lineno"][other]:
        p.reject((str(path), int(ln)), f"sys_{name}: neither 'sys_{name}(ARGS)' nor 'sys_{name} -> RET'")
    return pa.concat_tables(parts) if parts else SYS_SCHEMA.empty_table()


def _sys_table(env: dict[str, Any], sel: np.ndarray, name: str, exit_: bool, cols: dict[str, pa.Array],
               n: int) -> pa.Table:
    data = {"key": env["key"][sel], "pos": env["pos"][sel], "ts": env["ts"][sel],
            "comm": env["comm"].filter(pa.array(sel)), "name": _const(name, n, pa.string()),
            "exit": _const(exit_, n, pa.bool_())}
    for c in ("a0", "a1", "a2", "a3", "ret"):
        data[c] = cols.get(c, pa.nulls(n, pa.uint64()))
    return pa.table(data, schema=SYS_SCHEMA)


def _pair_syscalls(p: Parse, parts: list[pa.Table], *, final: bool = False) -> None:
    """Pair each entry with the exit that follows it on the same thread; entries still open at the end
    of the batch wait for the next one (at the end of the input they are kept without a return value)."""
    stream = pa.concat_tables([p.sys_carry, *parts])
    if stream.num_rows == 0:
        return
    stream = stream.take(pc.sort_indices(stream, [("key", "ascending"), ("pos", "ascending")]))
    key = np.asarray(stream["key"])
    is_exit = _mask(stream["exit"])
    names = stream["name"]
    same_next = np.zeros(len(key), dtype=bool)
    same_next[:-1] = key[1:] == key[:-1]
    name_next = np.zeros(len(key), dtype=bool)
    name_next[:-1] = _mask(pc.equal(names.slice(1), names.slice(0, len(key) - 1)))
    exit_next = np.zeros(len(key), dtype=bool)
    exit_next[:-1] = is_exit[1:]
    paired = ~is_exit & same_next & name_next & exit_next
    waiting = ~is_exit & ~same_next & (not final)
    p.sys_carry = stream.filter(pa.array(waiting))
    done = ~is_exit & ~waiting
    matched_exit = np.zeros(len(key), dtype=bool)
    matched_exit[1:] = paired[:-1]
    p.orphan_exits += int((is_exit & ~matched_exit).sum())
    nxt = np.minimum(np.arange(len(key)) + 1, len(key) - 1)
    ret = pc.if_else(pa.array(paired), stream["ret"].take(pa.array(nxt)), pa.scalar(None, pa.uint64()))
    end = pc.if_else(pa.array(paired), stream["ts"].take(pa.array(nxt)), pa.scalar(None, pa.int64()))
    rows = stream.append_column("ret_", signed(ret)).append_column("end", end).filter(pa.array(done))
    _syscall_rows(p, rows)


def _syscall_rows(p: Parse, rows: pa.Table) -> None:
    def envelope(t: pa.Table) -> dict[str, Any]:
        return {"ts_ns": t["ts"], "tid": pc.cast(t["key"], pa.int32()), "pid": pc.cast(t["key"], pa.int32()),
                "comm": t["comm"], "source": "ftrace", "ret": t["ret_"], "end_ns": t["end"]}

    def take(name: str, cond: Any) -> pa.Table:
        mine = rows.filter(pc.equal(rows["name"], name))
        wanted = mine.filter(cond(mine)) if mine.num_rows else mine
        skipped = mine.num_rows - wanted.num_rows
        if skipped:
            p.not_imported[f"sys_{name}"] = p.not_imported.get(f"sys_{name}", 0) + skipped
        return wanted

    m = take("madvise", lambda t: pc.is_in(t["a2"], pa.array(DISCARD_ADVICE, pa.uint64())))
    p.stage("discards", {**envelope(m), "syscall": "madvise", "hva_start": m["a0"], "size": m["a1"],
                         "advice": m["a2"]}, m.num_rows)
    f = take("fallocate", lambda t: pc.not_equal(pc.bit_wise_and(t["a1"], pa.scalar(FALLOC_FL_PUNCH_HOLE,
                                                                                        pa.uint64())), 0))
    p.stage("discards", {**envelope(f), "syscall": "fallocate", "fd": f["a0"], "mode": f["a1"],
                         "offset": f["a2"], "size": f["a3"]}, f.num_rows)
    wanted = pa.array([KVM_RUN, *DIRTY_IOCTLS], pa.uint64())
    io = take("ioctl", lambda t: pc.is_in(t["a1"], wanted))
    run = io.filter(pc.equal(io["a1"], KVM_RUN))
    p.stage("vcpu_runs", {**envelope(run), "op": "run", "vcpu_fd": run["a0"],
                          "vcpu": _vcpu_from_comm(run["comm"])}, run.num_rows)
    for cmd, op in DIRTY_IOCTLS.items():
        d = io.filter(pc.equal(io["a1"], cmd))
        p.stage("dirty_log", {**envelope(d), "op": op, "fd": d["a0"]}, d.num_rows)


# -- whole input -----------------------------------------------------------------------------------

def parse(paths: list[Path], staging: Path, *, skip_bad: bool = False) -> tuple[Parse, list[InputFile]]:
    """Read every file, staging rows under `staging`; raise TraceFormatError on the first bad line
    (unless skip_bad) and when no file holds a single event line."""
    p = Parse(staging=staging, skip_bad=skip_bad)
    inputs = []
    for path in paths:
        info = InputFile(Path(path))
        inputs.append(info)
        held: tuple[pa.Array, int] | None = None  # the last line waits: the next block may continue it
        for lines, first in line_batches(Path(path), info):
            if held is not None:
                lines = pa.concat_arrays([held[0], lines])
                first = held[1]
            held = (lines.slice(len(lines) - 1), first + len(lines) - 1)
            _run_batch(p, Path(path), lines.slice(0, len(lines) - 1), first)
        if held is not None:
            _run_batch(p, Path(path), held[0], held[1])
    _pair_syscalls(p, [], final=True)
    for s in p.staged.values():
        s.close()
    if p.event_lines == 0:
        raise TraceFormatError(str(paths[0]) if paths else "-", 0,
                               "no ftrace event line ('COMM-TID [CPU] ... SECONDS.FRACTION: event: ...') "
                               "in the input")
    return p, inputs


def _run_batch(p: Parse, path: Path, lines: pa.Array, first: int) -> None:
    if len(lines):
        try:
            _batch(p, path, lines, first)
        except ValueError as e:
            if isinstance(e, TraceFormatError):
                raise
            raise TraceFormatError(str(path), first, str(e)) from None


# -- processes -------------------------------------------------------------------------------------

def _parse_pid_options(options: list[str]) -> tuple[int | None, dict[str, int]]:
    """--pid PID (QEMU's process) and --pid THREAD=PID / --pid COMM=PID (one thread or name)."""
    group, mapping = None, {}
    for opt in options:
        key, eq, value = opt.rpartition("=")
        try:
            pid = int(value)
        except ValueError:
            raise TraceFormatError("--pid", 0, f"{opt!r}: expected PID, TID=PID or COMM=PID") from None
        if not 0 < pid < PID_MAX_LIMIT:
            raise TraceFormatError("--pid", 0, f"{opt!r}: {pid} is not a process id")
        if eq:
            mapping[key] = pid
        else:
            group = pid
    return group, mapping


def assign_pids(p: Parse, options: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Thread key -> process id for every thread seen, and the manifest's account of where each came from."""
    group_pid, mapping = _parse_pid_options(options)
    ns_names = {i: name for name, i in p.namespaces.items()}
    keys = np.array(sorted(p.threads), dtype=np.int64)
    pids = keys.copy()
    how: dict[str, int] = {"tgid column": 0, "--pid": 0, "qemu thread names": 0, "thread id": 0}
    groups = []
    by_ns: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        th = p.threads[int(k)]
        ns, tid = divmod(int(k), PID_MAX_LIMIT)
        base = ns * PID_MAX_LIMIT
        named = [mapping[c] for c in th["comms"] if c in mapping] or ([mapping[str(tid)]] if str(tid) in mapping
                                                                       else [])
        vhost = [int(m[1]) for c in th["comms"] if (m := VHOST_COMM.match(c))]
        if th["tgid"] is not None:
            pids[i] = th["tgid"]
            how["tgid column"] += 1
        elif named:
            pids[i] = base + named[0]
            how["--pid"] += 1
        elif vhost and vhost[0] < PID_MAX_LIMIT:
            pids[i] = base + vhost[0]  # a vhost worker is named after the process that owns it
            how["qemu thread names"] += 1
        elif any(QEMU_COMM.match(c) for c in th["comms"]):
            by_ns.setdefault(ns, []).append(i)
        else:
            how["thread id"] += 1
    for ns, members in by_ns.items():
        base = ns * PID_MAX_LIMIT
        owners = {int(m[1]) for k, th in p.threads.items() if k // PID_MAX_LIMIT == ns and th["tgid"] is None
                  for c in th["comms"] if (m := VHOST_COMM.match(c))}
        if group_pid is not None:
            pid, source = group_pid, "--pid"
        elif len(owners) == 1:
            pid, source = owners.pop(), "the vhost worker named after QEMU's process"
        else:
            pid = int(keys[members].min()) - base
            source = "stand-in: the smallest QEMU thread id (QEMU's main thread when it is in the trace)"
        pids[members] = base + pid
        how["qemu thread names"] += len(members)
        groups.append({"namespace": ns_names.get(ns, ""), "pid": pid, "from": source,
                       "threads": len(members)})
    account = {"threads": how, "qemu_processes": groups,
               "summary": ("tgid column" if how["tgid column"] == len(keys) else
                           "thread ids stand in for processes for some threads" if how["thread id"] else
                           "grouped by QEMU thread names / --pid")}
    return keys, pids, account


# -- into the run ------------------------------------------------------------------------------------

def clock_of(p: Parse, trace_clock: str | None, clock_offset_ns: int | None, where: str) -> dict[str, Any]:
    for name in (trace_clock, p.stated_clock):
        if name is not None and name not in CLOCKS:
            raise TraceFormatError(where, 0, f"unknown trace clock {name!r}; one of {', '.join(CLOCKS)}")
    if trace_clock and p.stated_clock and trace_clock != p.stated_clock:
        raise TraceFormatError(where, 0, f"--trace-clock {trace_clock} but the trace says it was recorded "
                                         f"with {p.stated_clock}")
    clock = trace_clock or p.stated_clock
    source = (f"ftrace trace_clock {clock} ({'stated in the trace' if p.stated_clock else '--trace-clock'})"
              if clock else "ftrace: trace_clock not stated (times are relative within the file)")
    if p.raw_counter_times and clock not in ("counter", "x86-tsc"):
        source += "; some times are raw counter values"
    if clock_offset_ns is not None:
        domain, alignment, offset = "monotonic", "given", clock_offset_ns
    elif clock == "mono":
        domain, alignment, offset = "monotonic", "none", 0
    else:
        domain, alignment, offset = "relative", "none", None
    return {"domain": domain, "source": source, "alignment": alignment, "offset_ns": offset,
            "residual_ns": None, "matched_events": 0, "trace_clock": clock}


def import_ftrace(paths: list[Path], run_dir: Path, *, trace_clock: str | None = None,
                  clock_offset_ns: int | None = None, skip_bad: bool = False, pids: list[str] | None = None,
                  host: str | None = None, kernel: str | None = None) -> dict[str, Any]:
    where = str(paths[0]) if paths else "-"
    if trace_clock is not None and trace_clock not in CLOCKS:
        raise TraceFormatError(where, 0, f"unknown trace clock {trace_clock!r}; one of {', '.join(CLOCKS)}")
    _parse_pid_options(pids or [])
    with tempfile.TemporaryDirectory(prefix="vmemtrace-ftrace-") as tmp:
        parsed, inputs = parse(paths, Path(tmp), skip_bad=skip_bad)
        clock = clock_of(parsed, trace_clock, clock_offset_ns, where)
        keys, pid_of, account = assign_pids(parsed, pids or [])
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
                       "not_imported": parsed.not_imported, "exits_without_entry": parsed.orphan_exits,
                       "event_lines": parsed.event_lines, "lines": parsed.lines},
        }
        shift = clock["offset_ns"] or 0
        with RunWriter(run_dir, source="ftrace", kind="importer", info=info) as w:
            for family, staged in parsed.staged.items():
                for batch in pq.ParquetFile(staged.path).iter_batches(batch_size=262_144):
                    w.write(family, _finish(pa.Table.from_batches([batch]), keys, pid_of, shift))
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
