"""`vmemtrace report`: the HTML page, CSV and JSON of a run's findings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vmemtrace.cli.common import fail, open_or_fail
from vmemtrace.cli.detect import load_detectors_or_fail


def findings_or_detect(r):
    """The findings of the last `vmemtrace detect` on run `r`, running the detectors first if there
    are none for the run as it is now."""
    from pipeline.findings_store import has_findings, load_findings, save_findings
    from queries.runner import DetectorError, run_detectors

    if not has_findings(r):
        try:
            result = run_detectors(r, load_detectors_or_fail())
        except DetectorError as e:
            fail(str(e))
        save_findings(r, result.findings, [vars(s) for s in result.statuses])
    return load_findings(r)


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories; with several, the later ones are "
                                               "compared with the first.", show_default=False)],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the report [default: "
                                                    "RUN/report; with several runs, RUN/report for each and "
                                                    "the comparison in the first run's].",
                                                    show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="html (the page and CSV files) or json (the same "
                                     "data on stdout).")] = "html",
) -> None:
    """Write a self-contained HTML report (summary, findings, timelines) and CSV; print the page's path.

    Uses the findings of the last `vmemtrace detect`, running the detectors first if there are
    none. With several runs, also writes compare.html: which findings are new, gone, still there.
    """
    from reports.html import report_json, write_comparison, write_report

    if fmt not in ("html", "json"):
        fail(f"--format must be html or json, got {fmt!r}")
    if fmt == "json" and len(runs) > 1:
        fail("--format json takes one run")
    done = []
    for path in runs:
        r = open_or_fail(path)
        findings, statuses = findings_or_detect(r)
        if fmt == "json":
            print(report_json(r, findings, statuses))
            return
        target = out_dir / r.path.name if out_dir and len(runs) > 1 else out_dir or r.path / "report"
        done.append((r, findings, write_report(r, findings, statuses, target)))
    if len(done) == 1:
        print(done[0][2])
        return
    for _, _, page in done:
        print(page)
    print(write_comparison(done, out_dir or done[0][2].parent))
