"""Runs the detectors of this folder over a run in embedded DuckDB.

A detector is one `*.sql` file here: a header of `-- key: value` lines (id,
title, severities, needs, uses, relevant, proves; an indented `--   ` line
continues the key above it) and one SELECT returning some of the finding
columns below, by name; the runner fills the others with NULL. Adding a
detector is adding a file.

Shared building blocks are modules in views/ (one file each, named by its
stem): a header `-- module: NAME` and `-- uses: a, b` (the modules it builds
on), then CREATE statements. A detector's `uses` names the modules it reads;
the runner loads each module once per connection, after the modules it uses
(like Perfetto's INCLUDE PERFETTO MODULE). Timelines that several detectors
read are TEMP TABLEs, so they are computed once per `detect`. Names starting
with `_` are a module's private helpers. Named constants (MADV_DONTNEED() ...)
are macros from pipeline.constants.

`needs` lists the tables a detector cannot work without, `;` between
requirements and `|` between alternatives: `dma; discards | mmu_notifier`.
A detector whose needs are not met is reported as not run, never as clean.
`relevant` (same syntax, over tables or module relations) says which rows it
reasons about; a detector that ran with none of them is "ran: no relevant
events", not "ran: none".
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.constants import sql_macros
from pipeline.runstore import Run
from pipeline.schema import FAMILIES, FINDING_SCHEMA, SEVERITIES

QUERIES_DIR = Path(__file__).parent
VIEWS_DIR = QUERIES_DIR / "views"

# What a detector's SELECT may return; the runner adds detector, finding_id and related.
DETECTOR_COLUMNS = ("kind", "severity", "pid", "comm", "ts_start_ns", "ts_end_ns",
                    "gpa_start", "gpa_end", "hva_start", "hva_end", "iova_start", "iova_end",
                    "event_ids", "message")
REQUIRED_COLUMNS = ("kind", "severity", "event_ids", "message")
HEADER_KEYS = ("id", "title", "severities", "needs", "uses", "relevant", "proves")
OPTIONAL_KEYS = ("relevant",)   # defaults to `needs`
MODULE_KEYS = ("module", "uses")
# At most this many related finding ids per finding (the evidence they share can be huge).
RELATED_CAP = 8


class DetectorError(Exception):
    """A detector file that cannot be loaded or run; the message names the file."""


@dataclass(frozen=True)
class Detector:
    id: str
    title: str
    severities: tuple[str, ...]
    needs: tuple[tuple[str, ...], ...]
    proves: str
    path: Path
    sql: str
    uses: tuple[str, ...] = ()
    relevant: tuple[tuple[str, ...], ...] = ()

    def missing(self, rows: dict[str, int]) -> list[str]:
        """Requirements not met by a run with these row counts, e.g. ['dma', 'discards | mmu_notifier']."""
        return [" | ".join(alts) for alts in self.needs if not any(rows.get(t, 0) for t in alts)]


def _parse_header(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """The `-- key: value` header (continuations indented `--   `) and the SQL after it."""
    header: dict[str, str] = {}
    key = None
    lines = path.read_text().splitlines()
    body_start = len(lines)
    for i, line in enumerate(lines):
        m = re.match(r"--\s?(\w+):\s*(.*)$", line)
        if m and m.group(1) in keys:
            key = m.group(1)
            header[key] = m.group(2).strip()
        elif line.startswith("--   ") and key:
            header[key] += " " + line[2:].strip()
        else:
            body_start = i
            break
    return header, "\n".join(lines[body_start:]).strip().rstrip(";")


def _requirements(text: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(t.strip() for t in req.split("|")) for req in text.split(";") if req.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@dataclass(frozen=True)
class Module:
    """A shared SQL building block: views/NAME.sql."""
    name: str
    uses: tuple[str, ...]
    path: Path
    sql: str


def load_modules(folder: Path = VIEWS_DIR) -> dict[str, Module]:
    modules = {}
    for path in sorted(folder.glob("*.sql")):
        header, sql = _parse_header(path, MODULE_KEYS)
        if header.get("module") != path.stem:
            raise DetectorError(f"{path}: header must start with `-- module: {path.stem}`")
        modules[path.stem] = Module(path.stem, _names(header.get("uses", "")), path, sql)
    for m in modules.values():
        unknown = [u for u in m.uses if u not in modules]
        if unknown:
            raise DetectorError(f"{m.path}: uses unknown module(s) {', '.join(unknown)}")
    return modules


def module_order(wanted: list[str] | tuple[str, ...], modules: dict[str, Module]) -> list[Module]:
    """The modules `wanted` needs, each after the modules it uses; a cycle is an error."""
    order: list[Module] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise DetectorError(f"module cycle: {' -> '.join(chain + (name,))}")
        state[name] = "visiting"
        for dep in modules[name].uses:
            visit(dep, chain + (name,))
        state[name] = "done"
        order.append(modules[name])

    for name in wanted:
        if name not in modules:
            raise DetectorError(f"unknown module {name!r} (modules: {', '.join(sorted(modules))})")
        visit(name, ())
    return order


def parse_detector(path: Path) -> Detector:
    header, sql = _parse_header(path, HEADER_KEYS)
    header.setdefault("relevant", header.get("needs", ""))
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise DetectorError(f"{path}: header lacks {', '.join(missing)}")
    severities = tuple(s.strip() for s in header["severities"].split(","))
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise DetectorError(f"{path}: header 'severities' names unknown {', '.join(bad)}")
    tables = {f.name for f in FAMILIES}
    needs = _requirements(header["needs"])
    # An empty `needs:` is a detector about the run itself: it always runs.
    unknown = [t for req in needs for t in req if t not in tables]
    if unknown:
        raise DetectorError(f"{path}: header 'needs' names unknown table(s) {', '.join(unknown)}")
    uses = _names(header["uses"])
    modules = load_modules()
    unknown = [u for u in uses if u not in modules]
    if unknown:
        raise DetectorError(f"{path}: header 'uses' names unknown module(s) {', '.join(unknown)}")
    return Detector(header["id"], header["title"], severities, needs, header["proves"], path, sql,
                    uses, _requirements(header["relevant"]))


def load_detectors(folder: Path = QUERIES_DIR) -> list[Detector]:
    detectors = [parse_detector(p) for p in sorted(folder.glob("*.sql"))]
    ids = [d.id for d in detectors]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise DetectorError(f"{folder}: detector id(s) used twice: {', '.join(sorted(dup))}")
    return sorted(detectors, key=lambda d: (len(d.id), d.id))


def memory_settings() -> tuple[str, str]:
    """DuckDB's memory_limit and temp_directory for detection: a big run spills to disk instead of
    being OOM-killed. VMEMTRACE_DETECT_MEMORY (e.g. "4GB") and VMEMTRACE_DETECT_TMP override."""
    limit = os.environ.get("VMEMTRACE_DETECT_MEMORY")
    if not limit:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        # Half the machine, at most 6 GiB: detection stays under the 8 GB budget of issue 13 with
        # DuckDB's own overhead on top, and leaves the rest of the machine to the collectors.
        limit = f"{min(total // 2, 6 << 30) >> 20}MB"
    tmp = os.environ.get("VMEMTRACE_DETECT_TMP") or os.path.join(tempfile.gettempdir(), "vmemtrace-duckdb")
    return limit, tmp


def _size_bytes(text: str) -> int:
    """DuckDB's size notation ("6144MB", "4GB", "512MiB") in bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", text, re.I)
    if not m:
        raise DetectorError(f"cannot read the memory size {text!r} (e.g. 4GB, 512MB)")
    unit = (1024 if m.group(3) else 1000) ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * unit)


