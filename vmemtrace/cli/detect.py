"""`vmemtrace detect`: run the detectors over a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pipeline.schema import SEVERITIES, severity_rank
from vmemtrace.cli.common import EXIT_FINDINGS, cell, fail, open_or_fail, out, progress, say

FORMATS = ("table", "json", "junit")


def load_detectors_or_fail():
    from queries.runner import DetectorError, load_detectors

    try:
        return load_detectors()
    except DetectorError as e:
        fail(str(e))


def needs_text(d) -> str:
    return "; ".join(" | ".join(n) for n in d.needs) or "-"


def status_text(s: dict) -> str:
    """A detector's status for people: lacking input is 'not applicable', not an error."""
    if s["status"] == "not run":
        return f"n/a: no {'; '.join(s['missing'])} events"
    if s["status"] == "error":
        return f"error: {s.get('error')}"
    return "ran: no relevant events" if s.get("outcome") == "no relevant events" else "ran"


def detect(
    run: Annotated[Optional[Path], typer.Argument(help="Run directory.", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="table (for people), json (the stable findings "
                                     "contract documented in the README) or junit (JUnit XML for CI: one "
                                     "test case per detector).")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    fail_on: Annotated[str, typer.Option(help="Exit 1 when a finding is at or above this severity: "
                                         "critical, high, medium, info, or none to always exit 0.")] = "high",
    baseline: Annotated[Optional[Path], typer.Option(help="A previous `detect --json` output: findings "
                                                     "in it (same detector, kind, process name and "
                                                     "guest/device ranges) are reported as known and "
                                                     "do not fail.", show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the stored findings, for a "
                                                    "run that is read-only (an archived CI artifact) "
                                                    "[default: RUN/findings].", show_default=False)] = None,
    only: Annotated[Optional[list[str]], typer.Option("--detector", "-D",
                                                      help="Run only this detector id (repeatable).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the detectors and exit.")] = False,
) -> None:
    """Run the detectors over a run; store findings in RUN/findings/ or --out (Parquet and CSV).

    Prints a summary table, JSON (--json) or JUnit XML (--format junit). Exit 1 when a finding
    not in --baseline is at or above --fail-on, 0 otherwise, 2 on bad input.
    """
    from pipeline.findings_store import save_findings
    from queries.runner import DetectorError, run_detectors
    from reports.baseline import BaselineError, known_flags, load_baseline

    if as_json:
        fmt = "json"
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    detectors = load_detectors_or_fail()
    if list_:
        _print_list(detectors, fmt)
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
    try:
        known_keys = load_baseline(baseline) if baseline else set()
    except BaselineError as e:
        fail(str(e))

    r = open_or_fail(run)
    try:
        # Detectors lacking input are skipped without a callback, so the total is left open.
        with progress("running detectors") as advance:
            result = run_detectors(r, detectors, progress=lambda d: advance(description=f"running {d.id} {d.title}"))
    except DetectorError as e:
        fail(str(e))
    statuses = [vars(s) for s in result.statuses]
    save_findings(r, result.findings, statuses, out_dir=out_dir)
    findings = result.findings.to_pylist()
    known = known_flags(findings, known_keys)

    if fmt == "json":
        if baseline:
            findings = [{**f, "known": k} for f, k in zip(findings, known)]
        print(json.dumps(findings, indent=2))
    elif fmt == "junit":
        from reports.junit import junit_xml

        print(junit_xml(r.path.name, statuses, findings, known, None if fail_on == "none" else fail_on), end="")
    else:
        _print_summary(r, statuses, findings, known, detectors, out_dir)

    if fail_on != "none" and any(not k and severity_rank(f["severity"]) <= severity_rank(fail_on)
                                 for f, k in zip(findings, known)):
        raise typer.Exit(EXIT_FINDINGS)


def _print_list(detectors, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([{"id": d.id, "title": d.title, "severities": list(d.severities),
                           "needs": [list(n) for n in d.needs], "proves": d.proves,
                           "file": d.path.name} for d in detectors], indent=2))
        return
    t = Table("id", "title", "severities", "needs", show_lines=False)
    for d in detectors:
        t.add_row(d.id, d.title, ", ".join(d.severities), needs_text(d))
    out.print(t)


def _print_summary(r, statuses, findings, known, detectors, out_dir) -> None:
    if r.state != "clean":
        say(f"warning: run stopped {r.state}; events after the last chunk may be missing", to_err=True)
    needs = {d.id: needs_text(d) for d in detectors}
    t = Table("detector", "needs", "status", "findings")
    for s in statuses:
        sev = ", ".join(f"{n} {k}" for k, n in sorted(s["by_severity"].items(), key=lambda kv: severity_rank(kv[0])))
        t.add_row(cell(f"{s['id']} {s['title']}"), cell(needs[s["id"]]), cell(status_text(s)),
                  cell((sev or "none") if s["status"] == "ran" else "-"))
    out.print(t)
    for f, k in zip(findings, known):
        say(f"[{f['severity']}] {f['detector']} {f['finding_id']}{' (known)' if k else ''}: {f['message']}")
    lost = r.manifest.get("lost", {})
    if lost:
        say("lost events: " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    from pipeline.findings_store import findings_dir

    say(f"findings written to {findings_dir(r, out_dir)}")
