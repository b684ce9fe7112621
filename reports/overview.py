"""The report's overview: what happened over the whole run, drawn from aggregates DuckDB computes
in fixed time bins, so a run of days or of 100M events costs a few grouped scans and a page of
constant size.

Lanes (top to bottom): events per family, guest memory discarded (MiB/s), the balloon's target
and actual size, QEMU activity (free page hint rounds, migration bitmap syncs, memslot changes),
and the findings. A per-process summary table comes with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.constants import value

BINS = 200
WIDTH, LEFT, RIGHT = 900, 190, 12
PAGE = 4096  # virtio-balloon counts 4 KiB pages whatever the host page size (virtio spec 5.5.6)

DISCARD_ADVICES = tuple(value(n) for n in ("MADV_DONTNEED", "MADV_FREE", "MADV_REMOVE", "MADV_DONTNEED_LOCKED"))

# QEMU activity lanes: title -> qemu events counted per bin.
QEMU_LANES = {
    "free page hint rounds": ("free_page_hint_start", "free_page_hint_stop", "free_page_hint"),
    "migration bitmap syncs": ("bitmap_sync_start", "bitmap_sync_end"),
    "balloon page requests": ("balloon_page", "balloon_inflate", "balloon_deflate"),
    "virtio-mem plug/unplug": ("virtio_mem_plug", "virtio_mem_unplug", "virtio_mem_unplug_all"),
}


def _sql_list(items) -> str:
    return ", ".join(f"'{i}'" if isinstance(i, str) else str(i) for i in items)


def discards_sql(families: set[str]) -> str | None:
    """Discarded guest memory as (pid, comm, ts_ns, bytes): madvise discards where the process has
    any, else QEMU's ram_block_discard_range records (the same rule as the guest_discards view,
    without needing memslots to translate)."""
    parts = []
    if "discards" in families:
        parts.append(f"""SELECT pid, comm, ts_ns, size AS bytes FROM discards
            WHERE syscall <> 'fallocate' AND advice IN ({_sql_list(DISCARD_ADVICES)}) AND coalesce(ret, 0) = 0""")
    if "qemu" in families:
        skip = "AND pid NOT IN (SELECT DISTINCT pid FROM discards)" if "discards" in families else ""
        parts.append(f"""SELECT pid, comm, ts_ns, size AS bytes FROM qemu
            WHERE event = 'ram_block_discard_range' AND coalesce(ret, 0) = 0 AND size IS NOT NULL {skip}""")
    return " UNION ALL ".join(parts) or None


def events_sql(families: set[str]) -> str:
    """Every event's envelope, one UNION ALL over the families that have rows."""
    return " UNION ALL ".join(f"SELECT pid, tid, comm, ts_ns, '{f}' AS family FROM {f}" for f in sorted(families))


@dataclass
class Lane:
    """One horizontal strip of the overview."""

    title: str
    note: str                       # total, peak and unit, shown under the title
    y: int
    height: int
    kind: str                       # "line", "bars" or "steps"
    series: list[dict] = field(default_factory=list)   # {cls, points (SVG), label}
    bars: list[dict] = field(default_factory=list)     # {x, y, w, h, title}


def nice_step(span_s: float, target: int = 8) -> float:
    """A tick step giving about `target` ticks that reads well in the unit time_label picks:
    1-2-5 decades of seconds below 2 min, whole minutes / hours above."""
    raw = span_s / target
    for unit, steps in ((3600.0, (1, 2, 3, 6, 12, 24, 48, 168)), (60.0, (1, 2, 5, 10, 15, 30, 60))):
        if span_s >= 2 * unit * 2:
            return next((m * unit for m in steps if m * unit >= raw), steps[-1] * unit * math.ceil(raw / (steps[-1] * unit)))
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def time_label(s: float) -> str:
    if s == 0:
        return "0 s"
    for unit, scale in (("h", 3600.0), ("min", 60.0)):
        if abs(s) >= scale:
            return f"{s / scale:.4g} {unit}"
    if abs(s) >= 1:
        return f"{s:.4g} s"
    if abs(s) >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def rate(n: float) -> str:
    return f"{n:,.0f}" if n >= 100 else f"{n:.3g}"


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 / 10 else f"{n / 1024:,.1f} KiB"


