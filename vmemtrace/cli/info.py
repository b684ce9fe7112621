"""`vmemtrace info`: a one-screen summary of a run: what was traced, how each session stopped,
events and lost events per family, and the detectors' verdicts when detect has run."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pyarrow.parquet as pq
import typer
from rich.table import Table

from pipeline.schema import FAMILIES, severity_rank
from vmemtrace.cli.common import RunArg, cell, open_or_fail, out, say


def _ts_span(run) -> tuple[int, int] | None:
    """First and last ts_ns over every chunk, from Parquet statistics (no rows are read)."""
    lo, hi = None, None
    for fam in FAMILIES:
        for p in run.chunk_files(fam.name):
            meta = pq.ParquetFile(p).metadata
            col = meta.schema.to_arrow_schema().get_field_index("ts_ns")
            for rg in range(meta.num_row_groups if col >= 0 else 0):
                st = meta.row_group(rg).column(col).statistics
                if st is not None and st.has_min_max:
                    lo = st.min if lo is None else min(lo, st.min)
                    hi = st.max if hi is None else max(hi, st.max)
    return None if lo is None else (int(lo), int(hi))


def _clock(session: dict) -> str:
    """The session's clock: the v2 contract's dict (domain, alignment), or a v1 run's text."""
    c = session.get("clock")
    if isinstance(c, dict):
        parts = [str(c.get("domain") or "domain not recorded")]
        if c.get("alignment") not in (None, "none"):
            parts.append(f"aligned: {c['alignment']}")
        if c.get("residual_ns") is not None:
            parts.append(f"residual {c['residual_ns']} ns")
        return ", ".join(parts)
    return str(c) if c else "clock not recorded"


def summary(run) -> dict[str, Any]:
    m = run.manifest
    host = m.get("host") if isinstance(m.get("host"), dict) else {}
    rows = run.row_counts()
    lost = m.get("lost") if isinstance(m.get("lost"), dict) else {}
    span = _ts_span(run)
    sessions = [s for s in m.get("sessions", []) if isinstance(s, dict)]
    data = {
        "run": str(run.path), "schema_version": m.get("schema_version"), "state": run.state,
        "host": host.get("hostname", "unknown"), "kernel": host.get("kernel", "unknown"),
        "span_ns": None if span is None else {"first": span[0], "last": span[1], "seconds": (span[1] - span[0]) / 1e9},
        "sessions": [{"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                      "state": run.session_state(s), "clock": _clock(s)} for s in sessions],
        "families": {f: {"rows": rows.get(f, 0), "lost": int(lost.get(f, 0))}
                     for f in sorted(set(rows) | set(lost)) if rows.get(f, 0) or lost.get(f, 0)},
        "detectors": None,
    }
    from pipeline.findings_store import findings_dir, has_findings, load_findings

    data["findings_stale"] = (findings_dir(run) / "findings.parquet").exists() and not has_findings(run)
    if has_findings(run):
        _, statuses = load_findings(run)
        data["detectors"] = [{"id": s["id"], "title": s["title"], "status": s["status"],
                              "missing": s.get("missing", []), "by_severity": s.get("by_severity", {})}
                             for s in statuses]
    return data


def info(run: RunArg,
         as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (with the whole "
                                               "manifest under 'manifest').")] = False) -> None:
    """A one-screen summary of a run: host, time span, sessions (state, source, clock), events and
    lost events per family, and detector verdicts if `vmemtrace detect` has run."""
    r = open_or_fail(run)
    data = summary(r)
    if as_json:
        print(json.dumps({**data, "manifest": r.manifest}, indent=2))
        return
    span = data["span_ns"]
    say(f"run {data['run']}  (schema v{data['schema_version']})")
    say(f"host {data['host']}  kernel {data['kernel']}")
    say(f"stop: {data['state']}   span: " + ("no events" if span is None else f"{span['seconds']:.3f} s"))
    t = Table("session", "source", "kind", "state", "clock", title=None)
    for s in data["sessions"]:
        t.add_row(cell(s["session"]), cell(s["source"]), cell(s["kind"]), cell(s["state"]), cell(s["clock"]))
    out.print(t)
    t = Table("family", "events", "lost")
    for fam, c in data["families"].items():
        t.add_row(cell(fam), cell(c["rows"]), cell(c["lost"]))
    out.print(t)
    if data["detectors"] is not None:
        from vmemtrace.cli.detect import status_text

        t = Table("detector", "status", "findings")
        for s in data["detectors"]:
            sev = ", ".join(f"{n} {k}" for k, n in sorted(s["by_severity"].items(), key=lambda kv: severity_rank(kv[0]))) or "none"
            t.add_row(cell(f"{s['id']} {s['title']}"), cell(status_text(s)), cell(sev if s["status"] == "ran" else "-"))
        out.print(t)
    elif data["findings_stale"]:
        say("detectors: stored findings are stale (the run changed since; run vmemtrace detect again)")
    else:
        say("detectors: not run yet (vmemtrace detect RUN)")
