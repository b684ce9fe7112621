"""Runs the detectors of this folder over a run in embedded DuckDB.

A detector is one `*.sql` file here: a header of `-- key: value` lines (id,
title, severities, needs, proves; an indented `--   ` line continues the key
above it) and one SELECT returning the finding columns below. Files in views/
define the shared building blocks (memslot timeline, DMA mapping lifetimes)
and are loaded first, in name order. Adding a detector is adding a file.

`needs` lists the tables a detector cannot work without, `;` between
requirements and `|` between alternatives: `dma; discards | mmu_notifier`.
A detector whose needs are not met is reported as not run, never as clean.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.runstore import Run
from pipeline.schema import FAMILIES, FINDING_SCHEMA, SEVERITIES

QUERIES_DIR = Path(__file__).parent
VIEWS_DIR = QUERIES_DIR / "views"

# What a detector's SELECT returns; the runner adds detector, finding_id and related.
DETECTOR_COLUMNS = ("kind", "severity", "pid", "comm", "ts_start_ns", "ts_end_ns",
                    "gpa_start", "gpa_end", "hva_start", "hva_end", "iova_start", "iova_end",
                    "event_ids", "message")
HEADER_KEYS = ("id", "title", "severities", "needs", "proves")


class DetectorError(Exception):
    """A detector file that cannot be loaded or run; the message names the file."""


@dataclass(frozen=True)
class Detector:
    id: str
    title: str
    severities: tuple[str, ...]
    needs: tuple[tuple[str, ...], ...]
    proves: str
    path: Path
    sql: str

    def missing(self, rows: dict[str, int]) -> list[str]:
        """Requirements not met by a run with these row counts, e.g. ['dma', 'discards | mmu_notifier']."""
        return [" | ".join(alts) for alts in self.needs if not any(rows.get(t, 0) for t in alts)]


def parse_detector(path: Path) -> Detector:
    text = path.read_text()
    header: dict[str, str] = {}
    key = None
    body_start = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"--\s?(\w+):\s*(.*)$", line)
        if m and m.group(1) in HEADER_KEYS:
            key = m.group(1)
            header[key] = m.group(2).strip()
        elif line.startswith("--   ") and key:
            header[key] += " " + line[2:].strip()
        else:
            body_start = i
            break
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise DetectorError(f"{path}: header lacks {', '.join(missing)}")
    severities = tuple(s.strip() for s in header["severities"].split(","))
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise DetectorError(f"{path}: header 'severities' names unknown {', '.join(bad)}")
    tables = {f.name for f in FAMILIES}
    needs = tuple(tuple(t.strip() for t in req.split("|")) for req in header["needs"].split(";") if req.strip())
    # An empty `needs:` is a detector about the run itself: it always runs.
    unknown = [t for req in needs for t in req if t not in tables]
    if unknown:
        raise DetectorError(f"{path}: header 'needs' names unknown table(s) {', '.join(unknown)}")
    sql = "\n".join(lines[body_start:]).strip().rstrip(";")
    return Detector(header["id"], header["title"], severities, needs, header["proves"], path, sql)


def load_detectors(folder: Path = QUERIES_DIR) -> list[Detector]:
    detectors = [parse_detector(p) for p in sorted(folder.glob("*.sql"))]
    ids = [d.id for d in detectors]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise DetectorError(f"{folder}: detector id(s) used twice: {', '.join(sorted(dup))}")
    return sorted(detectors, key=lambda d: (len(d.id), d.id))


def connect(run: Run) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per event family over the run's Parquet, plus views/."""
    con = duckdb.connect()
    run.create_views(con)
    con.register("_sessions", sessions_table(run))
    con.execute("CREATE VIEW sessions AS SELECT * FROM _sessions")
    for view in sorted(VIEWS_DIR.glob("*.sql")):
        try:
            con.execute(view.read_text())
        except duckdb.Error as e:
            raise DetectorError(f"{view}: {e}") from e
    return con


def sessions_table(run: Run) -> pa.Table:
    """The manifest's sessions as a table, for detectors that judge the run itself."""
    rows = []
    for s in run.manifest.get("sessions", []):
        state = run.session_state(s)
        clock = s.get("clock") if isinstance(s.get("clock"), dict) else {}
        rows.append({"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                     "state": state, "missing": s.get("missing", []),
                     "start_ns": s.get("monotonic_start_ns"), "end_ns": s.get("monotonic_end_ns"),
                     "clock_alignment": clock.get("alignment"), "clock_residual_ns": clock.get("residual_ns"),
                     "clock_matched": clock.get("matched_events")})
    return pa.Table.from_pylist(rows, schema=SESSIONS_SCHEMA)


