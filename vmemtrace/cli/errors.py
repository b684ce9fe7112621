"""The CLI's one error boundary: every exception a command raises becomes one inert line on stderr
and a truthful exit code (see EXIT_CODES_HELP in common.py).

Bad input (a trace, a run, a path, a full disk) exits 2 with a message naming the file, line or
chunk; anything unexpected is a bug: exit 3, one line, and the traceback in a file under $TMPDIR.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import sys
import tempfile
import traceback
import zlib
from pathlib import Path
from types import TracebackType

import typer

from vmemtrace.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, say

_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
}


def _frames_innermost_first(tb: TracebackType | None):
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return reversed(frames)


def _open_file_in(tb: TracebackType | None) -> str | None:
    """The file the failing code was reading: the innermost frame's open file object.

    Decoding and decompression errors do not carry the file name; the reader's frame does.
    """
    for frame in _frames_innermost_first(tb):
        for value in frame.f_locals.values():
            if isinstance(value, (io.IOBase, gzip.GzipFile)) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def _chunk_in(tb: TracebackType | None) -> str | None:
    """The Parquet chunk the failing code was reading or writing (Arrow's errors do not name it)."""
    for frame in _frames_innermost_first(tb):
        for value in frame.f_locals.values():
            if isinstance(value, (str, Path)) and ".parquet" in os.path.basename(value) \
                    and os.path.isdir(os.path.dirname(value) or "."):
                return str(value)
    return None


def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def bad_input_message(exc: BaseException) -> str | None:
    """The message for an exception that means bad input or environment, or None for a bug."""
    import duckdb
    import pyarrow as pa

    from pipeline.importers import TraceFormatError
    from pipeline.errors import RunError
    from queries.runner import DetectorError

    tb = exc.__traceback__
    if isinstance(exc, (RunError, TraceFormatError)):
        return str(exc)
    if isinstance(exc, DetectorError):
        return f"detector: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return (f"{_where(_open_file_in(tb))}not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start} of a block): is this the right file?")
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"{_where(_open_file_in(tb))}damaged or truncated gzip file ({exc})"
    if isinstance(exc, json.JSONDecodeError):
        return f"{_where(_open_file_in(tb))}not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
    if isinstance(exc, OSError):
        what = _OS_ERRORS.get(exc.errno, exc.strerror or str(exc))
        path = exc.filename if exc.filename is not None else (_open_file_in(tb) or _chunk_in(tb))
        hint = " (free some space; finished chunks stay readable)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"{_where(path and str(path))}{what}{hint}"
    if isinstance(exc, (pa.ArrowInvalid, pa.ArrowIOError, duckdb.IOException, duckdb.InvalidInputException)):
        return f"{_where(_chunk_in(tb))}damaged run data: {exc}"
    return None


def _write_traceback(exc: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="vmemtrace-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"vmemtrace {' '.join(sys.argv[1:])}\n\n")
        traceback.print_exception(exc, file=fh)
    return path


def _silence_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null so the final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # not a real file descriptor (e.g. a test runner's buffer): nothing to flush later


def exit_code_for(exc: BaseException) -> int:
    """Report `exc` on stderr (one inert line) and return the exit code it means."""
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
        return EXIT_OK
    if isinstance(exc, KeyboardInterrupt):
        say("vmemtrace: interrupted", to_err=True)
        return EXIT_INTERRUPTED
    message = bad_input_message(exc)
    if message is not None:
        say(f"vmemtrace: error: {message}", to_err=True)
        return EXIT_BAD_INPUT
    say(f"vmemtrace: internal error (a bug in vmemtrace, please report it): {type(exc).__name__}: {exc}; "
        f"traceback written to {_write_traceback(exc)}", to_err=True)
    return EXIT_INTERNAL


def run_guarded(invoke):
    """Call a command; map what it raises to an exit code. Typer's own exits and usage errors pass
    through (typer.TyperException is the base of its vendored click's ClickException)."""
    try:
        result = invoke()
        sys.stdout.flush()  # a closed pipe shows up here for short outputs
        return result
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except BaseException as exc:  # noqa: BLE001 - this is the boundary every failure goes through
        if isinstance(exc, SystemExit):
            raise
        raise typer.Exit(exit_code_for(exc)) from None
