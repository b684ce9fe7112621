"""Findings kept beside a run: RUN/findings/{findings.parquet, findings.csv, detectors.json, state.json}.

`vmemtrace detect` writes them; `report` and others read them back. The findings columns are
schema.FINDING_SCHEMA, the public contract.

state.json records the run's fingerprint (Run.fingerprint: sessions and chunk files) the findings
were computed on. Findings of an earlier state are stale: has_findings() says False for them and
load_findings() raises StaleFindingsError, so nothing reuses them after a later import.

out_dir puts the findings elsewhere (a read-only run, an archived CI artifact): nothing is then
written into the run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.errors import RunLockedError, StaleFindingsError
from pipeline.runstore import DIR_MODE, Run, write_bytes, write_json, write_parquet

FINDINGS_DIR = "findings"
STATE = "state.json"
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_START = r"^[=+\-@\t\r]"


def findings_dir(run: Run, out_dir: str | os.PathLike | None = None) -> Path:
    return Path(out_dir) if out_dir is not None else run.path / FINDINGS_DIR


def _recorded_fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / STATE).read_text()).get("run_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def has_findings(run: Run, out_dir: str | os.PathLike | None = None) -> bool:
    """True when findings are stored and were computed on the run as it is now."""
    folder = findings_dir(run, out_dir)
    return (folder / "findings.parquet").exists() and _recorded_fingerprint(folder) == run.fingerprint()


def save_findings(run: Run, findings: pa.Table, statuses: list[dict[str, Any]], *,
                  out_dir: str | os.PathLike | None = None) -> Path:
    """Write findings.parquet, findings.csv, detectors.json and state.json (replacing earlier ones).

    Refused while another process writes the run (RunLockedError), and when the run changed after
    create_views gave the detectors its data (StaleFindingsError): findings are only ever stored
    for the state they were computed on.
    """
    holder = run.writer_pid()
    if holder is not None and holder != os.getpid():
        raise RunLockedError(run.path, holder)
    now = run.fingerprint()
    if run.viewed_fingerprint is not None and run.viewed_fingerprint != now:
        raise StaleFindingsError(f"{run.path}: the run changed while the detectors ran; findings not "
                                 "stored (run detect again)")
    folder = findings_dir(run, out_dir)
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    write_parquet(folder / "findings.parquet", findings)
    write_findings_csv(findings, folder / "findings.csv")
    write_bytes(folder / "detectors.json", (json.dumps(statuses, indent=2) + "\n").encode())
    write_json(folder / STATE, {"run_fingerprint": now, "run": str(run.path)})
    return folder


def load_findings(run: Run, out_dir: str | os.PathLike | None = None) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The findings and detector statuses stored by the last `vmemtrace detect`.

    Raises StaleFindingsError when the run changed since (or the findings record no run state).
    """
    import pyarrow.parquet as pq

    folder = findings_dir(run, out_dir)
    recorded = _recorded_fingerprint(folder)
    if recorded != run.fingerprint():
        why = "record no run state" if recorded is None else "were computed before the run last changed"
        raise StaleFindingsError(f"{folder}: the stored findings {why}; run `vmemtrace detect` again")
    return pq.read_table(folder / "findings.parquet"), json.loads((folder / "detectors.json").read_text())


def neutralise_formulas(table: pa.Table) -> pa.Table:
    """Every text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a ' prefix."""
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            col = table.column(i)
            risky = pc.fill_null(pc.match_substring_regex(col, _FORMULA_START), False)
            table = table.set_column(i, f.name, pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col))
    return table


def write_findings_csv(findings: pa.Table, path: Path) -> None:
    """CSV copy: list columns joined with spaces, so every cell is a plain value; formulas neutralised."""
    flat = findings
    for name in ("event_ids", "related"):
        idx = flat.schema.get_field_index(name)
        as_text = flat.column(name).cast(pa.list_(pa.string()))
        flat = flat.set_column(idx, name, pc.binary_join(as_text, " "))
    buf = io.BytesIO()
    pacsv.write_csv(neutralise_formulas(flat), buf)
    write_bytes(Path(path), buf.getvalue())
