"""The `vmemtrace` command line.

Exit codes, for scripts:
  0  done; for `detect`, no finding at or above --fail-on
  1  `detect` found something at or above --fail-on (default: high)
  2  bad input or usage: the message names the file, line or field
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from pipeline import __version__
from pipeline.runstore import RunError, open_run
from pipeline.schema import SEVERITIES, severity_rank

app = typer.Typer(
    name="vmemtrace",
    help="Record what really happens to guest memory on a QEMU/KVM host and prove its bugs offline.\n\n"
         "Typical use: import (or collect) a run, then `vmemtrace detect RUN` and `vmemtrace report RUN`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
import_app = typer.Typer(help="Turn traces you already have into a run.", no_args_is_help=True)
app.add_typer(import_app, name="import")

out = Console(soft_wrap=True)
err = Console(stderr=True)

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2

RunArg = Annotated[Path, typer.Argument(help="Run directory (holds manifest.json).", show_default=False)]
RunOpt = Annotated[Path, typer.Option("--run", help="Run directory to create or append to.", show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Import the lines that parse; count the others "
                                          "as lost events.")]


def _counts(counts: dict[str, int]) -> str:
    """'family n, family n' for a summary line."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def fail(message: str) -> NoReturn:
    err.print(f"vmemtrace: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"vmemtrace {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    pass


@import_app.command("jsonl")
def import_jsonl_cmd(
    files: Annotated[list[Path], typer.Argument(help="JSON Lines trace files, one event per line.",
                                                show_default=False)],
    run: RunOpt,
) -> None:
    """Import JSON Lines events (one object per line, `kind` naming the family).

    The whole input is checked first: a bad line stops the import with its file,
    line number and field, and nothing is written.
    """
    from pipeline.importers import TraceFormatError
    from pipeline.importers.jsonl import import_jsonl

    try:
        counts = import_jsonl(files, run)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    out.print(f"imported {sum(counts.values())} events into {run} ({_counts(counts)})", markup=False,
              highlight=False)


@import_app.command("qemu-log")
def import_qemu_log_cmd(
    files: Annotated[list[Path], typer.Argument(help="QEMU trace logs (-msg timestamp=on -D FILE); "
                                                "gzip accepted.", show_default=False)],
    run: RunOpt,
    pid: Annotated[Optional[int], typer.Option(help="QEMU's process id [default: the process kernel-side "
                                               "events in the run put the log's threads in, else the "
                                               "smallest thread id in the log].", show_default=False)] = None,
    clock_offset: Annotated[Optional[int], typer.Option(help="Nanoseconds to subtract from the log's wall "
                                                        "clock to get CLOCK_MONOTONIC [default: aligned "
                                                        "on the run's memslot ioctls, else this host's "
                                                        "current offset].", show_default=False)] = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Import QEMU's own trace log (memslot updates, RAM discards, balloon, bitmap syncs).

    A malformed line stops the import with its file and line number unless --skip-bad;
    events vmemtrace does not use are counted, not errors.
    """
    from pipeline.importers import TraceFormatError
    from pipeline.importers.qemu_log import import_qemu_log

    try:
        res = import_qemu_log(files, run, pid=pid, clock_offset_ns=clock_offset, skip_bad=skip_bad)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    a = res["alignment"]
    rows = _counts(res["rows"])
    residual = "" if a.residual_ns is None else f", residual {a.residual_ns} ns over {a.matched} events"
    out.print(f"imported into {run}: {rows}; unknown events {sum(res['unknown'].values())}; bad lines "
              f"{res['bad']}; clock: {a.method}{residual}", markup=False, highlight=False)


@import_app.command("ftrace")
def import_ftrace_cmd(
    files: Annotated[list[Path], typer.Argument(help="tracefs trace / trace_pipe text or trace-cmd report "
                                                "output; gzip accepted.", show_default=False)],
    run: RunOpt,
    trace_clock: Annotated[str, typer.Option(help="The trace_clock the trace was recorded with; mono "
                                             "gives CLOCK_MONOTONIC times as they are.")] = "mono",
    clock_offset: Annotated[Optional[int], typer.Option(help="Nanoseconds to subtract from the trace's "
                                                        "times to get CLOCK_MONOTONIC.",
                                                        show_default=False)] = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Import ftrace text: discards, MMU notifier, KVM faults/MMIO/exits/SPTEs, iommu map/unmap.

    Record with options/record-tgid so that process ids are known (otherwise thread ids stand in).
    A malformed line stops the import with its file and line number unless --skip-bad.
    """
    from pipeline.importers.ftrace import import_ftrace
    from pipeline.importers import TraceFormatError

    try:
        res = import_ftrace(files, run, trace_clock=trace_clock, clock_offset_ns=clock_offset, skip_bad=skip_bad)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    rows = _counts(res["rows"])
    out.print(f"imported into {run}: {rows}; unknown events {sum(res['unknown'].values())}; bad lines "
              f"{res['bad']}; clock: {res['alignment']}"
              + ("" if res["tgid"] else "; no TGID column: process ids are thread ids"),
              markup=False, highlight=False)


@app.command(context_settings={"allow_interspersed_args": False})
def collect(
    command: Annotated[Optional[list[str]], typer.Argument(
        help="Workload to start and trace with its children; collection stops when it exits.",
        show_default=False)] = None,
    run: RunOpt = ...,
    pid: Annotated[Optional[list[int]], typer.Option("--pid", "-p", help="Trace this process and its "
                                                     "children (repeatable).")] = None,
    comm: Annotated[Optional[str], typer.Option("--comm", help="Trace processes whose name starts with "
                                                "this (e.g. qemu-system), running or started later.")] = None,
    families: Annotated[Optional[list[str]], typer.Option("--families", "-f", help="Only collectors "
                                                          "writing these tables (repeatable).")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", "-d", help="Stop after this many "
                                                      "seconds.")] = None,
    ring_pages: Annotated[int, typer.Option(help="Pages per BPF ring buffer (power of two).")] = 4096,
    qemu: Annotated[Optional[str], typer.Option("--qemu", help="QEMU binary whose exported functions get "
                                                "uprobes [default: /usr/bin/qemu-system-x86_64].",
                                                show_default=False)] = None,
    mount: Annotated[bool, typer.Option("--mount", help="Mount tracefs and bpffs if they are not.")] = False,
) -> None:
    """Trace real kernel events with eBPF (bcc) into a run. Needs root.

    `vmemtrace collect --run RUN -- CMD ARGS` traces CMD and its children until it exits, and exits
    with CMD's status. Without CMD, collect runs until --duration passes or SIGINT/SIGTERM; with no
    --pid or --comm it traces every process. Lost events are counted in the manifest and in the
    lost_events table. Exit 2 when the host cannot collect (the message says what to install).
    """
    from collectors.session import Collection, CollectError, preflight

    if not command and duration is None and not (pid or comm):
        fail("give a command after --, or --duration, or --pid/--comm (then stop it with Ctrl-C)")
    try:
        preflight(mount=mount)
        coll = Collection(run, families=families, pids=pid or [], comm=comm, ring_pages=ring_pages,
                          follow_command=bool(command), qemu_binary=qemu)
    except (CollectError, ValueError) as e:
        fail(str(e))

    with err.status("collecting") as status:
        def progress(stats) -> None:
            ev = " ".join(f"{k} {v}" for k, v in sorted(stats.events.items())) or "no events yet"
            lost = sum(stats.lost.values())
            status.update(f"collecting: {ev} | lost {lost}")

        try:
            rc = coll.run(command=command, duration=duration, progress=progress)
        except (CollectError, RunError, ValueError) as e:
            fail(str(e))
    err.print(f"collected into {run}: {_counts(coll.stats.events)}; lost: {_counts(coll.stats.lost)}",
              markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(rc)


def _open(run: Path):
    try:
        return open_run(run)
    except RunError as e:
        fail(str(e))


@app.command()
def info(run: RunArg,
         as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False) -> None:
    """Show a run: how it stopped, its sources, events per family and lost events."""
    r = _open(run)
    if as_json:
        print(json.dumps({**r.manifest, "state": r.state, "rows": r.row_counts()}, indent=2))
        return
    m = r.manifest
    out.print(f"run {r.path}  schema v{m['schema_version']}  host {m['host']['hostname']} "
              f"kernel {m['host']['kernel']}  stop: {r.state}", markup=False, highlight=False)
    t = Table("family", "rows", "lost")
    for fam, n in r.row_counts().items():
        t.add_row(fam, str(n), str(m.get("lost", {}).get(fam, 0)))
    out.print(t)
    for s in m["sessions"]:
        out.print(f"session {s['session']}: {s['source']} ({s['kind']}) {r.session_state(s)}",
                  markup=False, highlight=False)


def _detectors():
    from queries.runner import DetectorError, load_detectors

    try:
        return load_detectors()
    except DetectorError as e:
        fail(str(e))


@app.command()
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
    from queries.runner import DetectorError, run_detectors, save_findings

    detectors = _detectors()
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

    r = _open(run)
    try:
        with err.status("running detectors") as status:
            result = run_detectors(r, detectors, progress=lambda d: status.update(f"running {d.id} {d.title}"))
    except DetectorError as e:
        fail(str(e))
    save_findings(r, result)
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


@app.command()
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
    from queries.runner import FINDINGS_DIR, DetectorError, run_detectors, save_findings
    from reports.html import report_json, write_comparison, write_report

    if fmt not in ("html", "json"):
        fail(f"--format must be html or json, got {fmt!r}")
    if fmt == "json" and len(runs) > 1:
        fail("--format json takes one run")
    done = []
    for path in runs:
        r = _open(path)
        folder = r.path / FINDINGS_DIR
        if not (folder / "findings.parquet").exists():
            try:
                save_findings(r, run_detectors(r, _detectors()))
            except DetectorError as e:
                fail(str(e))
        findings = pq.read_table(folder / "findings.parquet")
        statuses = json.loads((folder / "detectors.json").read_text())
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


if __name__ == "__main__":
    app()
