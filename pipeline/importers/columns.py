"""Column accumulation shared by importers: rows go in per family, Arrow tables come out."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.schema import FAMILY_BY_NAME


class FamilyColumns:
    """Rows of several families, kept as one Python list per column until `tables()`.

    Importers parse text line by line anyway; keeping columns (not row dicts)
    lets pyarrow build each array in one call.
    """

    def __init__(self) -> None:
        self._cols: dict[str, dict[str, list[Any]]] = {}
        self._rows: dict[str, int] = {}

    def add(self, family: str, row: dict[str, Any]) -> None:
        names = FAMILY_BY_NAME[family].schema.names
        cols = self._cols.setdefault(family, {n: [] for n in names})
        for n in names:
            cols[n].append(row.get(n))
        self._rows[family] = self._rows.get(family, 0) + 1

    def counts(self) -> dict[str, int]:
        return dict(self._rows)

    def tables(self) -> dict[str, pa.Table]:
        out = {}
        for family, cols in self._cols.items():
            schema = FAMILY_BY_NAME[family].schema
            loose = schema.set(0, schema.field("event_id").with_nullable(True))
            out[family] = pa.Table.from_pydict(cols, schema=loose)
        return out
