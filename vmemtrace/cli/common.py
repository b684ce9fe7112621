"""What every command shares: the consoles, exit codes, option types and the one error exit.

Exit codes, for scripts:
  0  done; for `detect`, no finding at or above --fail-on
  1  `detect` found something at or above --fail-on (default: high)
  2  bad input or usage: the message names the file, line or field
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from pipeline.runstore import RunError, open_run

out = Console(soft_wrap=True)
err = Console(stderr=True)

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2

RunArg = Annotated[Path, typer.Argument(help="Run directory (holds manifest.json).", show_default=False)]
RunOpt = Annotated[Path, typer.Option("--run", help="Run directory to create or append to.", show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Import the lines that parse; count the others "
                                          "as lost events.")]


def counts_text(counts: dict[str, int]) -> str:
    """'family n, family n' for a summary line."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def say(text: str, *, to_err: bool = False) -> None:
    """Print plain text: no rich markup or highlighting applied to it."""
    (err if to_err else out).print(text, markup=False, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    say(f"vmemtrace: error: {message}", to_err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def open_or_fail(run: Path):
    try:
        return open_run(run)
    except RunError as e:
        fail(str(e))
