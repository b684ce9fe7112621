"""JSON Lines traces: one event per line, for hand-written fixtures and other tools' output.

    {"kind": "dma", "ts_ns": 100, "pid": 42, "api": "vfio_type1", "op": "map",
     "vaddr": "0x7f0000000000", "iova": "0x0", "size": 2097152}

`kind` names the family (see pipeline.schema); every other key is a column of
it. Integers may be written as JSON numbers or as "0x..." strings. Defaults:
tid = pid, comm = "", source = "jsonl", event_id = the next free id. Blank
lines and lines starting with '#' are skipped.

This module reads the JSON (syntax, kind, keys, and whether each value is an integer, string or
boolean); what the values may be (ranges, enum values, nulls) is the run store's write gate
(schema.check_rows), whose row indices are mapped back to FILE:LINE here. The whole input is
checked before anything is written, so a bad line leaves the run as it was; with skip_bad the
bad lines are left out and counted as lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from pipeline.errors import InvalidRowsError
from pipeline.importers import TraceFormatError
from pipeline.runstore import RunWriter, conform
from pipeline.schema import FAMILY_BY_KIND, FAMILY_BY_NAME, check_rows, loose_int_array

DEFAULTS = {"comm": "", "source": "jsonl"}


def coerce(f: pa.Field, value: Any) -> Any:
    """The JSON value as a Python value of the kind field `f` holds; raises ValueError if it is not one.

    Only the representation is checked here (integer, string, boolean); ranges, enum values and
    nulls are the write gate's.
    """
    if value is None:
        return None
    t = f.type
    if pa.types.is_integer(t):
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                raise ValueError(f"{value!r} is not an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        return value
    if pa.types.is_boolean(t):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if pa.types.is_string(t):
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return value
    raise ValueError(f"type {t} cannot be given in JSON Lines")


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
    fam = FAMILY_BY_KIND.get(kind) if isinstance(kind, str) else None
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


@dataclass
class _Rows:
    """One family's rows as column lists, and the FILE:LINE each row came from."""

    cols: dict[str, list[Any]]
    where: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class JsonlInput:
    """Parsed and gate-checked JSON Lines input: per family a table ready for RunWriter.write."""

    checked: dict[str, pa.Table]
    where: dict[str, list[tuple[str, int]]]      # family -> FILE, LINE of each row of its table
    bad: list[TraceFormatError]                  # lines left out (skip_bad)
    comment_lines: list[int]

    def tables(self) -> dict[str, pa.Table]:
        return self.checked

    def counts(self) -> dict[str, int]:
        return {k: t.num_rows for k, t in self.checked.items()}

    def line_of(self, family: str, row: int) -> tuple[str, int]:
        return self.where[family][row]


def _lines(path: str):
    """(line number, text) of a file, each line decoded on its own so bad UTF-8 names its line."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise TraceFormatError(path, 0, e.strerror or str(e)) from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TraceFormatError(path, lineno, f"not UTF-8 text (byte {e.start} of the line)") from None


def _table(family: str, cols: dict[str, list[Any]]) -> pa.Table:
    """Columns as Arrow arrays, integers as wide as their values need so the gate sees them whole."""
    arrays = {}
    for f in FAMILY_BY_NAME[family].schema:
        values = cols[f.name]
        arrays[f.name] = loose_int_array(values) if pa.types.is_integer(f.type) else pa.array(values, f.type)
    return pa.table(arrays)


def read_jsonl(paths: Iterable[str | Path], *, skip_bad: bool = False) -> JsonlInput:
    """Parse every line of every file and pass the rows through the write gate.

    Raises TraceFormatError at the first bad line (FILE:LINE: field 'x': why); with skip_bad the
    bad lines are collected in `.bad` and left out.
    """
    rows: dict[str, _Rows] = {}
    bad: list[TraceFormatError] = []
    comments: list[int] = []
    seen_ids: dict[int, str] = {}
    for p in paths:
        p = str(p)
        for lineno, text in _lines(p):
            try:
                parsed = parse_line(text, p, lineno)
                if parsed is None:
                    if text.strip():
                        comments.append(lineno)
                    continue
                family, row = parsed
                eid = row.get("event_id")
                if eid is not None:
                    if eid in seen_ids:
                        raise TraceFormatError(p, lineno, f"{eid} already used at {seen_ids[eid]}",
                                               field="event_id")
                    seen_ids[eid] = f"{p}:{lineno}"
            except TraceFormatError as e:
                if not skip_bad:
                    raise
                bad.append(e)
                continue
            acc = rows.setdefault(family, _Rows({n: [] for n in FAMILY_BY_NAME[family].schema.names}))
            for n, values in acc.cols.items():
                values.append(row.get(n))
            acc.where.append((p, lineno))

    checked, where = {}, {}
    gate_bad: list[TraceFormatError] = []
    for family, acc in rows.items():
        fam = FAMILY_BY_NAME[family]
        table = _table(family, acc.cols)
        violations = check_rows(fam, table)
        drop = set()
        for v in violations:
            path, lineno = acc.where[v.row]
            gate_bad.append(TraceFormatError(path, lineno, v.message, field=v.column))
            drop.add(v.row)
        keep = [i for i in range(table.num_rows) if i not in drop] if drop else None
        if keep is not None:
            table = table.take(pa.array(keep, pa.int64()))
        checked[family] = conform(fam, table)
        where[family] = [acc.where[i] for i in keep] if keep is not None else acc.where
    if gate_bad:
        order = {str(p): i for i, p in enumerate(paths)}
        gate_bad.sort(key=lambda e: (order.get(e.path, 0), e.line))
        if not skip_bad:
            raise gate_bad[0]
        bad += gate_bad
    return JsonlInput(checked, where, bad, comments)


def import_jsonl(paths: list[str | Path], run_dir: str | Path, *, skip_bad: bool = False,
                 force: bool = False) -> dict[str, int]:
    """Import JSON Lines files into a run (created if needed); returns rows per family.

    force: import files already imported into this run (otherwise DuplicateInputError).
    """
    parsed = read_jsonl(paths, skip_bad=skip_bad)
    info = {"files": [str(p) for p in paths],
            "clock": {"domain": "monotonic", "source": "ts_ns as given in the file", "alignment": "none",
                      "offset_ns": None, "residual_ns": None, "matched_events": 0}}
    if parsed.comment_lines:
        info["non_trace_lines"] = {"count": len(parsed.comment_lines), "first": parsed.comment_lines[:20]}
    with RunWriter(run_dir, source="jsonl", kind="importer", info=info, inputs=paths, force=force) as w:
        for family, table in parsed.tables().items():
            try:
                w.write(family, table)
            except InvalidRowsError as e:  # event ids the run already uses: say which line gave it
                v = e.violations[0]
                path, lineno = parsed.line_of(family, v.row)
                raise TraceFormatError(path, lineno, v.message, field=v.column) from None
        if parsed.bad:
            w.count_lost("jsonl", len(parsed.bad), "lines that could not be imported (skip_bad)")
            w.update_session(bad_lines=[str(e) for e in parsed.bad[:100]])
    return parsed.counts()
