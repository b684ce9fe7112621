"""`vmemtrace info`: what a run holds and how it stopped."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from vmemtrace.cli.common import RunArg, open_or_fail, out


def info(run: RunArg,
         as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False) -> None:
    """Show a run: how it stopped, its sources, events per family and lost events."""
    r = open_or_fail(run)
    if as_json:
        print(json.dumps({**r.manifest, "state": r.state, "rows": r.rowcounts_text()}, indent=2))
        return
    m = r.manifest
    out.print(f"run {r.path}  schema v{m['schema_version']}  host {m['host']['hostname']} "
              f"kernel {m['host']['kernel']}  stop: {r.state}", markup=False, highlight=False)
    t = Table("family", "rows", "lost")
    for fam, n in r.rowcounts_text().items():
        t.add_row(fam, str(n), str(m.get("lost", {}).get(fam, 0)))
    out.print(t)
    for s in m["sessions"]:
        out.print(f"session {s['session']}: {s['source']} ({s['kind']}) {r.session_state(s)}",
                  markup=False, highlight=False)
