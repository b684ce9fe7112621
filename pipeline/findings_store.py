"""Findings kept beside a run: RUN/findings/{findings.parquet, findings.csv, detectors.json}.

`vmemtrace detect` writes them; `report` and others read them back. The findings columns are
schema.FINDING_SCHEMA, the public contract.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.runstore import Run

FINDINGS_DIR = "findings"


def findings_dir(run: Run) -> Path:
    return run.path / FINDINGS_DIR


def has_findings(run: Run) -> bool:
    return (findings_dir(run) / "findings.parquet").exists()


def save_findings(run: Run, findings: pa.Table, statuses: list[dict[str, Any]]) -> Path:
    """Write findings.parquet, findings.csv and detectors.json into RUN/findings/ (replacing earlier ones)."""
    folder = findings_dir(run)
    folder.mkdir(exist_ok=True)
    tmp = folder / ".findings.parquet.tmp"
    pq.write_table(findings, tmp)
    os.replace(tmp, folder / "findings.parquet")
    write_findings_csv(findings, folder / "findings.csv")
    (folder / "detectors.json").write_text(json.dumps(statuses, indent=2) + "\n")
    return folder


def load_findings(run: Run) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The findings and detector statuses stored by the last `vmemtrace detect`."""
    folder = findings_dir(run)
    return pq.read_table(folder / "findings.parquet"), json.loads((folder / "detectors.json").read_text())


def write_findings_csv(findings: pa.Table, path: Path) -> None:
    """CSV copy: list columns joined with spaces, so every cell is a plain value."""
    flat = findings
    for name in ("event_ids", "related"):
        idx = flat.schema.get_field_index(name)
        joined = [" ".join(map(str, v)) for v in flat.column(name).to_pylist()]
        flat = flat.set_column(idx, name, pa.array(joined, pa.string()))
    pacsv.write_csv(flat, path)
