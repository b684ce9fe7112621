"""`vmemtrace detect`: run the detectors over a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pipeline.schema import SEVERITIES, severity_rank
from vmemtrace.cli.common import EXIT_FINDINGS, err, fail, open_or_fail, out


def load_detectors_or_fail():
    from queries.runner import DetectorError, load_detectors

    try:
        return load_detectors()
    except DetectorError as e:
        fail(str(e))


def detect(
    run: Annotated[Optional[Path], typer.Argument(help="Run directory.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print findings as a JSON array (the stable "
                                          "contract documented in the README) instead of a table.")] = False,
    fail_on: Annotated[str, typer.Option(help="Exit 1 when a finding is at or above this severity: "
                                         "critical, high, medium, info, or none to always exit 0.")] = "high",
    only: Annotated[Optional[list[str]], typer.Option("--detector", "-D",
                                                      help="Run only this detector id (repeatable).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the detectors and exit.")] = False,
) -> None:
    """Run the detectors over a run; store findings in RUN/findings/ (Parquet and CSV).

    Prints a summary table, or JSON with --json. Exit 1 when anything at or above
    --fail-on was found, 0 otherwise, 2 on bad input.
    """
    from pipeline.findings_store import save_findings
    from queries.runner import DetectorError, run_detectors

    detectors = load_detectors_or_fail()
    if list_:
        if as_json:
            print(json.dumps([{"id": d.id, "title": d.title, "severities": list(d.severities),
                               "needs": [list(n) for n in d.needs], "proves": d.proves,
                               "file": d.path.name} for d in detectors], indent=2))
            return
        t = Table("id", "title", "severities", "needs", show_lines=False)
        for d in detectors:
            t.add_row(d.id, d.title, ", ".join(d.severities), "; ".join(" | ".join(n) for n in d.needs))
        out.print(t)
        return
    if run is None:
        fail("detect needs a RUN directory (or --list)")
    if fail_on != "none" and fail_on not in SEVERITIES:
        fail(f"--fail-on must be one of {', '.join(SEVERITIES)}, none; got {fail_on!r}")
    if only:
        unknown = set(only) - {d.id for d in detectors}
        if unknown:
            fail(f"unknown detector id(s) {', '.join(sorted(unknown))}; see `vmemtrace detect --list`")
        detectors = [d for d in detectors if d.id in only]

    r = open_or_fail(run)
    try:
        with err.status("running detectors") as status:
            result = run_detectors(r, detectors, progress=lambda d: status.update(f"running {d.id} {d.title}"))
    except DetectorError as e:
        fail(str(e))
    save_findings(r, result.findings, [vars(s) for s in result.statuses])
    findings = result.findings.to_pylist()

    if as_json:
        print(json.dumps(findings, indent=2))
    else:
        _print_summary(r, result, findings, detectors)

    if fail_on != "none" and any(severity_rank(f["severity"]) <= severity_rank(fail_on) for f in findings):
        raise typer.Exit(EXIT_FINDINGS)


def _print_summary(r, result, findings, detectors) -> None:
    if r.state != "clean":
        err.print(f"warning: run stopped {r.state}; events after the last chunk may be missing",
                  markup=False, highlight=False)
    needs = {d.id: "; ".join(" | ".join(n) for n in d.needs) or "-" for d in detectors}
    t = Table("detector", "needs", "status", "findings")
    for s in result.statuses:
        if s.status == "ran":
            sev = ", ".join(f"{n} {k}" for k, n in sorted(s.by_severity.items(), key=lambda kv: severity_rank(kv[0])))
            t.add_row(f"{s.id} {s.title}", needs[s.id], "ran", sev or "none")
        else:
            t.add_row(f"{s.id} {s.title}", needs[s.id], f"not run: missing {'; '.join(s.missing)}", "-")
    out.print(t)
    for f in findings:
        out.print(f"[{f['severity']}] {f['detector']} {f['finding_id']}: {f['message']}",
                  markup=False, highlight=False)
    lost = r.manifest.get("lost", {})
    if lost:
        out.print("lost events: " + ", ".join(f"{k} {v}" for k, v in lost.items()), markup=False)
    out.print(f"findings written to {r.path / 'findings'}", markup=False, highlight=False)
