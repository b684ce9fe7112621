"""The fleet summary page: tables of a findings lake's summary, one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pyarrow as pa

_env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)


def write_fleet_summary(tables: dict[str, pa.Table], lake: str, out: Path) -> Path:
    """Render the summary tables (name -> Arrow table) of `lake` into `out` (an HTML file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = [{"name": name, "columns": t.column_names, "rows": t.to_pylist()} for name, t in tables.items()]
    out.write_text(_env.get_template("fleet.html.j2").render(lake=lake, sections=sections))
    return out
