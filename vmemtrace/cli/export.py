"""`vmemtrace export`: a run in other tools' formats (Perfetto)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vmemtrace.cli.common import RunArg, open_or_fail, say
from vmemtrace.cli.report import findings_or_detect

export_app = typer.Typer(help="Write a run in another tool's format.", no_args_is_help=True,
                         rich_markup_mode=None)


@export_app.command()
def perfetto(
    run: RunArg,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Trace file to write [default: "
                                                "RUN/report/trace.pftrace].", show_default=False)] = None,
) -> None:
    """Write a Perfetto trace (open it in ui.perfetto.dev or trace_processor): a track per process
    with child tracks per event family, DMA mappings and memslot periods as slices, and each
    finding as a slice with flows to its evidence events. Prints the file's path."""
    from reports.perfetto import export_perfetto

    r = open_or_fail(run)
    findings, _ = findings_or_detect(r)
    target = out or r.path / "report" / "trace.pftrace"
    target.parent.mkdir(parents=True, exist_ok=True)
    done = export_perfetto(r, findings, target)
    say(f"{done['tracks']} tracks, {done['slices']} slices, {done['instants']} instants, {done['flows']} flows",
        to_err=True)
    print(target)
