"""The `vmemtrace` command line: each command is a thin call into collectors, pipeline, queries
or reports, in a module of its own here. Exit codes are in vmemtrace/cli/common.py."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline import __version__
from vmemtrace.cli import collect, detect, export, imports, info, report
from vmemtrace.cli.common import out

app = typer.Typer(
    name="vmemtrace",
    help="Record what really happens to guest memory on a QEMU/KVM host and prove its bugs offline.\n\n"
         "Typical use: import (or collect) a run, then `vmemtrace detect RUN` and `vmemtrace report RUN`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(imports.import_app, name="import")
app.add_typer(export.export_app, name="export")
app.command(context_settings={"allow_interspersed_args": False})(collect.collect)
app.command()(info.info)
app.command()(detect.detect)
app.command()(report.report)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"vmemtrace {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    pass
