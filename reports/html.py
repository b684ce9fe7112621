"""Reports of a run's findings: one self-contained HTML page (inline CSS, SVG and a few lines of
script; nothing fetched), CSV files for machines, the same data as JSON, and a comparison page
for several runs.

    RUN/report/index.html         summary, findings (filterable), details with timelines
    RUN/report/findings.csv       one row per finding
    RUN/report/detectors.csv      ran / not run, what was missing, findings per severity
    RUN/report/events.csv         events and lost events per family
    RUN/report/sessions.csv       collectors and importers that wrote the run
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.runstore import Run
from pipeline.schema import SEVERITIES
from pipeline.findings_store import write_findings_csv
from queries.runner import connect
from reports.baseline import comparison_key

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("reports", "templates"),
    autoescape=True,  # comm and file names come from whoever ran the traced program
    undefined=jinja2.StrictUndefined,
)
_env.filters["hex"] = lambda v: "" if v is None else f"0x{v:x}"
_env.filters["range"] = lambda pair: "" if pair[0] is None else f"0x{pair[0]:x}-0x{pair[1]:x}"

LANES = ("dma", "discard", "memslot", "guest", "qemu", "lost")
LANE_TITLES = {"dma": "DMA mappings", "discard": "discards, invalidations", "memslot": "memslots, dirty log",
               "guest": "guest accesses", "qemu": "QEMU, VFIO groups", "lost": "lost events"}
WIDTH, LEFT, LANE_H = 760, 170, 26
OVERVIEW_BINS = 120


def _duration(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns"


@dataclass
class Timeline:
    """Geometry of one finding's picture: a lane per kind of event, x = time."""

    width: int
    height: int
    lanes: list[dict]
    marks: list[dict]    # one per evidence event, in time order
    spans: list[dict]    # DMA mapping lifetimes, memslot gaps, hint rounds
    ticks: list[dict]


def timeline(evidence: list[dict], window: tuple[int, int]) -> Timeline:
    times = [e["ts_ns"] for e in evidence] + [t for t in window if t is not None]
    t0, t1 = min(times), max(times)
    pad = max((t1 - t0) * 0.05, 1)
    t0, t1 = t0 - pad, t1 + pad
    lanes_used = [lane for lane in LANES if any(e["lane"] == lane for e in evidence)]
    y = {lane: 20 + i * LANE_H for i, lane in enumerate(lanes_used)}

    def x(t: float) -> float:
        return round(LEFT + (t - t0) / (t1 - t0) * (WIDTH - LEFT - 10), 1)

    marks = [{"x": x(e["ts_ns"]), "y": y[e["lane"]], "event_id": e["event_id"], "ts_ns": e["ts_ns"],
              "label": e["label"], "lane": e["lane"]} for e in evidence]
    spans = []
    # Lifetimes drawn as bars: a DMA mapping until its unmap, a deleted memslot until a slot is
    # set again, a hint round from its bitmap sync to the next QEMU event (else to the right edge).
    for i, e in enumerate(evidence):
        later = evidence[i + 1:]
        if e["what"] in ("vfio_type1_map", "iommufd_map"):
            end = next((o["ts_ns"] for o in later if o["what"] == e["what"].replace("_map", "_unmap")), t1)
            kind = ("dma", "mapping", "DMA mapping live")
        elif e["what"] == "memslot_delete":
            end = next((o["ts_ns"] for o in later if o["what"] == "memslot_set"), t1)
            kind = ("memslot", "gap", "no memslot")
        elif e["what"] == "bitmap_sync_end":
            end = next((o["ts_ns"] for o in later if o["lane"] == "qemu"), t1)
            kind = ("qemu", "round", "hint round")
        else:
            continue
        spans.append({"x": x(e["ts_ns"]), "w": max(x(end) - x(e["ts_ns"]), 1.0), "y": y[kind[0]],
                      "kind": kind[1], "title": kind[2]})
    ticks = [{"x": x(t0 + pad + f * (t1 - t0 - 2 * pad)), "label": "+" + _duration(f * (t1 - t0 - 2 * pad))}
             for f in (0, 0.25, 0.5, 0.75, 1)]
    lanes = [{"y": y[lane], "title": LANE_TITLES[lane]} for lane in lanes_used]
    return Timeline(WIDTH, 40 + len(lanes_used) * LANE_H, lanes, marks, spans, ticks)


def overview(con, span: tuple[int | None, int | None], findings: list[dict]) -> dict[str, Any]:
    """Event counts per family in time bins over `span` (first, last event), as sparkline points,
    with findings marked."""
    if span[0] is None:
        return {"rows": [], "marks": [], "width": WIDTH, "height": 0, "span": ""}
    t0, t1 = span[0], max(span[1], span[0] + 1)
    counts = con.execute(f"""
        SELECT family, least(floor((ts_ns - {t0}) * {OVERVIEW_BINS} / {t1 - t0 + 1}), {OVERVIEW_BINS - 1})::INT AS bin,
               count(*) AS n
        FROM event_labels GROUP BY ALL ORDER BY family, bin
    """).fetchall()
    per: dict[str, list[int]] = {}
    for fam, b, n in counts:
        per.setdefault(fam, [0] * OVERVIEW_BINS)[b] = n
    step = (WIDTH - LEFT - 10) / (OVERVIEW_BINS - 1)
    rows = []
    for i, (fam, bins) in enumerate(sorted(per.items())):
        top, base = 10 + i * 34, 10 + i * 34 + 28
        peak = max(bins) or 1
        points = " ".join(f"{LEFT + j * step:.1f},{base - n / peak * 26:.1f}" for j, n in enumerate(bins))
        rows.append({"family": fam, "points": points, "y": top, "base": base, "total": sum(bins), "peak": peak,
                     "rate": sum(bins) / ((t1 - t0) / 1e9) if t1 > t0 else 0})
    height = 20 + len(rows) * 34
    marks = [{"x": round(LEFT + (f["ts_start_ns"] - t0) / (t1 - t0) * (WIDTH - LEFT - 10), 1),
              "severity": f["severity"], "id": f["finding_id"], "title": f"{f['detector']} {f['kind']}"}
             for f in findings if f["ts_start_ns"] is not None and t0 <= f["ts_start_ns"] <= t1]
    return {"rows": rows, "marks": marks, "width": WIDTH, "height": height, "span": _duration(t1 - t0)}


