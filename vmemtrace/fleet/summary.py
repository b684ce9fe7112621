"""Fleet-wide answers from the lake, in DuckDB: which builds and hosts have which findings, which
runs cannot be trusted, and which findings are new."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from vmemtrace.fleet import lake as lake_mod

# A finding is "the same" across runs when detector, kind, process name and guest-physical / device
# ranges match (host addresses and event ids change from run to run): the report's comparison key.
FINDING_KEY = "detector, kind, comm, gpa_start, gpa_end, iova_start, iova_end"

QUERIES = {
    "by_detector": """
        SELECT f.detector, f.severity, r.host, r.kernel, coalesce(r.qemu_version, 'unknown') AS qemu_version,
               r.date, count(*) AS findings, count(DISTINCT r.run) AS runs
        FROM findings f JOIN runs r USING (host, date, run)
        GROUP BY 1, 2, 3, 4, 5, 6
        ORDER BY list_position(['critical', 'high', 'medium', 'info'], any_value(f.severity)), 1, 3, 6
    """,
    "untrusted_runs": """
        SELECT host, date, run, status, state, lost_events, error
        FROM runs
        WHERE status <> 'ok' OR state <> 'clean' OR lost_events > 0
        ORDER BY date DESC, host, run
    """,
    "first_seen": f"""
        WITH keyed AS (
            SELECT f.*, r.start_ns, r.kernel, r.qemu_version,
                   row_number() OVER (PARTITION BY {FINDING_KEY}
                                      ORDER BY r.date, r.start_ns NULLS LAST, r.host, r.run) AS nth
            FROM findings f JOIN runs r USING (host, date, run)
        )
        SELECT detector, kind, severity, comm, host, date, run, kernel, qemu_version, message
        FROM keyed WHERE nth = 1
        ORDER BY date DESC, start_ns DESC NULLS LAST, host, run
        LIMIT 50
    """,
    "totals": """
        SELECT count(*) AS runs, count(*) FILTER (WHERE status <> 'ok') AS failed,
               coalesce(sum(findings), 0) AS findings, count(DISTINCT host) AS hosts,
               min(date) AS first_day, max(date) AS last_day
        FROM runs
    """,
}


def summary(lake: Path) -> dict[str, pa.Table]:
    con = lake_mod.connect(lake)
    return {name: con.sql(sql).to_arrow_table() for name, sql in QUERIES.items()}


def query(lake: Path, sql: str) -> pa.Table:
    """Any SQL over the lake's tables (runs, findings, detectors, event_counts)."""
    con = lake_mod.connect(lake)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise ValueError(str(e).splitlines()[0]) from None
