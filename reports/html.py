"""Reports of a run's findings: one self-contained HTML page (inline CSS, SVG and a few lines of
script; nothing fetched), CSV and Parquet files for machines, the same data as JSON, and a
comparison page for several runs.

    RUN/report/index.html         verdict, overview, findings (filterable), cards with pictures
    RUN/report/findings.parquet   every finding (the page shows at most MAX_CARDS cards and
    RUN/report/findings.csv       MAX_TABLE_ROWS table rows, worst first, and says what it left out)
    RUN/report/detectors.csv      ran / not applicable / error, what was missing, findings per severity
    RUN/report/events.csv         events and lost events per family
    RUN/report/processes.csv      per traced process: events, MiB discarded, mappings, memslot changes
    RUN/report/sessions.csv       collectors and importers that wrote the run

The page's size is bounded whatever the run: the overview is binned in DuckDB, and findings,
their evidence and their pictures are capped (the caps below), so it stays well under 20 MB.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.findings_store import findings_dir, has_findings, neutralise_formulas, write_findings_csv
from pipeline.runstore import DIR_MODE, Run, write_bytes, write_parquet
from pipeline.schema import SEVERITIES
from queries.runner import connect
from reports import SQL_MODULES
from reports.baseline import comparison_key
from reports.address_space import pictures
from reports.overview import finding_density, overview, process_summary
from reports.timeline import duration, mapping_lifetimes, memslot_gaps, timeline
from reports.verdict import verdict

MAX_CARDS = 100          # finding cards with pictures and evidence
MAX_TABLE_ROWS = 2000    # rows of the findings table
MAX_EVIDENCE = 40        # evidence events listed and drawn per card
MAX_PROCESSES = 50       # rows of the per-process summary

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("reports", "templates"),
    autoescape=True,  # comm and file names come from whoever ran the traced program
    undefined=jinja2.StrictUndefined,
)
_env.filters["hex"] = lambda v: "" if v is None else f"0x{v:x}"
_env.filters["range"] = lambda pair: "" if pair[0] is None else f"0x{pair[0]:x}-0x{pair[1]:x}"
_env.filters["duration"] = lambda ns: "unknown" if ns is None else duration(ns)

_ORDER = "CASE severity " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SEVERITIES)) + " END"


def _shown_findings(con) -> tuple[list[dict], list[dict]]:
    """The table rows (worst first, then by time) and the cards (the first MAX_CARDS of them,
    with their evidence events: the DMA/memslot ones and the first and last by time, up to
    MAX_EVIDENCE), from the findings registered as _findings."""
    table = con.sql(f"""
        SELECT * EXCLUDE (event_ids, related), len(event_ids) AS n_events, len(related) AS n_related
        FROM _findings ORDER BY {_ORDER}, ts_start_ns NULLS LAST, finding_id LIMIT {MAX_TABLE_ROWS}
    """).to_arrow_table().to_pylist()
    cards = [dict(r) for r in table[:MAX_CARDS]]
    if not cards:
        return table, cards
    ids = [c["finding_id"] for c in cards]
    evidence = con.sql(f"""
        WITH ev AS (
            SELECT f.finding_id, unnest(f.event_ids) AS event_id FROM _findings f
            WHERE f.finding_id IN (SELECT unnest(?::VARCHAR[]))
        ), labelled AS (
            SELECT ev.finding_id, l.*,
                   row_number() OVER (PARTITION BY ev.finding_id ORDER BY l.ts_ns, l.event_id) AS first_rank,
                   row_number() OVER (PARTITION BY ev.finding_id ORDER BY l.ts_ns DESC, l.event_id DESC) AS last_rank,
                   row_number() OVER (PARTITION BY ev.finding_id, l.lane IN ('dma', 'memslot')
                                      ORDER BY l.ts_ns, l.event_id) AS lane_rank
            FROM ev JOIN event_labels l USING (event_id)
        )
        SELECT * EXCLUDE (first_rank, last_rank, lane_rank) FROM labelled
        WHERE first_rank <= {MAX_EVIDENCE // 2} OR last_rank <= {MAX_EVIDENCE // 4}
           OR (lane IN ('dma', 'memslot') AND lane_rank <= {MAX_EVIDENCE // 4})
        ORDER BY finding_id, ts_ns, event_id
    """, params=[ids]).to_arrow_table().to_pylist()
    related = dict(con.execute("SELECT finding_id, related[1:20] FROM _findings WHERE finding_id IN "
                               "(SELECT unnest(?::VARCHAR[]))", [ids]).fetchall())
    by_id: dict[str, list[dict]] = {}
    for e in evidence:
        by_id.setdefault(e.pop("finding_id"), []).append(e)
    for c in cards:
        c["evidence"] = by_id.get(c["finding_id"], [])
        c["related"] = related.get(c["finding_id"]) or []
    return table, cards


def _span(con, families: set[str]) -> tuple[int | None, int | None]:
    if not families:
        return None, None
    return con.execute("SELECT min(a), max(b) FROM (" + " UNION ALL ".join(
        f"SELECT min(ts_ns) AS a, max(ts_ns) AS b FROM {f}" for f in sorted(families)) + ")").fetchone()


def report_data(run: Run, con, findings: pa.Table, statuses: list[dict]) -> dict[str, Any]:
    """Everything the page shows, as plain data (also what --format json prints); `con` is the
    run's DuckDB connection (queries.runner.connect)."""
    con.register("_findings", findings)
    counts = dict(con.execute("SELECT severity, count(*) FROM _findings GROUP BY ALL").fetchall())
    counts = {s: counts.get(s, 0) for s in SEVERITIES}
    table, cards = _shown_findings(con)
    rows = run.row_counts()
    families = {f for f, n in rows.items() if n}
    first, last = _span(con, families)
    lost = run.manifest.get("lost", {})
    sessions = run.manifest.get("sessions", [])
    processes = process_summary(con, families)
    return {
        "run": str(run.path), "state": run.state, "host": run.manifest.get("host", {}),
        "schema_version": run.manifest.get("schema_version"),
        "first_ns": first, "last_ns": last,
        "duration_ns": (last - first) if first is not None else None,  # span of the trace
        "verdict": verdict(run.manifest, statuses, counts),
        "processes": processes[:MAX_PROCESSES], "processes_left_out": max(len(processes) - MAX_PROCESSES, 0),
        "events": [{"family": k, "rows": v, "lost": lost.get(k, 0)} for k, v in rows.items()],
        "lost_other": {k: v for k, v in lost.items() if k not in rows},
        "sessions": [{"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                      "state": run.session_state(s),
                      "attached": s.get("attached", []), "missing": s.get("missing", []),
                      "files": s.get("files", []), "rows": s.get("rows", {})} for s in sessions],
        "detectors": statuses,
        "counts": counts,
        "total_findings": findings.num_rows,
        "table": table,
        "findings": cards,
        "left_out": {"table_rows": findings.num_rows - len(table), "cards": findings.num_rows - len(cards),
                     "evidence": sum(max(c["n_events"] - len(c["evidence"]), 0) for c in cards)},
        "caps": {"cards": MAX_CARDS, "table_rows": MAX_TABLE_ROWS, "evidence": MAX_EVIDENCE},
    }


def _full_findings(run: Run, findings: pa.Table, out: Path) -> None:
    """findings.parquet and findings.csv beside the page: hard links to detect's copies when they
    hold these findings (no second copy of a 1 GB CSV), else written here."""
    stored = findings_dir(run)
    same = has_findings(run) and pq.read_metadata(stored / "findings.parquet").num_rows == findings.num_rows
    for name, write in (("findings.parquet", write_parquet),
                        ("findings.csv", lambda path, table: write_findings_csv(table, path))):
        target = out / name
        target.unlink(missing_ok=True)
        try:
            if not same:
                raise FileNotFoundError(name)
            os.link(stored / name, target)
        except OSError:
            write(target, findings)


def write_report(run: Run, findings: pa.Table, statuses: list[dict], out: Path) -> Path:
    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    con = connect(run, include=SQL_MODULES)
    data = report_data(run, con, findings, statuses)
    lifetimes = mapping_lifetimes(con, [e["event_id"] for f in data["findings"] for e in f["evidence"]
                                        if e["lane"] == "dma"])
    gaps = memslot_gaps(con, [e["event_id"] for f in data["findings"] for e in f["evidence"]
                              if e["what"] == "memslot_delete"])
    for f in data["findings"]:
        f["timeline"] = (timeline(f["evidence"], (f["ts_start_ns"], f["ts_end_ns"]), lifetimes, gaps)
                         if f["evidence"] else None)
    addr = pictures(con, data["findings"])
    for f in data["findings"]:
        f["address"] = addr.get(f["finding_id"])
    families = {e["family"] for e in data["events"] if e["rows"]}
    marks = [{"ts": f["ts_start_ns"], "id": f["finding_id"], "severity": f["severity"],
              "title": f"{f['detector']} {f['kind']}: {f['message']}"} for f in data["findings"]
             if f["ts_start_ns"] is not None]
    ov = overview(con, families, (data["first_ns"], data["last_ns"]),
                  finding_density(con, "_findings", data["first_ns"], data["last_ns"]), marks)
    page = _env.get_template("report.html.j2").render(
        d=data, v=data["verdict"], overview=ov, severities=SEVERITIES,
        detector_ids=sorted({f["detector"] for f in data["table"]}))
    index = out / "index.html"
    write_bytes(index, page.encode())
    _full_findings(run, findings, out)
    _csv(out / "detectors.csv", [{"id": s["id"], "title": s["title"], "status": s["status"],
                                  "judgement": s["judgement"][1], "missing": "; ".join(s["missing"]),
                                  "findings": s["findings"],
                                  **{sev: s["by_severity"].get(sev, 0) for sev in SEVERITIES}}
                                 for s in data["verdict"]["detectors"]])
    _csv(out / "events.csv", data["events"])
    _csv(out / "processes.csv", data["processes"])
    _csv(out / "sessions.csv", [{**s, "attached": " ".join(s["attached"]), "missing": " ".join(s["missing"]),
                                 "files": " ".join(s["files"]), "rows": json.dumps(s["rows"])}
                                for s in data["sessions"]])
    return index


def report_json(run: Run, findings: pa.Table, statuses: list[dict]) -> str:
    return json.dumps(report_data(run, connect(run, include=SQL_MODULES), findings, statuses), indent=2)


def _csv(path: Path, rows: list[dict]) -> None:
    if rows:
        buf = io.BytesIO()
        pacsv.write_csv(neutralise_formulas(pa.Table.from_pylist(rows)), buf)
        write_bytes(path, buf.getvalue())
    else:
        write_bytes(path, b"")


def write_comparison(reports: list[tuple[Run, pa.Table, Path]], out: Path) -> Path:
    """A page comparing each run's findings with the first run's: new, gone, still there."""
    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
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
    write_bytes(index, html.encode())
    return index
