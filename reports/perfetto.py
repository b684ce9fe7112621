"""A run as a Perfetto trace (protobuf TrackEvent packets) for ui.perfetto.dev and trace_processor.

Tracks:
  one process track per traced process, with child tracks:
    - one per event family, every event of the family as an instant (name = kind of event,
      args = event_id and the event's readable label);
    - "DMA mappings": each mapping of the dma_mappings view as a slice from map to unmap (or
      to the end of the run), ranges as args; overlapping mappings go to numbered tracks;
    - "memslot N": each memslot_timeline period as a slice, GPA/HVA ranges as args;
    - "hint rounds", "bitmap syncs", "balloon target": QEMU activity as slices;
  "findings: D1" ... global tracks: each finding as a slice over its time window (numbered
  tracks and overflow as for mappings), with a flow to each of its evidence events (at most
  MAX_FLOWS_PER_FINDING per finding, MAX_FLOWS in all).

Times are the run's CLOCK_MONOTONIC nanoseconds, written as they are on Perfetto's default
clock. The protos are the ones the `perfetto` package ships; packets are streamed to the file
a batch of packets at a time, so memory stays flat for large runs.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from pipeline.runstore import Run
from pipeline.schema import SEVERITIES
from queries.runner import connect
from reports import SQL_MODULES
from reports.overview import process_summary

SEQUENCE = 1
MAX_FLOWS_PER_FINDING = 32
MAX_FLOWS = 500_000       # flows in all; findings past it keep their slice without flows
BATCH = 65_536
MAX_LANES = 32            # numbered slice tracks per kind; what does not fit becomes an instant
BEGIN, END, INSTANT = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END, pb.TrackEvent.TYPE_INSTANT


def pack(intervals: list[tuple[int, int]], max_lanes: int = MAX_LANES) -> list[int | None]:
    """Lane index per (start, end) so that intervals on one lane do not overlap (slices on one
    Perfetto track must nest); greedy by start time, reusing the lane that freed up first. None
    for an interval that finds no free lane among max_lanes (so a million overlapping D1 windows
    do not become a million tracks)."""
    order = sorted(range(len(intervals)), key=lambda i: intervals[i])
    lanes: list[int | None] = [None] * len(intervals)
    free: list[tuple[int, int]] = []   # (end, lane)
    used = 0
    for i in order:
        start, end = intervals[i]
        if free and free[0][0] < start:  # strictly: an end and a begin at one instant may sort either way
            _, lane = heapq.heappop(free)
        elif used < max_lanes:
            lane, used = used, used + 1
        else:
            continue
        lanes[i] = lane
        heapq.heappush(free, (end, lane))
    return lanes


def _args(args: dict) -> list[pb.DebugAnnotation]:
    out = []
    for k, v in args.items():
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(pb.DebugAnnotation(name=k, bool_value=v))
        elif isinstance(v, int):
            out.append(pb.DebugAnnotation(name=k, int_value=v))
        else:
            out.append(pb.DebugAnnotation(name=k, string_value=str(v)))
    return out


def _hex_range(a: int | None, b: int | None) -> str:
    return "" if a is None or b is None else f"0x{a:x}-0x{b:x}"


class TraceWriter:
    """Tracks (created on first use) and TrackEvent packets, written to a file a batch of packets
    at a time (a serialized Trace of N packets followed by one of M packets is one Trace of N+M)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.packets: list[pb.TracePacket] = []
        self.uuids: dict[tuple, int] = {}
        self.counts: dict[str, int] = {"tracks": 0, "slices": 0, "instants": 0, "flows": 0}
        self._put(pb.TracePacket(trusted_packet_sequence_id=SEQUENCE,
                                 sequence_flags=pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED))

    def _put(self, packet: pb.TracePacket) -> None:
        self.packets.append(packet)
        if len(self.packets) >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.f.write(pb.Trace(packet=self.packets).SerializeToString())
        self.packets = []

    def _descriptor(self, key: tuple, descriptor: dict) -> int:
        if key not in self.uuids:
            uuid = len(self.uuids) + 1
            self.uuids[key] = uuid
            self._put(pb.TracePacket(trusted_packet_sequence_id=SEQUENCE,
                                     track_descriptor=pb.TrackDescriptor(uuid=uuid, **descriptor)))
            self.counts["tracks"] += 1
        return self.uuids[key]

    def process(self, pid: int, comm: str) -> int:
        return self._descriptor(("process", pid), {"process": pb.ProcessDescriptor(pid=pid, process_name=comm)})

    def child(self, pid: int | None, name: str) -> int:
        key = ("track", pid, name)
        if key in self.uuids:
            return self.uuids[key]
        parent = self.uuids.get(("process", pid)) if pid is not None else None
        return self._descriptor(key, {"name": name, **({"parent_uuid": parent} if parent else {})})

    def event(self, track: int, ts: int, kind, name: str | None = None, args: dict | None = None,
              flows=(), terminating=()) -> None:
        self._put(pb.TracePacket(
            trusted_packet_sequence_id=SEQUENCE, timestamp=ts,
            track_event=pb.TrackEvent(type=kind, track_uuid=track, name=name,
                                      debug_annotations=_args(args) if args else None,
                                      flow_ids=flows or None, terminating_flow_ids=terminating or None)))
        self.counts["flows"] += len(flows)
        if kind == INSTANT:
            self.counts["instants"] += 1
        elif kind == BEGIN:
            self.counts["slices"] += 1

    def slice(self, track: int, start: int, end: int, name: str, args: dict | None = None, flows=()) -> None:
        self.event(track, start, BEGIN, name, args, flows)
        self.event(track, max(end, start), END)

    def span(self, pid: int | None, title: str, lane: int | None, start: int, end: int, name: str,
             args: dict, flows=()) -> None:
        """A slice on track `title` (numbered from its second lane), or, without a lane, an instant
        at its start on `title (overflow)` with its end as an arg."""
        if lane is None:
            self.event(self.child(pid, f"{title} (overflow)"), start, INSTANT, name,
                       {**args, "end_ns": end}, flows)
        else:
            self.slice(self.child(pid, title + (f" #{lane + 1}" if lane else "")), start, end, name, args, flows)