def decoded_bytes(run: Run) -> int:
    """The run's columns as DuckDB holds them once decoded: the Parquet footers' uncompressed sizes."""
    total = 0
    for fam in FAMILIES:
        for f in run.good_chunks(fam.name):
            meta = pq.read_metadata(f)  # once per chunk, not once per row group
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def capacity_shortfall(run_bytes: int, memory_bytes: int, spill_free_bytes: int) -> str | None:
    """Why a detection of a run whose decoded columns take `run_bytes` cannot fit, or None.

    The shared modules materialise the run's discards and guest accesses (host_discards,
    vcpu_accesses; translations and pairings are done only for the few rows a detector keeps):
    in the mixed 100M-event benchmark run, 60M of its 100M rows, about its decoded size once
    DuckDB flattens their strings, held at once. What DuckDB cannot keep under its memory limit
    it spills to its temp directory; when even that is short, detection would fail hours in, so
    it is refused up front instead. A necessary condition, not a guarantee: a detector's own
    joins come on top."""
    if run_bytes <= memory_bytes + spill_free_bytes:
        return None
    gib = 1 << 30
    return (f"this run's columns take {run_bytes / gib:.1f} GiB decoded; detection holds about that "
            f"at once, and has {memory_bytes / gib:.1f} GiB of memory (VMEMTRACE_DETECT_MEMORY) plus "
            f"{spill_free_bytes / gib:.1f} GiB free to spill to (VMEMTRACE_DETECT_TMP): free disk "
            "there, point VMEMTRACE_DETECT_TMP at a larger disk, or detect a shorter slice of the run")


