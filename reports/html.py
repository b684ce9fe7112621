"""Writes RUN/report/: index.html (self-contained: inline CSS, no network) and findings.csv."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pyarrow as pa

from pipeline.runstore import Run
from pipeline.schema import SEVERITIES
from queries.runner import write_findings_csv

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("reports", "templates"),
    autoescape=True,  # comm and file names come from whoever ran the traced program
    undefined=jinja2.StrictUndefined,
)
_env.filters["hex"] = lambda v: "" if v is None else f"0x{v:x}"
_env.filters["range"] = lambda pair: "" if pair[0] is None else f"0x{pair[0]:x}-0x{pair[1]:x}"


def write_report(run: Run, findings: pa.Table, statuses: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = findings.to_pylist()
    counts = {s: sum(1 for f in rows if f["severity"] == s) for s in SEVERITIES}
    page = _env.get_template("report.html.j2").render(
        run=run, manifest=run.manifest, state=run.state, row_counts=run.row_counts(),
        findings=rows, counts=counts, statuses=statuses)
    index = out / "index.html"
    index.write_text(page)
    write_findings_csv(findings, out / "findings.csv")
    return index