def _flows(findings: pa.Table) -> tuple[dict[str, list[int]], dict[int, list[int]], int]:
    """Flow ids per finding and per evidence event: findings worst first, at most
    MAX_FLOWS_PER_FINDING each and MAX_FLOWS in all; returns also how many evidence links were
    left without a flow."""
    per_finding: dict[str, list[int]] = {}
    per_event: dict[int, list[int]] = {}
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    rows = sorted(zip(findings.column("finding_id").to_pylist(), findings.column("severity").to_pylist(),
                      findings.column("ts_start_ns").to_pylist(), range(findings.num_rows)),
                  key=lambda r: (rank[r[1]], r[2] if r[2] is not None else 0, r[0]))
    ids_col = findings.column("event_ids")
    next_id, left = 1, 0
    for fid, _, _, i in rows:
        ids = ids_col[i].as_py()
        room = min(MAX_FLOWS_PER_FINDING, max(MAX_FLOWS - next_id + 1, 0))
        chosen = sorted(set(ids))[:room]
        left += len(set(ids)) - len(chosen)
        flows = list(range(next_id, next_id + len(chosen)))
        next_id += len(chosen)
        per_finding[fid] = flows
        for e, fl in zip(chosen, flows):
            per_event.setdefault(e, []).append(fl)
    return per_finding, per_event, left


def _stream(con, sql: str):
    reader = con.sql(sql).to_arrow_reader(BATCH)
    for batch in reader:
        yield from batch.to_pylist()


def export_perfetto(run: Run, findings: pa.Table, out: Path) -> dict[str, Any]:
    """Write the run (and its findings) to `out` as a Perfetto trace; returns what was written."""
    con = connect(run, include=SQL_MODULES)
    families = {f for f, n in run.row_counts().items() if n}
    flows_of_finding, flows_of_event, flows_left = _flows(findings)
    span_end = con.execute("SELECT max(ts_ns) FROM event_labels").fetchone()[0] or 0
    with open(out, "wb") as f:
        w = TraceWriter(f)
        for p in process_summary(con, families):
            w.process(p["pid"], p["comm"])

        # Every event as an instant on its family's track; evidence events end their findings' flows.
        for e in _stream(con, "SELECT event_id, ts_ns, pid, family, what, label FROM event_labels"):
            track = w.child(e["pid"] if e["pid"] else None, e["family"])
            w.event(track, e["ts_ns"], INSTANT, e["what"], {"event_id": e["event_id"], "label": e["label"]},
                    terminating=flows_of_event.get(e["event_id"], ()))

        maps = con.execute("""SELECT pid, api, event_id, unmap_event_id, mapped_ns, unmapped_ns,
                                     vaddr_start, vaddr_end, iova_start, iova_end, flags
                              FROM dma_mappings ORDER BY pid, mapped_ns""").fetchall()
        lanes: list[int | None] = [None] * len(maps)
        for pid in {m[0] for m in maps}:  # lanes per process: each has its own tracks
            idx = [i for i, m in enumerate(maps) if m[0] == pid]
            for i, lane in zip(idx, pack([(maps[i][4], maps[i][5] if maps[i][5] is not None else span_end)
                                          for i in idx])):
                lanes[i] = lane
        for m, lane in zip(maps, lanes):
            pid, api, eid, ueid, t0, t1, v0, v1, i0, i1, flags = m
            name = f"{api} IOVA {_hex_range(i0, i1)}" if i0 is not None else f"{api} vaddr {_hex_range(v0, v1)}"
            w.span(pid, "DMA mappings", lane, t0, t1 if t1 is not None else span_end, name,
                   {"vaddr": _hex_range(v0, v1), "iova": _hex_range(i0, i1) or None, "size": v1 - v0,
                     "map_event_id": eid, "unmap_event_id": ueid, "flags": flags,
                     "still_mapped_at_end": t1 is None})

        for pid, slot, as_id, flags, g0, g1, h0, h1, t0, t1, eid, ended in con.execute("""
                SELECT pid, slot, as_id, flags, gpa_start, gpa_end, hva_start, hva_end, valid_from, valid_to,
                       event_id, ended_by FROM memslot_timeline ORDER BY pid, valid_from""").fetchall():
            track = w.child(pid, f"memslot {slot}" + (f" (as {as_id})" if as_id else ""))
            w.slice(track, t0, t1 if t1 is not None else span_end, f"slot {slot} GPA {_hex_range(g0, g1)}",
                    {"gpa": _hex_range(g0, g1), "hva": _hex_range(h0, h1), "flags": flags,
                     "event_id": eid, "ended_by": ended})

        if "qemu" in families:
            _qemu_slices(con, w, span_end)

        for (fid, det, kind, sev, pid, comm, t0, t1, g0, g1, h0, h1, i0, i1, msg), lane in _finding_rows(findings):
            w.span(None, f"findings: {det}", lane, t0, t1, f"{sev} {det} {kind}",
                   {"finding_id": fid, "process": f"{comm} ({pid})", "gpa": _hex_range(g0, g1),
                    "hva": _hex_range(h0, h1), "iova": _hex_range(i0, i1), "message": msg},
                   flows=flows_of_finding.get(fid, ()))
        w.flush()
    return {**w.counts, "findings": findings.num_rows, "evidence_links_without_flow": flows_left,
            "path": str(out)}


