"""ftrace text (tracefs `trace` / `trace_pipe`, `trace-cmd report`) into a run.

Line format (the TGID column only with options/record-tgid; flags only in some outputs):
    python-23688   (  23688) [001] .....  3521.003127: sys_madvise(start: 0x7eff81000000, len_in: 0x1000, behavior: 4)
    python-23688   (  23688) [001] .....  3521.003136: sys_madvise -> 0x0
    python-23689   [001]  3521.109890: kvm_unmap_hva_range: mmu notifier unmap range: 0x007fa210dff000 -- 0x007fa214e00000
Syscall arguments are hex, with or without 0x (small values print without it on newer kernels);
return values are the register as unsigned hex. The thread in the prefix is the thread id;
without the TGID column the process id is unknown and taken to be the thread id (the manifest
says so). Times are the trace clock's: `--trace-clock mono` (record with `trace_clock` = mono)
gives CLOCK_MONOTONIC directly; other clocks need `--clock-offset` or stay unaligned.

Events imported: syscalls madvise, fallocate (enter and exit, paired per thread), ioctl (KVM
dirty-log harvests only: the struct behind `arg` is not in the trace); kvm_unmap_hva_range,
kvm_age_hva, kvm_test_age_hva; kvm_page_fault, kvm_mmio, kvm_userspace_exit,
kvm_dirty_ring_push; kvmmmu kvm_mmu_spte_requested, kvm_tdp_mmu_spte_changed; iommu map, unmap.
Other events are counted, not errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.importers import TraceFormatError, read_lines
from pipeline.importers.columns import FamilyColumns
from pipeline.runstore import RunWriter
from pipeline.constants import FALLOC_FL_PUNCH_HOLE, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE, MADV_REMOVE

LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
                  r"(?:(?P<flags>[^\s\d]\S*)\s+)?(?P<sec>\d+)\.(?P<frac>\d+):\s+(?P<body>.*)$")
SYS_ENTER = re.compile(r"^sys_(?P<name>\w+)\((?P<args>.*)\)$")
SYS_EXIT = re.compile(r"^sys_(?P<name>\w+) -> (?:0x)?(?P<ret>[0-9a-fA-F]+)$")
EVENT = re.compile(r"^(?P<event>\w+):\s*(?P<args>.*)$")

DISCARD_ADVICE = {MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_DONTNEED_LOCKED}
DIRTY_IOCTLS = {0x4010AE42: "kvm_get_dirty_log", 0xC018AEC0: "kvm_clear_dirty_log", 0xAEC7: "kvm_reset_dirty_rings"}
CLOCKS = ("mono", "mono_raw", "boot", "local", "global", "counter", "uptime", "perf", "tai", "x86-tsc")

H = r"(?:0x)?([0-9a-fA-F]+)"
Row = tuple[str, dict[str, Any]]
EVENTS: dict[str, tuple[re.Pattern, Callable[[re.Match], Row]]] = {
    "kvm_unmap_hva_range": (re.compile(r"^mmu notifier unmap range: " + H + " -- " + H + "$"),
                            lambda m: ("mmu_notifier", {"event": "unmap_hva_range", "hva_start": int(m[1], 16),
                                                        "hva_end": int(m[2], 16)})),
    "kvm_age_hva": (re.compile(r"^mmu notifier age hva: " + H + " -- " + H + "$"),
                    lambda m: ("mmu_notifier", {"event": "age_hva", "hva_start": int(m[1], 16),
                                                "hva_end": int(m[2], 16)})),
    "kvm_test_age_hva": (re.compile(r"^mmu notifier test age hva: " + H + "$"),
                         lambda m: ("mmu_notifier", {"event": "test_age_hva", "hva_start": int(m[1], 16)})),
    "kvm_page_fault": (re.compile(r"^(?:vcpu (\d+) rip \S+ )?address " + H + " error_code " + H + "$"),
                       lambda m: ("guest_accesses", {"via": "page_fault", "vcpu": int(m[1]) if m[1] else None,
                                                     "gpa": int(m[2], 16), "error_code": int(m[3], 16),
                                                     "write": bool(int(m[3], 16) & 2)})),
    "kvm_mmio": (re.compile(r"^mmio (\S+) len (\d+) gpa " + H + " val .*$"),
                 lambda m: ("guest_accesses", {"via": "mmio", "gpa": int(m[3], 16), "write": m[1] == "write"})),
    "kvm_userspace_exit": (re.compile(r"^reason \S+ \((\d+)\)$"),
                           lambda m: ("guest_accesses", {"via": "userspace_exit", "error_code": int(m[1])})),
    "kvm_dirty_ring_push": (re.compile(r"^ring (\d+): dirty \S+ reset \S+ slot (\d+) offset " + H + r"(?: .*)?$"),
                            lambda m: ("guest_accesses", {"via": "dirty_ring_push", "slot": int(m[2]) & 0xFFFF,
                                                          "as_id": int(m[2]) >> 16, "page_offset": int(m[3], 16),
                                                          "write": True})),
    "kvm_mmu_spte_requested": (re.compile(r"^gfn " + H + " pfn " + H + r" level (\d+)$"),
                               lambda m: ("guest_accesses", {"via": "spte_requested", "gpa": int(m[1], 16) << 12,
                                                             "pfn": int(m[2], 16), "level": int(m[3])})),
    "kvm_tdp_mmu_spte_changed": (
        re.compile(r"^as id (\d+) gfn " + H + r" level (\d+) old_spte " + H + " new_spte " + H + "$"),
        lambda m: ("guest_accesses", {"via": "spte_changed", "as_id": int(m[1]), "gpa": int(m[2], 16) << 12,
                                      "level": int(m[3]),
                                      # KVM's shadow-present bit (11) says whether new_spte maps a page.
                                      "pfn": (int(m[5], 16) & 0x000FFFFFFFFFF000) >> 12
                                      if int(m[5], 16) & (1 << 11) else None})),
    "map": (re.compile(r"^IOMMU: iova=" + H + r"(?: - \S+)? paddr=" + H + r" size=(\d+)$"),
            lambda m: ("dma", {"api": "iommu", "op": "map", "iova": int(m[1], 16), "paddr": int(m[2], 16),
                               "size": int(m[3])})),
    "unmap": (re.compile(r"^IOMMU: iova=" + H + r"(?: - \S+)? size=(\d+) unmapped_size=(\d+)$"),
              lambda m: ("dma", {"api": "iommu", "op": "unmap", "iova": int(m[1], 16), "size": int(m[2]),
                                 "unmapped": int(m[3])})),
}


def _args(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(", "):
        key, _, value = part.partition(": ")
        out[key.strip()] = int(value.strip(), 16)
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class ParsedTrace:
    columns: FamilyColumns = field(default_factory=FamilyColumns)
    unknown: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    tgid_seen: bool = False
    pending: dict[int, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)  # tid -> syscall row


def _syscall_enter(name: str, args: dict[str, int]) -> Row | None:
    if name == "madvise":
        if args["behavior"] not in DISCARD_ADVICE:
            return None
        return "discards", {"syscall": "madvise", "hva_start": args["start"], "size": args["len_in"],
                            "advice": args["behavior"]}
    if name == "fallocate":
        if not args["mode"] & FALLOC_FL_PUNCH_HOLE:
            return None
        return "discards", {"syscall": "fallocate", "fd": args["fd"], "mode": args["mode"],
                            "offset": args["offset"], "size": args["len"]}
    if name == "ioctl" and args["cmd"] in DIRTY_IOCTLS:
        return "dirty_log", {"op": DIRTY_IOCTLS[args["cmd"]], "fd": args["fd"]}
    return None


def _parse_line(line: str, out: ParsedTrace) -> None:
    m = LINE.match(line)
    if not m:
        raise ValueError("not an ftrace event line ('COMM-TID [CPU] ... SECONDS.FRACTION: event ...')")
    tid = int(m["tid"])
    tgid = m["tgid"]
    if tgid and tgid.strip("-"):
        out.tgid_seen = True
        pid = int(tgid)
    else:
        pid = tid
    ts = int(m["sec"]) * 1_000_000_000 + int(m["frac"].ljust(9, "0")[:9])
    env = {"ts_ns": ts, "pid": pid, "tid": tid, "comm": m["comm"], "source": "ftrace"}
    body = m["body"]

    if (e := SYS_EXIT.match(body)) is not None:
        pend = out.pending.get(tid)
        if pend and pend[0] == e["name"]:
            del out.pending[tid]
            _, family, row = pend
            row.update(ret=_signed(int(e["ret"], 16)), end_ns=ts)
            out.columns.add(family, row)
        return
    if (e := SYS_ENTER.match(body)) is not None:
        try:
            args = _args(e["args"])
            made = _syscall_enter(e["name"], args)
        except (KeyError, ValueError):
            raise ValueError(f"sys_{e['name']}: arguments {e['args']!r} do not match its format") from None
        if made is None:
            out.unknown[f"sys_{e['name']}"] = out.unknown.get(f"sys_{e['name']}", 0) + 1
            return
        family, row = made
        stale = out.pending.pop(tid, None)
        if stale:  # an enter whose exit never came (trace started or stopped mid-call)
            out.columns.add(stale[1], stale[2])
        out.pending[tid] = (e["name"], family, {**env, **row})
        return
    e = EVENT.match(body)
    if e is None:
        raise ValueError(f"event text {body!r} is neither 'name: args' nor a syscall")
    spec = EVENTS.get(e["event"])
    if spec is None:
        out.unknown[e["event"]] = out.unknown.get(e["event"], 0) + 1
        return
    pattern, build = spec
    am = pattern.match(e["args"])
    if am is None:
        raise ValueError(f"{e['event']}: arguments {e['args']!r} do not match its format")
    family, row = build(am)
    out.columns.add(family, {**env, **row})


HEADER_PREFIXES = ("#", "cpus=", "CPU ", "version =")  # tracefs and trace-cmd report headers


def parse(paths: list[Path], *, skip_bad: bool = False) -> ParsedTrace:
    out = ParsedTrace()
    out.bad = read_lines(paths, lambda line: _parse_line(line, out), skip_bad=skip_bad,
                         skip=lambda line: line.startswith(HEADER_PREFIXES))
    for _, family, row in out.pending.values():  # enters whose exit the trace does not hold
        out.columns.add(family, row)
    out.pending.clear()
    return out


def import_ftrace(paths: list[Path], run_dir: Path, *, trace_clock: str = "mono",
                  clock_offset_ns: int | None = None, skip_bad: bool = False) -> dict[str, Any]:
    if trace_clock not in CLOCKS:
        raise TraceFormatError(str(paths[0]) if paths else "-", 0,
                               f"unknown trace clock {trace_clock!r}; one of {', '.join(CLOCKS)}")
    parsed = parse(paths, skip_bad=skip_bad)
    if clock_offset_ns is not None:
        alignment, offset = "given", clock_offset_ns
    elif trace_clock in ("mono", "mono_raw"):
        alignment, offset = "native", 0
    else:
        alignment, offset = "unaligned", 0
    info = {"files": [str(p) for p in paths], "unknown_events": parsed.unknown,
            "pid_from": "tgid column" if parsed.tgid_seen else "thread id (no TGID column: record with "
                                                               "options/record-tgid)",
            "clock": {"source": f"ftrace trace_clock {trace_clock}", "alignment": alignment,
                      "offset_ns": offset, "residual_ns": None}}
    tables = parsed.columns.tables()
    with RunWriter(run_dir, source="ftrace", kind="importer", info=info) as w:
        for family, table in tables.items():
            if offset:
                for col in ("ts_ns", "end_ns"):
                    if col in table.column_names:
                        idx = table.schema.get_field_index(col)
                        table = table.set_column(idx, col, pc.subtract(table[col], pa.scalar(offset, pa.int64())))
            w.write(family, table)
        if parsed.bad:
            w.count_lost("ftrace", len(parsed.bad), "lines that could not be parsed (--skip-bad)")
            w.update_session(bad_lines=parsed.bad[:100])
    return {"rows": parsed.columns.counts(), "unknown": parsed.unknown, "bad": len(parsed.bad),
            "alignment": alignment, "tgid": parsed.tgid_seen}