def report_data(run: Run, con, findings: pa.Table, statuses: list[dict]) -> dict[str, Any]:
    """Everything the page shows, as plain data (also what --format json prints); `con` is the
    run's DuckDB connection (queries.runner.connect)."""
    rows = findings.to_pylist()
    ids = sorted({i for f in rows for i in f["event_ids"]})
    evidence: dict[int, dict] = {}
    if ids:
        con.register("_ids", pa.table({"event_id": pa.array(ids, pa.int64())}))
        for e in con.sql("SELECT * FROM event_labels WHERE event_id IN (SELECT event_id FROM _ids)") \
                .to_arrow_table().to_pylist():
            evidence[e["event_id"]] = e
    for f in rows:
        f["evidence"] = sorted((evidence[i] for i in f["event_ids"] if i in evidence),
                               key=lambda e: (e["ts_ns"], e["event_id"]))
    counts = run.row_counts()
    lost = run.manifest.get("lost", {})
    sessions = run.manifest.get("sessions", [])
    first, last = con.execute("SELECT min(ts_ns), max(ts_ns) FROM event_labels").fetchone()
    qemu_versions = sorted({s.get("qemu_version") for s in sessions if s.get("qemu_version")})
    return {
        "run": str(run.path), "state": run.state, "host": run.manifest.get("host", {}),
        "schema_version": run.manifest.get("schema_version"), "qemu": qemu_versions,
        "first_ns": first, "last_ns": last,
        "duration_ns": (last - first) if first is not None else None,  # span of the trace
        "events": [{"family": k, "rows": v, "lost": lost.get(k, 0)} for k, v in counts.items()],
        "lost_other": {k: v for k, v in lost.items() if k not in counts},
        "sessions": [{"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                      "state": run.session_state(s),
                      "attached": s.get("attached", []), "missing": s.get("missing", []),
                      "files": s.get("files", []), "rows": s.get("rows", {})} for s in sessions],
        "detectors": statuses,
        "counts": {s: sum(1 for f in rows if f["severity"] == s) for s in SEVERITIES},
        "findings": rows,
    }


def write_report(run: Run, findings: pa.Table, statuses: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    con = connect(run)
    data = report_data(run, con, findings, statuses)
    for f in data["findings"]:
        f["timeline"] = timeline(f["evidence"], (f["ts_start_ns"], f["ts_end_ns"])) if f["evidence"] else None
    page = _env.get_template("report.html.j2").render(
        d=data, overview=overview(con, (data["first_ns"], data["last_ns"]), data["findings"]), severities=SEVERITIES,
        detector_ids=sorted({f["detector"] for f in data["findings"]}),
        duration=_duration(data["duration_ns"]) if data["duration_ns"] else "unknown")
    index = out / "index.html"
    index.write_text(page)
    write_findings_csv(findings, out / "findings.csv")
    _csv(out / "detectors.csv", [{"id": s["id"], "title": s["title"], "status": s["status"],
                                  "missing": "; ".join(s["missing"]), "findings": s["findings"],
                                  **{sev: s["by_severity"].get(sev, 0) for sev in SEVERITIES}}
                                 for s in data["detectors"]])
    _csv(out / "events.csv", data["events"])
    _csv(out / "sessions.csv", [{**s, "attached": " ".join(s["attached"]), "missing": " ".join(s["missing"]),
                                 "files": " ".join(s["files"]), "rows": json.dumps(s["rows"])}
                                for s in data["sessions"]])
    return index


def report_json(run: Run, findings: pa.Table, statuses: list[dict]) -> str:
    return json.dumps(report_data(run, connect(run), findings, statuses), indent=2)


def _csv(path: Path, rows: list[dict]) -> None:
    if rows:
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("")


def write_comparison(reports: list[tuple[Run, pa.Table, Path]], out: Path) -> Path:
    """A page comparing each run's findings with the first run's: new, gone, still there."""
    out.mkdir(parents=True, exist_ok=True)
    base_run, base_findings, base_page = reports[0]
    base = {comparison_key(f): f for f in base_findings.to_pylist()}
    rows = []
    for run, findings, page in reports[1:]:
        cur = {comparison_key(f): f for f in findings.to_pylist()}
        rows.append({"run": str(run.path), "page": str(page.resolve()),
                     "new": [cur[k] for k in cur if k not in base],
                     "gone": [base[k] for k in base if k not in cur],
                     "kept": [cur[k] for k in cur if k in base]})
    html = _env.get_template("compare.html.j2").render(base=str(base_run.path), base_page=str(base_page.resolve()),
                                                       rows=rows)
    index = out / "compare.html"
    index.write_text(html)
    return index
