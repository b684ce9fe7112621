"""The `vmemtrace` command line: each command is a thin call into collectors, pipeline, queries
or reports, in a module of its own here. Exit codes are in vmemtrace/cli/common.py; every
exception goes through the one boundary in vmemtrace/cli/errors.py."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from pipeline import __version__
from vmemtrace.cli import collect, detect, doctor, export, fleet, imports, info, report
from vmemtrace.cli.common import EXIT_CODES_HELP, out
from vmemtrace.cli.errors import run_guarded


class GuardedGroup(TyperGroup):
    """The top-level command group: whatever a subcommand raises goes through the error boundary."""

    def invoke(self, ctx):
        return run_guarded(lambda: super(GuardedGroup, self).invoke(ctx))


app = typer.Typer(
    name="vmemtrace",
    cls=GuardedGroup,
    help="Record what really happens to guest memory on a QEMU/KVM host and prove its bugs offline.\n\n"
         "Typical use: import (or collect) a run, then `vmemtrace detect RUN` and `vmemtrace report RUN`.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(imports.import_app, name="import")
app.add_typer(fleet.fleet_app, name="fleet")
app.add_typer(export.export_app, name="export")
app.command(context_settings={"allow_interspersed_args": False})(collect.collect)
app.command()(info.info)
app.command(epilog=EXIT_CODES_HELP)(detect.detect)
app.command()(report.report)
app.command()(doctor.doctor)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"vmemtrace {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    pass
