"""QEMU's own trace log (log backend, `-msg timestamp=on -trace EVENT -D FILE`) into a run.

Line formats, as QEMU's tracetool writes them:
    TID@SEC.USEC:event args                          (QEMU <= 8.x)
    YYYY-MM-DDTHH:MM:SS.UUUUUUZ (TID) event args     (newer QEMU)
The number is the *thread* id (qemu_get_thread_id), not the process id, and the time is the wall
clock (gettimeofday), with microsecond resolution. The process id is taken from --pid, or from
kernel-side events the run already holds for the same thread ids, or else as the smallest
thread id in the file (QEMU's main thread is its first). Wall-clock times are
turned into CLOCK_MONOTONIC by one offset: given (--clock-offset), or aligned on the memslot
updates the run already holds from a kernel-side source (the same ioctls), or this host's
current offset when the log comes from this boot. The manifest records which, and the residual;
log lines matched to memslot ioctls already in the run are not imported a second time.

Events imported (others are counted as unknown, not errors):
    kvm_set_user_memory       memslots (all three generations of its format)
    ram_block_discard_range   qemu (RAM block name, host pointer, length; also the newer
                              ram_block_discard_shared_range name)
    virtio_balloon_to_target  qemu balloon_target (target bytes, pages)
    migration_bitmap_sync_start / _end   qemu bitmap_sync_start / bitmap_sync_end
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.importers import read_lines
from pipeline.importers.columns import FamilyColumns
from pipeline.runstore import RunWriter, monotonic_ns, open_run

OLD_PREFIX = re.compile(r"^(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):(?P<event>\w+)(?: (?P<args>.*))?$")
NEW_PREFIX = re.compile(r"^(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(?P<usec>\d{6})Z \((?P<tid>\d+)\) "
                        r"(?P<event>\w+)(?: (?P<args>.*))?$")

HEX = r"0x([0-9a-fA-F]+)"
SET_USER_MEMORY = re.compile(
    r"^(?:AddrSpace#(?P<as>\d+) )?Slot#(?P<slot>\d+) flags=" + HEX + r" gpa=" + HEX + r" size=" + HEX
    + r" ua=" + HEX + r"(?: guest_memfd=(?P<gmem_fd>-?\d+) guest_memfd_offset=" + HEX + r")? ret=(?P<ret>-?\d+)$")
DISCARD_RANGE = re.compile(r"^(?P<rb>.*)@(?:0x)?(?P<hva>[0-9a-fA-F]+) \+ 0x(?P<len>[0-9a-fA-F]+): "
                           r"madvise: (?P<madv>-?\d+) fallocate: (?P<falloc>-?\d+) ret: (?P<ret>-?\d+)$")
BALLOON_TARGET = re.compile(r"^balloon target: " + HEX + r" num_pages: (?P<pages>-?\d+)$")
BITMAP_SYNC_END = re.compile(r"^dirty_pages (?P<n>\d+)$")


def _set_user_memory(m: re.Match) -> tuple[str, dict[str, Any]]:
    word = int(m["slot"])
    if m["as"] is not None:   # second generation prints the address space and slot apart
        as_id, slot = int(m["as"]), word
    else:                     # first generation prints the raw slot word (as_id << 16 | slot)
        as_id, slot = word >> 16, word & 0xFFFF
    gmem = m["gmem_fd"] is not None
    return "memslots", {
        "ioctl": "region2" if gmem and int(m["gmem_fd"]) >= 0 else "region",
        "as_id": as_id, "slot": slot, "flags": int(m[3], 16), "gpa": int(m[4], 16),
        "size": int(m[5], 16), "hva": int(m[6], 16),
        "gmem_fd": int(m["gmem_fd"]) if gmem else None, "gmem_offset": int(m[8], 16) if gmem else None,
        "ret": int(m["ret"]),
    }


def _discard_range(m: re.Match) -> tuple[str, dict[str, Any]]:
    return "qemu", {"event": "ram_block_discard_range", "detail": m["rb"], "hva": int(m["hva"], 16),
                    "size": int(m["len"], 16), "ret": int(m["ret"])}


def _balloon_target(m: re.Match) -> tuple[str, dict[str, Any]]:
    return "qemu", {"event": "balloon_target", "size": int(m[1], 16), "count": int(m["pages"])}


def _bitmap_sync_end(m: re.Match) -> tuple[str, dict[str, Any]]:
    return "qemu", {"event": "bitmap_sync_end", "count": int(m["n"])}


# event name -> (argument pattern, row builder)
EVENTS: dict[str, tuple[re.Pattern, Callable[[re.Match], tuple[str, dict[str, Any]]]]] = {
    "kvm_set_user_memory": (SET_USER_MEMORY, _set_user_memory),
    "ram_block_discard_range": (DISCARD_RANGE, _discard_range),
    "ram_block_discard_shared_range": (DISCARD_RANGE, _discard_range),
    "virtio_balloon_to_target": (BALLOON_TARGET, _balloon_target),
    "migration_bitmap_sync_start": (re.compile(r"^$"), lambda m: ("qemu", {"event": "bitmap_sync_start"})),
    "migration_bitmap_sync_end": (BITMAP_SYNC_END, _bitmap_sync_end),
}


@dataclass
class ParsedLog:
    columns: FamilyColumns = field(default_factory=FamilyColumns)
    tids: set[int] = field(default_factory=set)
    unknown: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)   # "FILE:LINE: why", with --skip-bad


def parse(paths: Iterable[Path], *, skip_bad: bool = False) -> ParsedLog:
    out = ParsedLog()
    out.bad = read_lines(paths, lambda line: _parse_line(line, out), skip_bad=skip_bad)
    return out


def _parse_line(line: str, out: ParsedLog) -> None:
    m = OLD_PREFIX.match(line)
    if m:
        realtime_ns = int(m["sec"]) * 1_000_000_000 + int(m["usec"]) * 1000
    else:
        m = NEW_PREFIX.match(line)
        if not m:
            raise ValueError("not a QEMU trace line with a timestamp (run QEMU with -msg timestamp=on; "
                             "expected 'TID@SEC.USEC:event ...' or 'YYYY-MM-DDTHH:MM:SS.UUUUUUZ (TID) event ...')")
        secs = calendar.timegm(time.strptime(m["date"], "%Y-%m-%dT%H:%M:%S"))
        realtime_ns = secs * 1_000_000_000 + int(m["usec"]) * 1000
    event = m["event"]
    spec = EVENTS.get(event)
    if spec is None:
        out.unknown[event] = out.unknown.get(event, 0) + 1
        return
    pattern, build = spec
    args = m["args"] or ""
    am = pattern.match(args)
    if not am:
        raise ValueError(f"{event}: arguments {args!r} do not match its format")
    family, row = build(am)
    tid = int(m["tid"])
    out.tids.add(tid)
    row.update(ts_ns=realtime_ns, tid=tid, comm="", source="qemu-log")
    out.columns.add(family, row)


@dataclass
class Alignment:
    method: str              # "given", "memslots", "host"
    offset_ns: int           # monotonic = realtime - offset_ns
    residual_ns: int | None  # largest disagreement among aligned events
    matched: int = 0
    matched_rows: list[int] = field(default_factory=list)  # log memslot rows already in the run


def align_on_memslots(run_dir: Path, memslots: pa.Table) -> Alignment | None:
    """Offset that maps QEMU's logged memslot updates onto the same ioctls seen by a kernel source.

    The n-th log line for a given (slot, flags, gpa, size, hva, ret) is paired with the n-th such
    ioctl; QEMU logs after the ioctl returns, so its time is compared with the ioctl's exit.
    """
    if not (run_dir / "manifest.json").exists():
        return None
    kernel = open_run(run_dir).read_family("memslots")
    if kernel.num_rows == 0 or memslots.num_rows == 0:
        return None
    con = duckdb.connect()
    con.register("k", kernel)
    con.register("q", memslots.append_column("_row", pa.array(range(memslots.num_rows), pa.int64())))
    row = con.execute("""
        WITH kk AS (SELECT coalesce(end_ns, ts_ns) AS t, row_number() OVER (PARTITION BY as_id, slot, flags, gpa,
                           size, hva, ret ORDER BY ts_ns) AS n, as_id, slot, flags, gpa, size, hva, ret FROM k),
             qq AS (SELECT ts_ns AS t, row_number() OVER (PARTITION BY as_id, slot, flags, gpa,
                           size, hva, ret ORDER BY ts_ns) AS n, as_id, slot, flags, gpa, size, hva, ret, _row FROM q),
             d AS (SELECT qq.t - kk.t AS off, _row FROM qq JOIN kk USING (as_id, slot, flags, gpa, size, hva, ret, n))
        SELECT count(*), median(off)::BIGINT, max(abs(off - (SELECT median(off) FROM d)))::BIGINT, list(_row)
        FROM d
    """).fetchone()
    if not row[0]:
        return None
    return Alignment("memslots", int(row[1]), int(row[2]), int(row[0]), list(row[3]))


def pid_of_threads(run_dir: Path, tids: set[int]) -> int | None:
    """The process that the run's kernel-side events put these thread ids in, if any."""
    if not tids or not (run_dir / "manifest.json").exists():
        return None
    from queries.runner import connect

    con = connect(open_run(run_dir))
    con.register("_tids", pa.table({"tid": pa.array(sorted(tids), pa.int32())}))
    row = con.execute("""
        SELECT pid FROM event_labels WHERE tid IN (SELECT tid FROM _tids) AND pid <> 0
        GROUP BY pid ORDER BY count(*) DESC LIMIT 1
    """).fetchone()
    return row[0] if row else None


