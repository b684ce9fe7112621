"""Importers: traces users already have, turned into schema-v1 runs."""

import gzip
from pathlib import Path
from typing import Callable, Iterable, TextIO


class TraceFormatError(ValueError):
    """A line of an input trace that cannot be imported; str() names file, line and field."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}"
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


def open_text(path: Path) -> TextIO:
    """A trace file as text, gunzipped when it starts with gzip's magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_lines(paths: Iterable[Path], parse_line: Callable[[str], None], *, skip_bad: bool,
               skip: Callable[[str], bool] = lambda line: False) -> list[str]:
    """Feed every non-blank line of every file to `parse_line`, which raises ValueError for a bad one.

    A bad line raises TraceFormatError naming its file and line; with skip_bad it is collected
    instead, and the list ("FILE:LINE: why") is returned for the caller to count as lost.
    """
    bad: list[str] = []
    for path in paths:
        try:
            fh = open_text(path)
        except OSError as e:
            raise TraceFormatError(str(path), 0, e.strerror or str(e)) from None
        with fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line.strip() or skip(line):
                    continue
                try:
                    parse_line(line)
                except ValueError as e:
                    if not skip_bad:
                        raise TraceFormatError(str(path), lineno, str(e)) from None
                    bad.append(f"{path}:{lineno}: {e}")
    return bad