def connect(run: Run, include: list[str] | tuple[str, ...] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per event family over the run's Parquet, the constants as
    macros, `sessions`, and the shared modules in `include` (all of them when None) with the
    modules they use."""
    con = duckdb.connect()
    limit, tmp = memory_settings()
    os.makedirs(tmp, exist_ok=True)
    con.execute(f"SET memory_limit = '{limit}'")
    con.execute("SET temp_directory = ?", [tmp])
    con.execute("SET preserve_insertion_order = false")
    # DuckDB plans an ASOF join whose left side it estimates small as a nested loop over the whole
    # right side (windows x every vCPU run); the estimate is often wrong by orders of magnitude, and
    # the sort-merge ASOF stays linear whatever the sizes.
    con.execute("SET asof_loop_join_threshold = 0")
    run.create_views(con)
    con.execute(sql_macros())
    con.register("_sessions", sessions_table(run))
    con.execute("CREATE VIEW sessions AS SELECT * FROM _sessions")
    con.execute("CREATE TEMP TABLE _loaded_modules (name VARCHAR)")
    modules = load_modules()
    include_modules(con, list(modules) if include is None else include, modules)
    return con


def include_modules(con: duckdb.DuckDBPyConnection, wanted, modules: dict[str, Module] | None = None) -> None:
    """Load the modules `wanted` (and what they use) that this connection has not loaded yet."""
    modules = load_modules() if modules is None else modules
    loaded = {r[0] for r in con.execute("SELECT name FROM _loaded_modules").fetchall()}
    for m in module_order(wanted, modules):
        if m.name in loaded:
            continue
        try:
            con.execute(m.sql)
        except duckdb.Error as e:
            raise DetectorError(f"{m.path}: {e}") from e
        con.execute("INSERT INTO _loaded_modules VALUES (?)", [m.name])


def sessions_table(run: Run) -> pa.Table:
    """The manifest's sessions as a table, for detectors that judge the run itself."""
    rows = []
    for s in run.manifest.get("sessions", []):
        state = run.session_state(s)
        clock = s.get("clock") if isinstance(s.get("clock"), dict) else {}
        traced = s.get("traced") if isinstance(s.get("traced"), dict) else {}
        versions = [traced.get("qemu_version")] + [b.get("version") for b in traced.get("qemu_binaries") or []
                                                   if isinstance(b, dict)]
        known = [v for v in (_qemu_version(v) for v in versions) if v]
        rows.append({"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                     "state": state, "missing": s.get("missing", []),
                     "start_ns": s.get("monotonic_start_ns"), "end_ns": s.get("monotonic_end_ns"),
                     "clock_domain": clock.get("domain"),
                     "clock_alignment": clock.get("alignment"), "clock_residual_ns": clock.get("residual_ns"),
                     "clock_matched": clock.get("matched_events"),
                     "pid": s.get("pid"),
                     # The oldest QEMU the session names: a property every traced binary has.
                     "qemu_major": min(known)[0] if known else None,
                     "qemu_minor": min(known)[1] if known else None})
    return pa.Table.from_pylist(rows, schema=SESSIONS_SCHEMA)


def _qemu_version(text) -> tuple[int, int] | None:
    m = re.match(r"\s*(?:v|QEMU emulator version )?(\d+)\.(\d+)", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


SESSIONS_SCHEMA = pa.schema([
    ("session", pa.int32()), ("source", pa.string()), ("kind", pa.string()), ("state", pa.string()),
    ("missing", pa.list_(pa.string())), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
    ("clock_domain", pa.string()),
    ("clock_alignment", pa.string()), ("clock_residual_ns", pa.int64()), ("clock_matched", pa.int64()),
    ("pid", pa.int32()), ("qemu_major", pa.int32()), ("qemu_minor", pa.int32()),
])


@dataclass
class DetectorStatus:
    id: str
    title: str
    status: str                 # "ran", "not run" or "error"
    missing: list[str] = field(default_factory=list)
    error: str | None = None
    findings: int = 0
    by_severity: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # For a detector that ran: "findings", "none" (it judged relevant events and found nothing) or
    # "no relevant events" (its tables had rows, none of the kinds it reasons about).
    outcome: str | None = None
    relevant_missing: list[str] = field(default_factory=list)


@dataclass
class DetectResult:
    findings: pa.Table
    statuses: list[DetectorStatus]


def _relevant_missing(con: duckdb.DuckDBPyConnection, det: Detector) -> list[str]:
    """The `relevant` requirements with no row at all."""
    def has_rows(name: str) -> bool:
        # A count, not EXISTS / LIMIT 1: DuckDB 2.0 drops the LIMIT over a view built on a table
        # macro (query_table) and answers EXISTS wrongly there.
        return con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0] > 0

    return [" | ".join(alts) for alts in det.relevant if not any(has_rows(t) for t in alts)]


def _run_one(con: duckdb.DuckDBPyConnection, det: Detector) -> pa.Table:
    try:
        produced = [r[0] for r in con.execute(f"DESCRIBE ({det.sql})").fetchall()]
    except duckdb.Error as e:
        raise DetectorError(f"{det.path}: {e}") from e
    extra = sorted(set(produced) - set(DETECTOR_COLUMNS))
    if extra:
        raise DetectorError(f"{det.path}: returns column(s) {', '.join(extra)} that findings do not have")
    lacking = [c for c in REQUIRED_COLUMNS if c not in produced]
    if lacking:
        raise DetectorError(f"{det.path}: returns no {', '.join(lacking)}")
    # Columns the detector does not produce are NULL of the findings schema's type, by name.
    cols = ", ".join(c if c in produced else f"NULL::{_duck_type(FINDING_SCHEMA.field(c).type)} AS {c}"
                     for c in DETECTOR_COLUMNS)
    # The digest covers the evidence and the ranges, so re-running on the same run gives the same ids.
    sql = f"""
        SELECT '{det.id}-' || substr(md5(concat_ws('|', kind, list_sort(event_ids)::VARCHAR,
                   gpa_start, hva_start, iova_start)), 1, 12) AS finding_id,
               '{det.id}' AS detector, *
        FROM (SELECT {cols} FROM ({det.sql}) AS detector_output)
    """
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise DetectorError(f"{det.path}: {e}") from e


def _duck_type(t: pa.DataType) -> str:
    return {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.uint64(): "UBIGINT", pa.string(): "VARCHAR"}[t]


def _link_related(con: duckdb.DuckDBPyConnection, findings: pa.Table) -> pa.Table:
    """Fill `related`: up to RELATED_CAP other findings that share an evidence event.

    Each event keeps only the first RELATED_CAP + 1 findings citing it, so the pairs built are
    bounded by (evidence rows x cap), never by the square of the findings sharing one event."""
    con.register("_findings", findings)
    related = con.sql(f"""
        WITH ev AS (SELECT DISTINCT finding_id, unnest(event_ids) AS event_id FROM _findings),
        per_event AS (
            SELECT event_id, list(finding_id ORDER BY finding_id)[1:{RELATED_CAP + 1}] AS ids
            FROM ev GROUP BY event_id HAVING count(*) > 1
        )
        SELECT ev.finding_id,
               list_sort(list_distinct(flatten(list(list_filter(p.ids, lambda x: x <> ev.finding_id)))))[1:{RELATED_CAP}]
                   AS related
        FROM ev JOIN per_event p USING (event_id)
        GROUP BY ev.finding_id
    """).to_arrow_table()
    con.unregister("_findings")
    con.register("_findings", findings)
    con.register("_related", related)
    out = con.sql("""
        SELECT f.*, coalesce(r.related, []::VARCHAR[]) AS related
        FROM _findings f LEFT JOIN _related r USING (finding_id)
    """).to_arrow_table()
    con.unregister("_findings")
    con.unregister("_related")
    return out


def run_detectors(run: Run, detectors: list[Detector] | None = None,
                  progress: Callable[[Detector], None] | None = None) -> DetectResult:
    detectors = load_detectors() if detectors is None else detectors
    limit, tmp = memory_settings()
    os.makedirs(tmp, exist_ok=True)
    short = capacity_shortfall(decoded_bytes(run), _size_bytes(limit), shutil.disk_usage(tmp).free)
    if short:
        raise DetectorError(f"{run.path}: not started: {short}")
    con = connect(run, include=())
    modules = load_modules()
    rows = run.row_counts()
    tables, statuses = [], []
    for det in detectors:
        st = DetectorStatus(det.id, det.title, "ran")
        statuses.append(st)
        st.missing = det.missing(rows)
        if st.missing:
            st.status = "not run"
            continue
        if progress:
            progress(det)
        t0 = time.perf_counter()
        # Modules load once per connection: the first detector that uses one pays for it.
        include_modules(con, det.uses, modules)
        out = _run_one(con, det)
        st.relevant_missing = _relevant_missing(con, det)
        st.seconds = time.perf_counter() - t0
        if out.column("event_ids").null_count or out.column("message").null_count:
            raise DetectorError(f"{det.path}: returned a finding without event_ids or message")
        bad = set(out.column("severity").to_pylist()) - set(det.severities)
        if bad:
            raise DetectorError(f"{det.path}: emitted severity {', '.join(sorted(map(str, bad)))} "
                                f"not declared in its header ({', '.join(det.severities)})")
        st.findings = out.num_rows
        for sev in out.column("severity").to_pylist():
            st.by_severity[sev] = st.by_severity.get(sev, 0) + 1
        st.outcome = ("findings" if st.findings else
                      "no relevant events" if st.relevant_missing else "none")
        tables.append(out)

    base = FINDING_SCHEMA.remove(FINDING_SCHEMA.get_field_index("related"))
    findings = (pa.concat_tables([t.select(base.names).cast(base) for t in tables])
                if tables else base.empty_table())
    findings = _link_related(con, findings).select(FINDING_SCHEMA.names).cast(FINDING_SCHEMA)
    rank = pc.index_in(findings.column("severity"), value_set=pa.array(SEVERITIES))
    findings = (findings.append_column("_rank", rank)
                .sort_by([("_rank", "ascending"), ("detector", "ascending"),
                          ("ts_start_ns", "ascending"), ("finding_id", "ascending")])
                .drop_columns(["_rank"]))
    return DetectResult(findings, statuses)
