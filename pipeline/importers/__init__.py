"""Importers: traces users already have, turned into runs.

Two ways to read a trace file, both gzip-aware:
- `read_lines` feeds each line to a Python callback (small inputs, e.g. JSON Lines);
- `line_batches` cuts the file into Arrow string arrays of whole lines, for importers that parse
  with Arrow/DuckDB kernels: memory stays bounded by the batch size whatever the file size.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class TraceFormatError(ValueError):
    """A line of an input trace that cannot be imported; str() names file, line and field."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}"
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: Path) -> TextIO:
    """A trace file as text, gunzipped when it starts with gzip's magic bytes."""
    if _is_gzip(path):
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


@dataclass
class InputFile:
    """What was read of one input: the manifest's `inputs` entry (sha256 of the bytes as stored)."""

    path: str
    sha256: str = ""
    bytes: int = 0
    lines: int = 0
    _hash: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)

    def manifest(self) -> dict[str, object]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def line_batches(path: Path, info: InputFile, *, batch_bytes: int = 32 << 20) -> Iterator[tuple[int, pa.Array]]:
    """Yield (number of the batch's first line, 1-based; large_string array of its lines).

    Lines are cut at '\\n' with numpy over the raw bytes (no per-line Python); a trailing '\\r' is
    dropped; invalid UTF-8 becomes U+FFFD so that every line stays countable. `info` gets the
    file's size, line count and sha256 (of the file as stored, gzip or not) as a side effect.
    """
    gzipped = _is_gzip(path)
    raw = open(path, "rb")
    hashing = _HashingReader(raw, info)
    stream = gzip.GzipFile(fileobj=hashing, mode="rb") if gzipped else hashing
    first = 1
    carry = b""
    try:
        with raw:
            while True:
                try:
                    block = stream.read(batch_bytes)
                except (OSError, EOFError) as e:   # truncated or corrupt gzip, or a failing disk
                    why = f"damaged or truncated gzip file ({e})" if gzipped else f"cannot read ({e})"
                    raise TraceFormatError(str(path), first, why) from None
                if not block:
                    break
                block = carry + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    carry = block
                    continue
                carry = block[cut:]
                lines = _split(block[:cut])
                yield first, lines
                first += len(lines)
            if carry:
                lines = _split(carry + b"\n")
                yield first, lines
                first += len(lines)
    finally:
        info.lines = first - 1
        info.sha256 = info._hash.hexdigest()


class _HashingReader:
    """File wrapper that hashes and counts the stored bytes as they are read."""

    def __init__(self, fh: BinaryIO, info: InputFile):
        self.fh, self.info = fh, info

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.info._hash.update(data)
        self.info.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


def _split(block: bytes) -> pa.Array:
    """Whole lines (block ends with '\\n') as one large_string array, without the line ends."""
    text = block.decode("utf-8", "replace").encode("utf-8") if not block.isascii() else block
    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 10)
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0] = 0
    offsets[1:] = ends + 1
    arr = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(text))
    return pc.utf8_rtrim(arr, characters="\r\n")