def host_alignment() -> Alignment:
    return Alignment("host", time.time_ns() - monotonic_ns(), None)


def import_qemu_log(paths: list[Path], run_dir: Path, *, pid: int | None = None,
                    clock_offset_ns: int | None = None, skip_bad: bool = False) -> dict[str, Any]:
    parsed = parse(paths, skip_bad=skip_bad)
    tables = parsed.columns.tables()
    pid_from = "--pid"
    if pid is None:
        pid = pid_of_threads(run_dir, parsed.tids)
        pid_from = "thread ids matched to kernel-side events in the run"
    if pid is None:  # QEMU's main thread is its first, but the log may hold only other threads
        pid = min(parsed.tids) if parsed.tids else 0
        pid_from = "smallest thread id"
    process = pid
    if clock_offset_ns is not None:
        align = Alignment("given", clock_offset_ns, None)
    else:
        align = align_on_memslots(run_dir, tables.get("memslots", pa.table({}))) or host_alignment()
    info = {"files": [str(p) for p in paths], "unknown_events": parsed.unknown,
            "pid": process, "pid_from": pid_from,
            "clock": {"source": "wall clock (gettimeofday), microseconds", "alignment": align.method,
                      "offset_ns": align.offset_ns, "residual_ns": align.residual_ns,
                      "matched_events": align.matched}}
    if align.matched_rows:
        # Those log lines are the very ioctls the kernel-side source recorded: keep one copy.
        keep = pc.invert(pc.is_in(pa.array(range(tables["memslots"].num_rows)), pa.array(align.matched_rows)))
        tables["memslots"] = tables["memslots"].filter(keep)
        info["memslots_already_in_run"] = len(align.matched_rows)
    with RunWriter(run_dir, source="qemu-log", kind="importer", info=info) as w:
        for family, table in tables.items():
            n = table.num_rows
            table = table.set_column(table.schema.get_field_index("ts_ns"), "ts_ns",
                                     pc.subtract(table["ts_ns"], pa.scalar(align.offset_ns, pa.int64())))
            table = table.set_column(table.schema.get_field_index("pid"), "pid",
                                     pa.repeat(pa.scalar(process, pa.int32()), n))
            w.write(family, table)
        if parsed.bad:
            w.count_lost("qemu-log", len(parsed.bad), "lines that could not be parsed (--skip-bad)")
            w.update_session(bad_lines=parsed.bad[:100])
    return {"rows": parsed.columns.counts(), "unknown": parsed.unknown, "bad": len(parsed.bad),
            "alignment": align}
