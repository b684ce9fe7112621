"""Streaming text input for the ftrace importer: files as Arrow batches of lines, and numbers out of them.

A file is read in blocks of a few MiB (gunzipped on the fly when it starts with gzip's magic);
each block is cut at its last newline and split into an Arrow string array by Arrow's own
kernel, so memory stays bounded by the block size whatever the file size, and no Python runs
per line. The bytes read are hashed on the way for the manifest's `inputs`.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.importers import TraceFormatError

BLOCK_BYTES = 8 << 20
MAX_LINE_BYTES = 1 << 20  # longer than any trace line; a file without newlines is not a text trace
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"  # trace-cmd's binary trace.dat (needs `trace-cmd report` first)


@dataclass
class InputFile:
    """What the manifest says about one file read: its path, sha256 and size on disk."""

    path: Path
    sha256: str = ""
    bytes: int = 0

    def manifest(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.bytes}


def _raw_blocks(fh: BinaryIO, info: InputFile) -> Iterator[bytes]:
    """The file's bytes as decompressed blocks; every byte on disk goes through the hash."""
    digest = hashlib.sha256()
    first = fh.read(BLOCK_BYTES)
    gz = first[:2] == b"\x1f\x8b"
    inflate = zlib.decompressobj(wbits=47) if gz else None
    block = first
    while block:
        digest.update(block)
        info.bytes += len(block)
        if inflate is None:
            yield block
        else:
            out = inflate.decompress(block)
            while inflate.eof and inflate.unused_data:  # concatenated gzip members (gzip -c a >> b)
                rest = inflate.unused_data
                inflate = zlib.decompressobj(wbits=47)
                out += inflate.decompress(rest)
            yield out
        block = fh.read(BLOCK_BYTES)
    if inflate is not None and not inflate.eof:
        raise TraceFormatError(str(info.path), 0, "gzip stream is truncated")
    info.sha256 = digest.hexdigest()


def line_batches(path: Path, info: InputFile) -> Iterator[tuple[pa.StringArray, int]]:
    """(lines, number of the first line) for every block of the file; lines carry no newline."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise TraceFormatError(str(path), 0, e.strerror or str(e)) from None
    lineno = 1
    tail = b""
    with fh:
        try:
            for n, block in enumerate(_raw_blocks(fh, info)):
                if n == 0 and block.startswith(TRACE_DAT_MAGIC):
                    raise TraceFormatError(str(path), 0, "a binary trace-cmd trace.dat: import the text of "
                                                         "`trace-cmd report -i FILE` instead")
                data = tail + block
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if len(tail) > MAX_LINE_BYTES:
                    raise TraceFormatError(str(path), lineno + data.count(b"\n", 0, cut),
                                           f"line longer than {MAX_LINE_BYTES} bytes: not a text trace")
                if cut:
                    lines = _split(data[:cut - 1])
                    yield lines, lineno
                    lineno += len(lines)
        except (zlib.error, EOFError) as e:
            raise TraceFormatError(str(path), lineno, f"gzip stream is damaged ({e})") from None
        if tail:
            yield _split(tail), lineno


def _split(data: bytes) -> pa.StringArray:
    text = data.decode("utf-8", errors="replace")
    lines = pc.split_pattern(pa.array([text], pa.string()), "\n").flatten()
    return pc.utf8_rtrim(lines, "\r")
