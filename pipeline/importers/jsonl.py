"""JSON Lines traces: one event per line, for hand-written fixtures and other tools' output.

    {"kind": "dma", "ts_ns": 100, "pid": 42, "api": "vfio_type1", "op": "map",
     "vaddr": "0x7f0000000000", "iova": "0x0", "size": 2097152}

`kind` names the family (see pipeline.schema); every other key is a column of
it. Integers may be written as JSON numbers or as "0x..." strings. Defaults:
tid = pid, comm = "", source = "jsonl", event_id = the next free id. Blank
lines and lines starting with '#' are skipped. The whole input is validated
before anything is written, so a bad line leaves the run as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.importers import TraceFormatError
from pipeline.importers.columns import FamilyColumns
from pipeline.runstore import RunWriter
from pipeline.schema import FAMILY_BY_KIND, field_enum


def _int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    if pa.types.is_unsigned_integer(t):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def coerce(f: pa.Field, value: Any) -> Any:
    """The JSON value as the Python value of field `f`; raises ValueError saying what is wrong."""
    if value is None:
        if not f.nullable:
            raise ValueError("must not be null")
        return None
    t = f.type
    if pa.types.is_integer(t):
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ValueError(f"{value!r} is not an integer") from None
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        lo, hi = _int_range(t)
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {t} ({lo}..{hi})")
        return value
    if pa.types.is_boolean(t):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if pa.types.is_string(t):
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        allowed = field_enum(f)
        if allowed and value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    raise ValueError(f"type {t} cannot be given in JSON Lines")


DEFAULTS = {"comm": "", "source": "jsonl"}


def parse_line(text: str, path: str, lineno: int) -> tuple[str, dict[str, Any]] | None:
    """One line to (family name, row); None for blank and comment lines."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise TraceFormatError(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(path, lineno, "a line must be a JSON object")
    kind = obj.pop("kind", None)
    if kind is None:
        raise TraceFormatError(path, lineno, "missing", field="kind")
    fam = FAMILY_BY_KIND.get(kind)
    if fam is None:
        raise TraceFormatError(path, lineno, f"unknown kind {kind!r}; one of {', '.join(sorted(FAMILY_BY_KIND))}",
                               field="kind")
    schema = fam.schema
    for key in obj:
        if key not in schema.names:
            raise TraceFormatError(path, lineno, f"not a column of {fam.kind}", field=key)
    row: dict[str, Any] = {}
    for f in schema:
        if f.name in obj:
            raw = obj[f.name]
        elif f.name == "tid":
            raw = obj.get("pid")
        elif f.name in DEFAULTS:
            raw = DEFAULTS[f.name]
        elif f.name == "event_id" or f.nullable:
            continue
        else:
            raise TraceFormatError(path, lineno, f"missing (required for {fam.kind})", field=f.name)
        try:
            row[f.name] = coerce(f, raw)
        except ValueError as e:
            raise TraceFormatError(path, lineno, str(e), field=f.name) from None
    return fam.name, row


def read_jsonl(paths: Iterable[str | Path]) -> FamilyColumns:
    """Parse and validate every line of every file; raises TraceFormatError at the first bad one."""
    cols = FamilyColumns()
    seen_ids: dict[int, str] = {}
    for p in paths:
        p = str(p)
        try:
            fh = open(p, encoding="utf-8")
        except OSError as e:
            raise TraceFormatError(p, 0, e.strerror or str(e)) from None
        with fh:
            for lineno, text in enumerate(fh, 1):
                parsed = parse_line(text, p, lineno)
                if parsed is None:
                    continue
                family, row = parsed
                eid = row.get("event_id")
                if eid is not None:
                    if eid in seen_ids:
                        raise TraceFormatError(p, lineno, f"{eid} already used at {seen_ids[eid]}",
                                               field="event_id")
                    seen_ids[eid] = f"{p}:{lineno}"
                cols.add(family, row)
    return cols


def import_jsonl(paths: list[str | Path], run_dir: str | Path) -> dict[str, int]:
    """Import JSON Lines files into a run (created if needed); returns rows per family."""
    cols = read_jsonl(paths)
    tables = cols.tables()
    with RunWriter(run_dir, source="jsonl", kind="importer",
                   info={"files": [str(p) for p in paths]}) as w:
        # Rows with explicit ids and rows without are written separately: ids are all-or-none per write.
        for family, table in tables.items():
            given = table.column("event_id").is_valid()
            w.write(family, table.filter(given))
            w.write(family, table.filter(pc.invert(given)))
    return cols.counts()
