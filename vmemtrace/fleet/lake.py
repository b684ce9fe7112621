"""The findings lake: what `vmemtrace fleet detect` writes, one Hive partition per run.

    LAKE/host=HOST/date=YYYY-MM-DD/run=RUN/runs.parquet          one row: the run and how detection went
    LAKE/host=HOST/date=YYYY-MM-DD/run=RUN/findings.parquet      the findings (schema.FINDING_SCHEMA)
    LAKE/host=HOST/date=YYYY-MM-DD/run=RUN/detectors.parquet     one row per detector: status, counts
    LAKE/host=HOST/date=YYYY-MM-DD/run=RUN/event_counts.parquet  one row per family: rows, lost

HOST is the traced host (the manifest's, or an import's `traced.host`), DATE the UTC day the run
started, RUN the run directory's name. The partition columns are not stored in the files: any
Hive-aware reader (DuckDB `read_parquet(..., hive_partitioning = true)`, Spark, Trino, pyarrow
datasets) adds them. A partition is replaced whole (written beside, then renamed over), so
re-running a run replaces it and a reader never sees half of one.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runstore import duckdb_literal_path
from pipeline.schema import FINDING_SCHEMA

TABLES = ("runs", "findings", "detectors", "event_counts")

RUNS_SCHEMA = pa.schema([
    ("source", pa.string()),             # where the run was read from (path or URL)
    ("status", pa.string()),             # ok, or failed (then `error` says why)
    ("error", pa.string()),
    ("hostname", pa.string()),           # the traced host as the manifest names it
    ("kernel", pa.string()),
    ("qemu_version", pa.string()),
    ("state", pa.string()),              # clean, unclean or running (the run store's word)
    ("sessions", pa.int32()),
    ("start_ns", pa.int64()),            # wall clock (ns since the epoch) the run started
    ("events", pa.int64()),
    ("lost_events", pa.int64()),
    ("findings", pa.int64()),
    ("worst_severity", pa.string()),
    ("detect_seconds", pa.float64()),
])

DETECTORS_SCHEMA = pa.schema([
    ("detector", pa.string()), ("title", pa.string()), ("status", pa.string()),
    ("missing", pa.list_(pa.string())), ("findings", pa.int64()),
    ("critical", pa.int64()), ("high", pa.int64()), ("medium", pa.int64()), ("info", pa.int64()),
    ("seconds", pa.float64()),
])

EVENT_COUNTS_SCHEMA = pa.schema([("family", pa.string()), ("rows", pa.int64()), ("lost", pa.int64())])

SCHEMAS = {"runs": RUNS_SCHEMA, "findings": FINDING_SCHEMA, "detectors": DETECTORS_SCHEMA,
           "event_counts": EVENT_COUNTS_SCHEMA}


def partition_value(text: str) -> str:
    """A value safe as one Hive path segment: no '/', '=', control characters or leading dots."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", text or "unknown").lstrip(".")
    return cleaned or "unknown"


def partition_dir(lake: Path, host: str, date: str, run: str) -> Path:
    return lake / f"host={partition_value(host)}" / f"date={partition_value(date)}" / f"run={partition_value(run)}"


def write_partition(lake: Path, host: str, date: str, run: str, tables: dict[str, pa.Table]) -> Path:
    """Replace one run's partition with `tables` (every name in TABLES), atomically per partition."""
    final = partition_dir(lake, host, date, run)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for name in TABLES:
            pq.write_table(tables[name].cast(SCHEMAS[name]), staging / f"{name}.parquet")
        old = final.parent / f".old-{uuid.uuid4().hex}"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def connect(lake: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB with one view per lake table, each carrying the host, date and run partition columns."""
    con = duckdb.connect()
    for name in TABLES:
        # Listed files, not a glob over the lake path: a lake path with glob characters stays literal.
        files = sorted(lake.glob(f"host=*/date=*/run=*/{name}.parquet"))
        if files:
            listing = ", ".join(duckdb_literal_path(f) for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], "
                        f"hive_partitioning = true, hive_types_autocast = false, union_by_name = true)")
        else:
            empty = SCHEMAS[name].append(pa.field("host", pa.string())).append(
                pa.field("date", pa.string())).append(pa.field("run", pa.string())).empty_table()
            con.register(f"_empty_{name}", empty)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
    return con
