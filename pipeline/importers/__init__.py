"""Importers: traces users already have, turned into schema-v1 runs."""

import gzip
from pathlib import Path
from typing import TextIO


def open_text(path: Path) -> TextIO:
    """A trace file as text, gunzipped when it starts with gzip's magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")