def _qemu_slices(con, w: TraceWriter, span_end: int) -> None:
    """Hint rounds (free_page_hint_start -> stop), bitmap syncs (start -> end) and the periods of
    each balloon target, per process, paired in SQL by the next end event after each start."""
    rows = con.execute("""
        WITH q AS (
            SELECT pid, ts_ns, event, count, size, event_id,
                   lead(ts_ns) OVER (PARTITION BY pid, grp ORDER BY ts_ns, event_id) AS next_ts,
                   lead(event) OVER (PARTITION BY pid, grp ORDER BY ts_ns, event_id) AS next_event
            FROM (SELECT *, CASE WHEN event LIKE 'free_page_hint_st%' THEN 'hint'
                                 WHEN event LIKE 'bitmap_sync_%' THEN 'sync'
                                 WHEN event = 'balloon_target' THEN 'balloon' END AS grp
                  FROM qemu WHERE event IN ('free_page_hint_start', 'free_page_hint_stop', 'bitmap_sync_start',
                                            'bitmap_sync_end', 'balloon_target'))
        )
        SELECT pid, ts_ns, event, count, size, event_id, next_ts, next_event FROM q
        WHERE event IN ('free_page_hint_start', 'bitmap_sync_start', 'balloon_target')
        ORDER BY pid, ts_ns""").fetchall()
    ends = {"free_page_hint_start": ("free_page_hint_stop", "hint rounds", "hint round"),
            "bitmap_sync_start": ("bitmap_sync_end", "bitmap syncs", "bitmap sync"),
            "balloon_target": ("balloon_target", "balloon target", None)}
    for pid, ts, event, count, size, eid, next_ts, next_event in rows:
        end_event, track_name, name = ends[event]
        end = next_ts if next_event == end_event else span_end
        if name is None:
            name = f"balloon {count * 4096 / 2**20:,.0f} MiB" if count is not None else "balloon target"
        w.slice(w.child(pid, track_name), ts, end, name,
                {"event_id": eid, "count": count, "size": size, "open_at_end": next_event != end_event})


def _finding_rows(findings: pa.Table):
    cols = ("finding_id", "detector", "kind", "severity", "pid", "comm", "ts_start_ns", "ts_end_ns",
            "gpa_start", "gpa_end", "hva_start", "hva_end", "iova_start", "iova_end", "message")
    rows = [r for r in zip(*(findings.column(c).to_pylist() for c in cols)) if r[6] is not None]
    # Findings of one detector may overlap in time: numbered tracks per detector keep slices nested.
    lanes: list[int | None] = [None] * len(rows)
    for det in {r[1] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r[1] == det]
        for i, lane in zip(idx, pack([(rows[i][6], rows[i][7] if rows[i][7] is not None else rows[i][6])
                                      for i in idx])):
            lanes[i] = lane
    return [(r[:7] + ((r[7] if r[7] is not None else r[6]),) + r[8:], lane) for r, lane in zip(rows, lanes)]
