"""Detection over many runs: one Ray task per run, DuckDB inside each task, results into the lake.

Runs are independent (every detector joins within one process and one run), so a run is the unit
of work and Ray does the scheduling, retries of lost workers and placement; nothing here is a pool.
A task that fails records the run as failed, with its error, in the lake: never silently skipped.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa

from pipeline.runstore import MANIFEST, Run, open_run
from pipeline.schema import FINDING_SCHEMA, SEVERITIES
from vmemtrace.fleet import lake as lake_mod


@dataclass(frozen=True)
class RunSource:
    """A run to detect: a local directory, or a URL an fsspec filesystem reads.

    `name` is the lake's `run` value: the run directory's path below the source it was found under,
    '/' written as '-' (for a flat folder of runs, just the directory's name; for a source that is
    itself a run, its name). The same source gives the same names, so re-running replaces partitions.
    """

    url: str
    name: str


def _name(run_dir: str, root: str) -> str:
    rel = run_dir[len(root):].strip("/") if run_dir.startswith(root) else ""
    return rel.replace("/", "-") if rel else run_dir.rstrip("/").rsplit("/", 1)[-1]


def discover(sources: Iterable[str]) -> list[RunSource]:
    """Every run (a directory holding manifest.json) under each source, in a stable order."""
    found: list[RunSource] = []
    for src in sources:
        if "://" in src:
            import fsspec

            fs, root = fsspec.core.url_to_fs(src)
            protocol = src.split("://", 1)[0]
            for path in sorted(fs.find(root)):
                if path.rsplit("/", 1)[-1] == MANIFEST:
                    run_dir = path.rsplit("/", 1)[0]
                    found.append(RunSource(f"{protocol}://{run_dir}", _name(run_dir, root.rstrip("/"))))
            continue
        root = Path(src)
        if not root.is_dir():
            raise FileNotFoundError(f"{src}: no such directory")
        manifests = [root / MANIFEST] if (root / MANIFEST).is_file() else sorted(root.rglob(MANIFEST))
        found += [RunSource(str(m.parent), _name(str(m.parent), str(root).rstrip("/"))) for m in manifests]
    unique = {s.url: s for s in found}
    return list(unique.values())


def _traced(run: Run) -> dict:
    """The traced host, kernel and QEMU version: an import's own word, else the manifest's host."""
    host = dict(run.manifest.get("host", {}))
    out = {"hostname": host.get("hostname", "unknown"), "kernel": host.get("kernel", "unknown"),
           "qemu_version": None}
    for s in run.manifest.get("sessions", []):
        traced = s.get("traced") or {}
        for key, target in (("host", "hostname"), ("kernel", "kernel"), ("qemu_version", "qemu_version")):
            if traced.get(key) not in (None, "", "unknown"):
                out[target] = traced[key]
        if out["qemu_version"] is None and s.get("qemu_version"):
            out["qemu_version"] = s["qemu_version"]
    # "QEMU emulator version 7.2.22 (Debian ...)" -> "7.2.22": one value per build to group by.
    found = re.search(r"\d+\.\d+(?:\.\d+)?", out["qemu_version"] or "")
    out["qemu_version"] = found.group(0) if found else out["qemu_version"]
    return out


def _start(run: Run) -> tuple[int | None, str]:
    starts = [s.get("realtime_start_ns") for s in run.manifest.get("sessions", []) if s.get("realtime_start_ns")]
    if starts:
        first = min(starts)
        return first, dt.datetime.fromtimestamp(first / 1e9, dt.timezone.utc).date().isoformat()
    created = str(run.manifest.get("created", ""))[:10]
    return None, created or "unknown"


def _status_tables(statuses) -> pa.Table:
    rows = [{"detector": s.id, "title": s.title, "status": s.status, "missing": list(s.missing),
             "findings": s.findings, **{sev: s.by_severity.get(sev, 0) for sev in SEVERITIES},
             "seconds": s.seconds} for s in statuses]
    return pa.Table.from_pylist(rows, schema=lake_mod.DETECTORS_SCHEMA)


def detect_run(source: RunSource, lake: str) -> dict:
    """Detect one run and write its partition; returns {'run', 'status', 'error', 'partition'}."""
    from queries.runner import run_detectors

    local, tmp = _localise(source)
    try:
        t0 = time.perf_counter()
        try:
            run = open_run(local)
        except Exception as e:  # noqa: BLE001 - an unreadable run is a result, recorded in the lake
            return _write_failure(source, Path(lake), "unknown", "unknown", f"{type(e).__name__}: {e}")
        traced = _traced(run)
        start_ns, date = _start(run)
        try:
            result = run_detectors(run)
            counts = run.row_counts()
        except Exception as e:  # noqa: BLE001
            return _write_failure(source, Path(lake), traced["hostname"], date, f"{type(e).__name__}: {e}")
        lost = run.manifest.get("lost", {})
        findings = result.findings
        sev = set(findings.column("severity").to_pylist())
        runs = pa.Table.from_pylist([{
            "source": source.url, "status": "ok", "error": None, **traced, "state": run.state,
            "sessions": len(run.manifest.get("sessions", [])), "start_ns": start_ns,
            "events": sum(counts.values()), "lost_events": sum(int(v) for v in lost.values()),
            "findings": findings.num_rows,
            "worst_severity": next((s for s in SEVERITIES if s in sev), None),
            "detect_seconds": time.perf_counter() - t0}], schema=lake_mod.RUNS_SCHEMA)
        families = sorted(set(counts) | set(lost))
        event_counts = pa.table({"family": families, "rows": [counts.get(f, 0) for f in families],
                                 "lost": [int(lost.get(f, 0)) for f in families]},
                                schema=lake_mod.EVENT_COUNTS_SCHEMA)
        part = lake_mod.write_partition(Path(lake), traced["hostname"], date, source.name, {
            "runs": runs, "findings": findings, "detectors": _status_tables(result.statuses),
            "event_counts": event_counts})
        return {"run": source.url, "status": "ok", "error": None, "partition": str(part)}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _localise(source: RunSource) -> tuple[Path, str | None]:
    """A local directory holding the run: the run itself, or a copy fetched through fsspec."""
    if "://" not in source.url:
        return Path(source.url), None
    import fsspec

    fs, root = fsspec.core.url_to_fs(source.url)
    tmp = tempfile.mkdtemp(prefix="vmemtrace-fleet-")
    fs.get(root.rstrip("/") + "/", tmp + "/run/", recursive=True)
    return Path(tmp) / "run", tmp


def _write_failure(source: RunSource, lake: Path, host: str, date: str, error: str) -> dict:
    runs = pa.Table.from_pylist([{"source": source.url, "status": "failed", "error": error,
                                  "hostname": host, "kernel": None, "qemu_version": None, "state": None,
                                  "sessions": None, "start_ns": None, "events": None, "lost_events": None,
                                  "findings": None, "worst_severity": None, "detect_seconds": None}],
                                schema=lake_mod.RUNS_SCHEMA)
    part = lake_mod.write_partition(lake, host, date, source.name, {
        "runs": runs, "findings": FINDING_SCHEMA.empty_table(),
        "detectors": lake_mod.DETECTORS_SCHEMA.empty_table(),
        "event_counts": lake_mod.EVENT_COUNTS_SCHEMA.empty_table()})
    return {"run": source.url, "status": "failed", "error": error, "partition": str(part)}


def fleet_detect(sources: list[RunSource], lake: Path, *, address: str | None = None,
                 num_cpus: int | None = None, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `detect_run` for every source as Ray tasks; report each result as it lands."""
    import ray

    lake.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=False)
    task = ray.remote(detect_run)
    pending = [task.remote(s, str(lake)) for s in sources]
    by_ref = dict(zip(pending, sources))
    results = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            res = ray.get(done[0])
        except Exception as e:  # noqa: BLE001 - a worker that died still leaves a record
            src = by_ref[done[0]]
            res = _write_failure(src, lake, "unknown", "unknown", f"task failed: {type(e).__name__}: {e}")
        results.append(res)
        if on_result:
            on_result(res)
    return results