class Overview:
    """Geometry and numbers of the overview for a run spanning [t0, t1] ns."""

    def __init__(self, con, families: set[str], t0: int, t1: int):
        self.con, self.families = con, families
        self.t0, self.t1 = t0, max(t1, t0 + 1)
        self.bin_ns = (self.t1 - self.t0 + 1) / BINS
        self.plot_w = WIDTH - LEFT - RIGHT
        self.lanes: list[Lane] = []
        self._y = 8

    def x(self, ts: float) -> float:
        return round(LEFT + (ts - self.t0) / (self.t1 - self.t0) * self.plot_w, 1)

    def _bin_x(self, b: int) -> float:
        return round(LEFT + b / BINS * self.plot_w, 1)

    def _binned(self, sql: str, value_expr: str = "count(*)", key: str = "NULL") -> dict[Any, list[float]]:
        """{key: [value per bin]} from rows of `sql` (which has ts_ns)."""
        rows = self.con.execute(f"""
            SELECT {key} AS k, least(greatest(floor((ts_ns - {self.t0}) / {self.bin_ns}), 0), {BINS - 1})::INT AS b,
                   {value_expr} AS v
            FROM ({sql}) GROUP BY ALL""").fetchall()
        out: dict[Any, list[float]] = {}
        for k, b, v in rows:
            out.setdefault(k, [0.0] * BINS)[b] = float(v or 0)
        return out

    def _add(self, title: str, note: str, kind: str, height: int) -> Lane:
        lane = Lane(title, note, self._y, height, kind)
        self.lanes.append(lane)
        self._y += height + 14
        return lane

    def _line(self, lane: Lane, values: list[float], cls: str, peak: float, label: str = "") -> None:
        base = lane.y + lane.height
        pts = " ".join(f"{self._bin_x(b) + self.plot_w / BINS / 2:.1f},{base - v / peak * (lane.height - 2):.1f}"
                       for b, v in enumerate(values))
        lane.series.append({"cls": cls, "points": pts, "label": label})

    def _bars(self, lane: Lane, values: list[float], unit: str) -> None:
        peak = max(values) or 1
        base, w = lane.y + lane.height, self.plot_w / BINS
        for b, v in enumerate(values):
            if v:
                h = max(v / peak * (lane.height - 2), 1.5)
                t = self.t0 + b * self.bin_ns
                lane.bars.append({"x": self._bin_x(b), "y": round(base - h, 1), "w": round(max(w - 0.3, 0.8), 2),
                                  "h": round(h, 1), "title": f"{v:g} {unit} at {time_label((t - self.t0) / 1e9)}"})

    def family_rates(self) -> None:
        per = self._binned(events_sql(self.families), key="family")
        secs = self.bin_ns / 1e9
        for fam, bins in sorted(per.items()):
            total = sum(bins)
            lane = self._add(fam, f"{int(total):,} events, peak {rate(max(bins) / secs)}/s", "line", 26)
            self._line(lane, bins, "spark", max(bins) or 1)

    def discard_rate(self) -> None:
        sql = discards_sql(self.families)
        bins = self._binned(sql, "sum(bytes)").get(None) if sql else None
        if not bins:
            return
        secs = self.bin_ns / 1e9
        rates = [b / 2**20 / secs for b in bins]
        lane = self._add("guest memory discarded", f"{mib(sum(bins))}, peak {rate(max(rates))} MiB/s", "line", 34)
        self._line(lane, rates, "discard", max(rates) or 1, "MiB/s discarded")

    def balloon(self) -> bool:
        """Balloon size QEMU asked for (balloon_target: pages) and the guest reported
        (balloon_set_config: actual pages), as step lines carried forward between changes."""
        if "qemu" not in self.families:
            return False
        per = self._binned("SELECT ts_ns, event, count FROM qemu WHERE event IN ('balloon_target', 'balloon_set_config')"
                           " AND count IS NOT NULL", "arg_max(count, ts_ns)", key="event")
        counts = self._binned("SELECT ts_ns, event FROM qemu WHERE event IN ('balloon_target', 'balloon_set_config')"
                              " AND count IS NOT NULL", key="event")
        if not per:
            return False
        series = {}
        for event, bins in per.items():
            seen, cur, vals = counts[event], None, []
            for b in range(BINS):
                if seen[b]:
                    cur = bins[b] * PAGE / 2**20
                vals.append(cur)
            series[event] = vals
        peak = max((v for vals in series.values() for v in vals if v is not None), default=0) or 1
        notes = []
        lane = self._add("balloon size", "", "steps", 40)
        for event, cls, name in (("balloon_target", "target", "target"), ("balloon_set_config", "actual", "actual")):
            vals = series.get(event)
            if vals is None:
                notes.append(f"{name}: not in the run")
                continue
            base = lane.y + lane.height
            pts, w = [], self.plot_w / BINS
            for b, v in enumerate(vals):
                if v is not None:
                    y = base - v / peak * (lane.height - 2)
                    pts += [f"{self._bin_x(b):.1f},{y:.1f}", f"{self._bin_x(b) + w:.1f},{y:.1f}"]
            lane.series.append({"cls": cls, "points": " ".join(pts), "label": f"balloon {name}"})
            last = next(v for v in reversed(vals) if v is not None)
            notes.append(f"{name} {last:,.0f} MiB at end")
        lane.note = f"MiB in the balloon, 0-{peak:,.0f}; " + "; ".join(notes)
        return True

    def qemu_activity(self) -> None:
        if "qemu" in self.families:
            events = [e for evs in QEMU_LANES.values() for e in evs]
            per = self._binned(f"SELECT ts_ns, event FROM qemu WHERE event IN ({_sql_list(events)})", key="event")
            for title, evs in QEMU_LANES.items():
                bins = [sum(per.get(e, [0.0] * BINS)[b] for e in evs) for b in range(BINS)]
                if any(bins):
                    lane = self._add(title, f"{int(sum(bins)):,} QEMU events", "bars", 24)
                    self._bars(lane, bins, "events")
        if "memslots" in self.families:
            bins = self._binned("SELECT ts_ns FROM memslots").get(None)
            if bins:
                lane = self._add("memslot changes", f"{int(sum(bins)):,} memslot ioctls", "bars", 24)
                self._bars(lane, bins, "memslot calls")

    def findings_lane(self, density: dict[str, list[float]], marks: list[dict]) -> dict:
        """All findings as a density strip per severity, the cards shown on the page as markers."""
        lane = self._add("findings", f"{int(sum(sum(v) for v in density.values())):,} starting in the run",
                         "bars", 24)
        for sev, bins in density.items():
            self._bars(lane, bins, f"{sev} findings")
            for bar in lane.bars:
                bar.setdefault("cls", f"f-{sev}")
        return {"lane": lane, "marks": [{**m, "x": self.x(m["ts"])} for m in marks if self.t0 <= m["ts"] <= self.t1]}

    def ticks(self) -> list[dict]:
        span_s = (self.t1 - self.t0) / 1e9
        step = nice_step(span_s)
        n = int(span_s / step) + 1
        return [{"x": self.x(self.t0 + i * step * 1e9), "label": time_label(round(i * step, 9))} for i in range(n)]

    @property
    def height(self) -> int:
        return self._y + 18


