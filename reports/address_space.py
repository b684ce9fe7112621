"""Address-space pictures for findings whose range matters (D1, D4, D5): the guest-physical layout
at the finding's time - the process's memslots live then, its device DMA mappings live then, and
the finding's own range - on one axis.

The axis is linear when the ranges are of similar size; when they differ by orders of magnitude
(a 4 KiB discard in a 4 GiB slot) it is broken at every range edge and each piece between two
edges gets a width growing with the log of its size, so the smallest range stays visible and
the order of addresses is kept. The picture says which axis it uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa

DETECTORS = ("D1", "D4", "D5")
WIDTH, LEFT, RIGHT = 760, 150, 10
ROW_H, ROW_GAP = 16, 12
MAX_RANGES = 24        # per row and finding; the ones nearest the finding's range are kept
LINEAR_MAX_RATIO = 50  # largest / smallest piece above this -> broken log axis


@dataclass
class AddressPicture:
    width: int
    height: int
    axis: str                  # "linear" or "log-broken"
    rows: list[dict]           # {title, y, rects: [{x, w, cls, title}], left_out}
    ticks: list[dict]          # {x, label}


def live_ranges(con, targets: pa.Table) -> dict[str, dict[str, list[dict]]]:
    """For each (finding_id, pid, t, gpa_start, gpa_end) of `targets`: the memslots (address space
    0) and DMA mappings of pid live at t, nearest the finding's range first. A mapping's GPA is
    the memslot translation of its vaddr at t where one exists, else its IOVA (IOVA == GPA
    without a vIOMMU)."""
    con.register("_targets", targets)
    try:
        slots = con.execute(f"""
            SELECT * EXCLUDE (rn) FROM (
                SELECT f.finding_id, s.slot, s.gpa_start, s.gpa_end, s.hva_start,
                       row_number() OVER (PARTITION BY f.finding_id
                           ORDER BY greatest(0, s.gpa_start::HUGEINT - coalesce(f.gpa_end, 0),
                                             coalesce(f.gpa_start, 0)::HUGEINT - s.gpa_end), s.gpa_start) AS rn
                FROM _targets f JOIN memslot_timeline s
                  ON s.pid = f.pid AND s.as_id = 0 AND s.valid_from <= f.t AND (s.valid_to IS NULL OR f.t < s.valid_to))
            WHERE rn <= {MAX_RANGES} ORDER BY finding_id, gpa_start""").fetchall()
        maps = con.execute(f"""
            SELECT * EXCLUDE (rn) FROM (
                SELECT f.finding_id, m.event_id, m.api, g.gpa_start, g.gpa_start + (m.vaddr_end - m.vaddr_start),
                       m.iova_start,
                       row_number() OVER (PARTITION BY f.finding_id
                           ORDER BY greatest(0, g.gpa_start::HUGEINT - coalesce(f.gpa_end, 0),
                                             coalesce(f.gpa_start, 0)::HUGEINT - g.gpa_start
                                             - (m.vaddr_end - m.vaddr_start)), g.gpa_start) AS rn
                FROM _targets f JOIN dma_mappings m
                  ON m.pid = f.pid AND m.mapped_ns <= f.t AND (m.unmapped_ns IS NULL OR f.t < m.unmapped_ns)
                CROSS JOIN LATERAL (
                    SELECT coalesce(
                        (SELECT s.gpa_start + (m.vaddr_start - s.hva_start) FROM memslot_timeline s
                         WHERE s.pid = f.pid AND s.as_id = 0 AND s.valid_from <= f.t
                           AND (s.valid_to IS NULL OR f.t < s.valid_to)
                           AND s.hva_start <= m.vaddr_start AND m.vaddr_start < s.hva_end LIMIT 1),
                        m.iova_start) AS gpa_start) g)
            WHERE rn <= {MAX_RANGES} ORDER BY finding_id, 4""").fetchall()
    finally:
        con.unregister("_targets")
    out: dict[str, dict[str, list[dict]]] = {}
    for fid, slot, g0, g1, hva in slots:
        out.setdefault(fid, {"slots": [], "maps": []})["slots"].append(
            {"start": g0, "end": g1, "title": f"memslot {slot}: GPA 0x{g0:x}-0x{g1:x} at HVA 0x{hva:x}"})
    for fid, eid, api, g0, g1, iova in maps:
        if g0 is None:  # a pin outside guest RAM with no IOVA (an io_uring buffer of QEMU's own)
            continue
        io = f"IOVA 0x{iova:x}" if iova is not None else "no IOVA"
        out.setdefault(fid, {"slots": [], "maps": []})["maps"].append(
            {"start": g0, "end": g1, "title": f"{api} mapping (event {eid}): GPA 0x{g0:x}-0x{g1:x}, {io}"})
    return out


def _axis(edges: list[int]) -> tuple[str, dict[int, float]]:
    pieces = [b - a for a, b in zip(edges, edges[1:])]
    linear = max(pieces) / max(min(pieces), 1) <= LINEAR_MAX_RATIO
    weights = pieces if linear else [1 + math.log2(1 + p / 4096) for p in pieces]
    total, plot = sum(weights), WIDTH - LEFT - RIGHT
    pos, acc = {edges[0]: float(LEFT)}, 0.0
    for e, w in zip(edges[1:], weights):
        acc += w
        pos[e] = LEFT + acc / total * plot
    return ("linear" if linear else "log-broken"), pos


def picture(finding: dict, ranges: dict[str, list[dict]]) -> AddressPicture | None:
    """The picture of one finding, or None when there is no range to draw."""
    own = []
    if finding.get("gpa_start") is not None and finding.get("gpa_end") is not None:
        own = [{"start": finding["gpa_start"], "end": finding["gpa_end"],
                "title": f"finding: GPA 0x{finding['gpa_start']:x}-0x{finding['gpa_end']:x}"}]
    rows_in = [("memslots", "slot", ranges.get("slots", [])), ("device mappings", "map", ranges.get("maps", [])),
               ("finding range", "hit", own)]
    rows_in = [r for r in rows_in if r[2]]
    if not own or len(rows_in) < 2:
        return None
    edges = sorted({v for _, _, rs in rows_in for r in rs for v in (r["start"], r["end"])})
    if len(edges) < 2:
        return None
    axis, pos = _axis(edges)
    rows = []
    for i, (title, cls, rs) in enumerate(rows_in):
        y = 8 + i * (ROW_H + ROW_GAP)
        rows.append({"title": title, "y": y, "rects": [
            {"x": round(pos[r["start"]], 1), "w": round(max(pos[r["end"]] - pos[r["start"]], 1.5), 1),
             "cls": cls, "title": r["title"]} for r in rs]})
    # Label the edges, thinned so labels do not overlap (about 80 px each).
    ticks, last = [], -1e9
    for e in edges:
        if pos[e] - last >= 80 or e in (edges[0], edges[-1]) and pos[e] - last >= 40:
            ticks.append({"x": round(pos[e], 1), "label": f"0x{e:x}",
                          "anchor": "end" if e == edges[-1] else "start" if e == edges[0] else "middle"})
            last = pos[e]
    height = 8 + len(rows) * (ROW_H + ROW_GAP) + 14
    return AddressPicture(WIDTH, height, axis, rows, ticks)


def pictures(con, findings: list[dict]) -> dict[str, AddressPicture]:
    wanted = [f for f in findings if f["detector"] in DETECTORS and f["pid"] is not None
              and f["ts_start_ns"] is not None and f["gpa_start"] is not None]
    if not wanted:
        return {}
    targets = pa.table({"finding_id": [f["finding_id"] for f in wanted],
                        "pid": pa.array([f["pid"] for f in wanted], pa.int32()),
                        "t": pa.array([f["ts_start_ns"] for f in wanted], pa.int64()),
                        "gpa_start": pa.array([f["gpa_start"] for f in wanted], pa.uint64()),
                        "gpa_end": pa.array([f["gpa_end"] for f in wanted], pa.uint64())})
    live = live_ranges(con, targets)
    out = {}
    for f in wanted:
        pic = picture(f, live.get(f["finding_id"], {}))
        if pic:
            out[f["finding_id"]] = pic
    return out
