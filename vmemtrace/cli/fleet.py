"""`vmemtrace fleet ...`: detection over many runs on Ray, and questions over the findings lake."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import typer
from rich.table import Table

from vmemtrace.cli.common import EXIT_BAD_INPUT, cell, counts_text, err, fail, out, say

fleet_app = typer.Typer(help="Many runs from many hosts: detect them all on Ray, then query their findings.",
                        no_args_is_help=True)

LakeOpt = Annotated[Path, typer.Option("--lake", help="Findings lake directory (Hive layout host=/date=/run=).",
                                       show_default=False)]


def _print_table(table: pa.Table, title: str | None = None) -> None:
    """Rows as a terminal table of inert cells: lake values come from manifests and traces."""
    view = Table(*table.column_names, title=title)
    for row in table.to_pylist():
        view.add_row(*(cell(v) for v in row.values()))
    out.print(view)


@fleet_app.command("detect")
def fleet_detect_cmd(
    sources: Annotated[list[str], typer.Argument(help="Run directories, folders holding runs, or fsspec URLs "
                                                 "(s3://..., gs://... where that filesystem package is "
                                                 "installed).", show_default=False)],
    lake: LakeOpt,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster [default: start a local one "
                                                   "on this machine's cores].", show_default=False)] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs of the local Ray cluster [default: all].",
                                                    show_default=False)] = None,
) -> None:
    """Run every detector on every run found, one Ray task per run, into the lake.

    Each run's partition (host=HOST/date=DAY/run=NAME) is replaced whole, so running again is safe.
    A run that cannot be read or detected is recorded as failed with its error. Exit 2 when any run
    failed (bad input, as for `detect`) or on bad arguments, 0 otherwise: findings do not change the
    exit code here; ask the lake (`fleet query`) for them.
    """
    from vmemtrace.fleet.detect import discover, fleet_detect

    try:
        found = discover(sources)
    except (FileNotFoundError, ImportError, ValueError) as e:
        fail(str(e))
    if not found:
        fail(f"no runs (directories holding manifest.json) under {', '.join(sources)}")
    tally = {"ok": 0, "failed": 0}

    def on_result(res: dict) -> None:
        tally[res["status"]] += 1
        line = f"[{tally['ok'] + tally['failed']}/{len(found)}] {res['status']}: {res['run']}"
        say(line + (f": {res['error']}" if res["error"] else ""), to_err=True)

    fleet_detect(found, lake, address=address, num_cpus=num_cpus, on_result=on_result)
    say(f"fleet detect: {len(found)} runs into {lake}: {counts_text(tally)}", to_err=True)
    if tally["failed"]:
        raise typer.Exit(EXIT_BAD_INPUT)


@fleet_app.command("summary")
def fleet_summary_cmd(
    lake: LakeOpt,
    html: Annotated[Optional[Path], typer.Option(help="Also write the summary as an HTML page here.",
                                                 show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary tables as JSON.")] = False,
) -> None:
    """Findings per detector and severity by host, kernel, QEMU version and day; runs that cannot be
    trusted (failed, unclean, lost events); the newest findings no earlier run had."""
    from reports.fleet import write_fleet_summary
    from vmemtrace.fleet.summary import summary

    if not lake.is_dir():
        fail(f"{lake}: no such lake directory")
    tables = summary(lake)
    if as_json:
        print(json.dumps({k: t.to_pylist() for k, t in tables.items()}, indent=2, default=str))
    else:
        for name, t in tables.items():
            _print_table(t, title=name)
    if html:
        say(str(write_fleet_summary(tables, str(lake), html)), to_err=True)


@fleet_app.command("query")
def fleet_query_cmd(
    sql: Annotated[str, typer.Argument(help="SQL over the tables runs, findings, detectors, event_counts "
                                       "(each with host, date and run columns).", show_default=False)],
    lake: LakeOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as a JSON array.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print rows as CSV.")] = False,
) -> None:
    """Run SQL over the lake in DuckDB."""
    from vmemtrace.fleet.summary import query

    if not lake.is_dir():
        fail(f"{lake}: no such lake directory")
    try:
        table = query(lake, sql)
    except ValueError as e:
        fail(f"query: {e}")
    if as_csv:
        pacsv.write_csv(table, sys.stdout.buffer)
    elif as_json:
        print(json.dumps(table.to_pylist(), indent=2, default=str))
    else:
        _print_table(table)
    err.print(f"{table.num_rows} row(s)", highlight=False)