def process_summary(con, families: set[str]) -> list[dict]:
    """Per traced process: events, MiB discarded, DMA mappings made, memslot changes."""
    if not families:
        return []
    parts = [f"""SELECT pid, count(*) AS events,
                   coalesce(max(comm) FILTER (WHERE tid = pid AND comm <> ''), max(comm) FILTER (WHERE comm <> ''), '') AS comm,
                   min(ts_ns) AS first_ns, max(ts_ns) AS last_ns
               FROM ({events_sql(families)}) WHERE pid <> 0 GROUP BY pid"""]
    disc = discards_sql(families)
    sql = f"""
        WITH ev AS ({parts[0]}),
             d AS ({f"SELECT pid, sum(bytes) AS bytes, count(*) AS n FROM ({disc}) GROUP BY pid" if disc
                    else "SELECT NULL::INT AS pid, NULL::HUGEINT AS bytes, NULL::BIGINT AS n WHERE false"}),
             m AS (SELECT pid, count(*) AS n FROM dma_mappings GROUP BY pid),
             s AS (SELECT pid, count(*) AS n FROM memslots GROUP BY pid)
        SELECT ev.pid, ev.comm, ev.events, ev.first_ns, ev.last_ns, coalesce(d.bytes, 0), coalesce(d.n, 0),
               coalesce(m.n, 0), coalesce(s.n, 0)
        FROM ev LEFT JOIN d USING (pid) LEFT JOIN m USING (pid) LEFT JOIN s USING (pid)
        ORDER BY ev.events DESC"""
    return [{"pid": p, "comm": c, "events": n, "first_ns": a, "last_ns": b, "discarded": mib(float(db)),
             "discards": dn, "mappings": mn, "memslot_changes": sn}
            for p, c, n, a, b, db, dn, mn, sn in con.execute(sql).fetchall()]


def overview(con, families: set[str], span: tuple[int | None, int | None],
             finding_density: dict[str, list[float]], marks: list[dict]) -> dict[str, Any]:
    if span[0] is None:
        return {"lanes": [], "height": 0}
    ov = Overview(con, families, span[0], span[1])
    ov.family_rates()
    ov.discard_rate()
    has_balloon = ov.balloon()
    ov.qemu_activity()
    found = ov.findings_lane(finding_density, marks)
    return {"lanes": ov.lanes, "marks": found["marks"], "ticks": ov.ticks(), "width": WIDTH, "left": LEFT,
            "right": WIDTH - RIGHT, "height": ov.height, "span": time_label((ov.t1 - ov.t0) / 1e9),
            "has_balloon": has_balloon, "bin": time_label(ov.bin_ns / 1e9)}


def finding_density(con, findings_rel: str, t0: int | None, t1: int | None) -> dict[str, list[float]]:
    """Findings starting per bin and severity, counted in DuckDB over the whole findings table."""
    if t0 is None:
        return {}
    bin_ns = (max(t1, t0 + 1) - t0 + 1) / BINS
    rows = con.execute(f"""
        SELECT severity, least(greatest(floor((ts_start_ns - {t0}) / {bin_ns}), 0), {BINS - 1})::INT, count(*)
        FROM {findings_rel} WHERE ts_start_ns IS NOT NULL GROUP BY ALL""").fetchall()
    out: dict[str, list[float]] = {}
    for sev, b, n in rows:
        out.setdefault(sev, [0.0] * BINS)[b] = float(n)
    return out
