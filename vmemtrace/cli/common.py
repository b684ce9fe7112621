"""What every command shares: the consoles, exit codes, option types, the one error exit, the one
function that makes trace text inert before it reaches a terminal, and the progress display."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from pipeline.runstore import RunError, open_run

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False)

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 done (detect: nothing at or above --fail-on); "
    "1 detect found something at or above --fail-on; "
    "2 bad input or usage (the message names the file, line or chunk); "
    "3 internal error (a bug: the traceback is written to a file under $TMPDIR); "
    "130 interrupted."
)

RunArg = Annotated[Path, typer.Argument(help="Run directory (holds manifest.json).", show_default=False)]
RunOpt = Annotated[Path, typer.Option("--run", help="Run directory to create or append to.", show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Import the lines that parse; count the others "
                                          "as lost events.")]

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def inert(value: Any) -> str:
    """Text from a trace, a run or a manifest, safe to print: control characters, escape sequences
    and line breaks shown escaped (\\x1b, \\n), so no input can colour, move or forge output lines."""
    return _UNSAFE.sub(_escape, str(value))


def cell(value: Any) -> Text:
    """A rich table cell holding inert text (a plain str cell would be parsed as rich markup)."""
    return Text(inert("" if value is None else value))


def counts_text(counts: dict[str, int]) -> str:
    """'family n, family n' for a summary line."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def say(text: str, *, to_err: bool = False) -> None:
    """Print one line of text, made inert (no markup, no control characters from the data)."""
    (err if to_err else out).print(inert(text), markup=False, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    say(f"vmemtrace: error: {message}", to_err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def open_or_fail(run: Path):
    try:
        return open_run(run)
    except RunError as e:
        fail(str(e))


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator:
    """A progress bar on stderr when it is a terminal; otherwise nothing is drawn.

    Yields `advance(n=1, description=None)`: call it as work completes (e.g. per file or per MiB).
    """
    if not sys.stderr.isatty():
        yield lambda n=1, description=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(inert(description), total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": inert(description)} if description else {}))

        yield advance