SESSIONS_SCHEMA = pa.schema([
    ("session", pa.int32()), ("source", pa.string()), ("kind", pa.string()), ("state", pa.string()),
    ("missing", pa.list_(pa.string())), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
    ("clock_alignment", pa.string()), ("clock_residual_ns", pa.int64()), ("clock_matched", pa.int64()),
])


@dataclass
class DetectorStatus:
    id: str
    title: str
    status: str                 # "ran", "not run" or "error"
    missing: list[str] = field(default_factory=list)
    error: str | None = None
    findings: int = 0
    by_severity: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DetectResult:
    findings: pa.Table
    statuses: list[DetectorStatus]


def _run_one(con: duckdb.DuckDBPyConnection, det: Detector) -> pa.Table:
    cols = ", ".join(DETECTOR_COLUMNS)
    # The digest covers the evidence and the ranges, so re-running on the same run gives the same ids.
    sql = f"""
        SELECT '{det.id}-' || substr(md5(concat_ws('|', kind, list_sort(event_ids)::VARCHAR,
                   gpa_start, hva_start, iova_start)), 1, 12) AS finding_id,
               '{det.id}' AS detector, {cols}
        FROM ({det.sql}) AS detector_output
    """
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise DetectorError(f"{det.path}: {e}") from e


def _link_related(con: duckdb.DuckDBPyConnection, findings: pa.Table) -> pa.Table:
    """Fill `related`: the other findings that share at least one evidence event."""
    con.register("_findings", findings)
    related = con.sql("""
        WITH ev AS (SELECT finding_id, unnest(event_ids) AS event_id FROM _findings)
        SELECT a.finding_id, list(DISTINCT b.finding_id ORDER BY b.finding_id) AS related
        FROM ev a JOIN ev b ON a.event_id = b.event_id AND a.finding_id <> b.finding_id
        GROUP BY a.finding_id
    """).to_arrow_table().to_pylist()
    con.unregister("_findings")
    by_id = {r["finding_id"]: r["related"] for r in related}
    column = pa.array([by_id.get(f, []) for f in findings.column("finding_id").to_pylist()],
                      pa.list_(pa.string()))
    return findings.append_column("related", column)


def run_detectors(run: Run, detectors: list[Detector] | None = None,
                  progress: Callable[[Detector], None] | None = None) -> DetectResult:
    detectors = load_detectors() if detectors is None else detectors
    con = connect(run)
    rows = run.row_counts()
    tables, statuses = [], []
    for det in detectors:
        st = DetectorStatus(det.id, det.title, "ran")
        statuses.append(st)
        st.missing = det.missing(rows)
        if st.missing:
            st.status = "not run"
            continue
        if progress:
            progress(det)
        t0 = time.perf_counter()
        out = _run_one(con, det)
        st.seconds = time.perf_counter() - t0
        if out.column("event_ids").null_count or out.column("message").null_count:
            raise DetectorError(f"{det.path}: returned a finding without event_ids or message")
        bad = set(out.column("severity").to_pylist()) - set(det.severities)
        if bad:
            raise DetectorError(f"{det.path}: emitted severity {', '.join(sorted(map(str, bad)))} "
                                f"not declared in its header ({', '.join(det.severities)})")
        st.findings = out.num_rows
        for sev in out.column("severity").to_pylist():
            st.by_severity[sev] = st.by_severity.get(sev, 0) + 1
        tables.append(out)

    base = FINDING_SCHEMA.remove(FINDING_SCHEMA.get_field_index("related"))
    findings = (pa.concat_tables([t.select(base.names).cast(base) for t in tables])
                if tables else base.empty_table())
    findings = _link_related(con, findings).select(FINDING_SCHEMA.names).cast(FINDING_SCHEMA)
    rank = pc.index_in(findings.column("severity"), value_set=pa.array(SEVERITIES))
    findings = (findings.append_column("_rank", rank)
                .sort_by([("_rank", "ascending"), ("detector", "ascending"),
                          ("ts_start_ns", "ascending"), ("finding_id", "ascending")])
                .drop_columns(["_rank"]))
    return DetectResult(findings, statuses)
