"""A finding's timeline: its evidence events on lanes by kind, x = time, with lifetimes as bars.

DMA mapping lifetimes come from the dma_mappings view (the map/unmap pairing is the view's job:
same process, container and overlapping IOVA), and a deleted memslot's gap ends when
memslot_timeline has the same slot back; a bar whose end is past the right edge runs to the edge.
"""

from __future__ import annotations

from dataclasses import dataclass

LANES = ("dma", "discard", "memslot", "guest", "qemu", "lost")
LANE_TITLES = {"dma": "DMA mappings", "discard": "discards, invalidations", "memslot": "memslots, dirty log",
               "guest": "guest accesses", "qemu": "QEMU, VFIO groups", "lost": "lost events"}
WIDTH, LEFT, LANE_H = 760, 170, 26


def duration(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns" if ns else "0"


@dataclass
class Timeline:
    """Geometry of one finding's picture: a lane per kind of event, x = time."""

    width: int
    height: int
    lanes: list[dict]
    marks: list[dict]    # one per evidence event, in time order
    spans: list[dict]    # DMA mapping lifetimes, memslot gaps, hint rounds
    ticks: list[dict]


def mapping_lifetimes(con, event_ids: list[int]) -> dict[int, dict]:
    """{map event_id: {unmapped_ns, unmap_event_id}} from dma_mappings, for these map events."""
    if not event_ids:
        return {}
    rows = con.execute("SELECT event_id, unmapped_ns, unmap_event_id FROM dma_mappings WHERE event_id IN "
                       "(SELECT unnest(?::BIGINT[]))", [event_ids]).fetchall()
    return {e: {"unmapped_ns": u, "unmap_event_id": ue} for e, u, ue in rows}


def memslot_gaps(con, event_ids: list[int]) -> dict[int, dict]:
    """{memslot delete event_id: {unmapped_ns, unmap_event_id}}: when the same slot (process, VM,
    address space, slot) got memory again, from memslot_timeline."""
    if not event_ids:
        return {}
    rows = con.execute("""
        SELECT d.event_id, min(t.valid_from), arg_min(t.event_id, t.valid_from)
        FROM memslots d LEFT JOIN memslot_timeline t
          ON t.pid = d.pid AND t.vm_fd = d.vm_fd AND t.as_id = d.as_id AND t.slot = d.slot AND t.valid_from > d.ts_ns
        WHERE d.event_id IN (SELECT unnest(?::BIGINT[])) AND d.size = 0
        GROUP BY d.event_id""", [event_ids]).fetchall()
    return {e: {"unmapped_ns": t, "unmap_event_id": te} for e, t, te in rows}


def timeline(evidence: list[dict], window: tuple[int | None, int | None],
             lifetimes: dict[int, dict], gaps: dict[int, dict]) -> Timeline:
    times = [e["ts_ns"] for e in evidence] + [t for t in window if t is not None]
    t0, t1 = min(times), max(times)
    pad = max((t1 - t0) * 0.05, 1)
    t0, t1 = t0 - pad, t1 + pad
    lanes_used = [lane for lane in LANES if any(e["lane"] == lane for e in evidence)]
    y = {lane: 20 + i * LANE_H for i, lane in enumerate(lanes_used)}

    def x(t: float) -> float:
        return round(LEFT + (min(t, t1) - t0) / (t1 - t0) * (WIDTH - LEFT - 10), 1)

    marks = [{"x": x(e["ts_ns"]), "y": y[e["lane"]], "event_id": e["event_id"], "ts_ns": e["ts_ns"],
              "label": e["label"], "lane": e["lane"]} for e in evidence]
    spans = []
    for i, e in enumerate(evidence):
        later = evidence[i + 1:]
        if e["event_id"] in lifetimes:
            life = lifetimes[e["event_id"]]
            end = life["unmapped_ns"] if life["unmapped_ns"] is not None else t1
            title = ("DMA mapping live until the run ended" if life["unmapped_ns"] is None else
                     f"DMA mapping live until event {life['unmap_event_id']} (+{duration(end - e['ts_ns'])})")
            kind = ("dma", "mapping", title, life["unmap_event_id"])
        elif e["event_id"] in gaps:
            gap = gaps[e["event_id"]]
            end = gap["unmapped_ns"] if gap["unmapped_ns"] is not None else t1
            kind = ("memslot", "gap", "no memslot" if gap["unmapped_ns"] is None else
                    f"no memslot until event {gap['unmap_event_id']} (+{duration(end - e['ts_ns'])})",
                    gap["unmap_event_id"])
        # A hint round from its bitmap sync to the next QEMU event (else to the right edge).
        elif e["what"] == "bitmap_sync_end":
            end = next((o["ts_ns"] for o in later if o["lane"] == "qemu"), t1)
            kind = ("qemu", "round", "hint round", None)
        else:
            continue
        spans.append({"x": x(e["ts_ns"]), "w": max(x(end) - x(e["ts_ns"]), 1.0), "y": y[kind[0]],
                      "kind": kind[1], "title": kind[2], "start_id": e["event_id"], "end_id": kind[3]})
    ticks = [{"x": x(t0 + pad + f * (t1 - t0 - 2 * pad)), "label": "+" + duration(f * (t1 - t0 - 2 * pad))}
             for f in (0, 0.25, 0.5, 0.75, 1)]
    lanes = [{"y": y[lane], "title": LANE_TITLES[lane]} for lane in lanes_used]
    return Timeline(WIDTH, 40 + len(lanes_used) * LANE_H, lanes, marks, spans, ticks)
