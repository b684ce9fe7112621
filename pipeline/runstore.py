"""The run store: a directory of Parquet chunks, one folder per event family, plus manifest.json.

    RUN/manifest.json
    RUN/discards/part-0001-000001.parquet     (session 1, chunk 1)
    RUN/findings/findings.parquet             (written by `vmemtrace detect`)

Chunks are written to a temporary name and renamed, so a reader never sees a
half-written file and a writer killed mid-run loses at most the rows it had not
flushed. The manifest is rewritten (also by rename) when a session starts,
after every chunk and when the session ends; a session still marked
`running` whose writer process is gone is reported as stopped uncleanly.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.schema import FAMILIES, FAMILY_BY_NAME, SCHEMA_VERSION, Family

MANIFEST = "manifest.json"
RUN_FORMAT = "vmemtrace-run"


class RunError(Exception):
    """A run directory that cannot be read or written as asked; the message says why."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def tool_versions() -> dict[str, str]:
    import duckdb

    versions = {"vmemtrace": __version__, "python": platform.python_version(),
                "pyarrow": pa.__version__, "duckdb": duckdb.__version__}
    bcc = sys.modules.get("bcc")
    if bcc is not None:
        versions["bcc"] = getattr(bcc, "__version__", "unknown")
    return versions


_DUCK_TYPES = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER",
               pa.uint64(): "UBIGINT", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}


@dataclass
class Run:
    """A run opened for reading."""

    path: Path
    manifest: dict[str, Any]

    def session_state(self, session: dict[str, Any]) -> str:
        """A session's state now: one its writer left `running` is `unclean` once that writer is gone."""
        if session.get("state") != "running":
            return session.get("state", "unclean")
        w = session.get("writer", {})
        alive = w.get("boot_id") == _boot_id() and _pid_alive(int(w.get("pid", 0)))
        return "running" if alive else "unclean"

    @property
    def state(self) -> str:
        """`clean`, `unclean` or `running` over all sessions that wrote this run."""
        states = {self.session_state(s) for s in self.manifest.get("sessions", [])}
        for state in ("unclean", "running"):
            if state in states:
                return state
        return "clean"

    def family_dir(self, family: str) -> Path:
        return self.path / family

    def chunk_files(self, family: str) -> list[Path]:
        return sorted(self.family_dir(family).glob("part-*.parquet"))

    def read_family(self, family: str) -> pa.Table:
        files = self.chunk_files(family)
        schema = FAMILY_BY_NAME[family].schema
        if not files:
            return schema.empty_table()
        return pa.concat_tables(conform(FAMILY_BY_NAME[family], pq.read_table(f)).cast(schema) for f in files)

    def row_counts(self) -> dict[str, int]:
        return {f.name: sum(pq.ParquetFile(p).metadata.num_rows for p in self.chunk_files(f.name))
                for f in FAMILIES}

    def create_views(self, con) -> None:
        """One DuckDB view per event family over this run's chunks, with every column of the schema."""
        for fam in FAMILIES:
            files = [str(p) for p in self.chunk_files(fam.name)]
            if not files:
                con.register(f"_empty_{fam.name}", fam.schema.empty_table())
                con.execute(f"CREATE VIEW {fam.name} AS SELECT * FROM _empty_{fam.name}")
                continue
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            # Chunks written by an older schema lack the newer columns: those read as NULL.
            present = set().union(*(pq.read_schema(f).names for f in files))
            cols = ", ".join(f'"{f.name}"' if f.name in present else f'NULL::{_DUCK_TYPES[f.type]} AS "{f.name}"'
                             for f in fam.schema)
            con.execute(f"CREATE VIEW {fam.name} AS SELECT {cols} "
                        f"FROM read_parquet([{listing}], union_by_name = true)")

    def max_event_id(self) -> int:
        """Largest event id in any chunk (from Parquet statistics; no data is read)."""
        best = 0
        for fam in FAMILIES:
            for p in self.chunk_files(fam.name):
                meta = pq.ParquetFile(p).metadata
                col = meta.schema.to_arrow_schema().get_field_index("event_id")
                for rg in range(meta.num_row_groups):
                    stats = meta.row_group(rg).column(col).statistics
                    if stats is not None and stats.has_min_max:
                        best = max(best, int(stats.max))
        return best


def open_run(path: str | os.PathLike) -> Run:
    """Open a run for reading; fails with a message naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunError(f"{path}: not a vmemtrace run ({MANIFEST} is missing)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{mpath}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(manifest, dict):
        raise RunError(f"{mpath}: not a JSON object")
    if manifest.get("format") != RUN_FORMAT:
        raise RunError(f"{mpath}: field 'format' is {manifest.get('format')!r}, expected {RUN_FORMAT!r}")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise RunError(f"{mpath}: field 'schema_version' is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise RunError(f"{path}: run has schema version {version}, this vmemtrace reads up to "
                       f"{SCHEMA_VERSION}; upgrade vmemtrace to read it")
    return Run(path, manifest)


def _new_manifest() -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"hostname": socket.gethostname(), "kernel": platform.release(),
                 "machine": platform.machine()},
        "sessions": [],
        "families": {f.name: {"rows": 0, "chunks": 0} for f in FAMILIES},
        "lost": {},
        "next_event_id": 1,
    }


@dataclass
class _Buffer:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0


class RunWriter:
    """Appends events to a run, one session at a time.

    `write(family, table)` takes an Arrow table (or a dict of columns) with the
    family's columns; missing nullable columns are filled with nulls and rows
    without an event_id get the next free ids. Rows are buffered and flushed as a
    chunk when `chunk_rows` are waiting or `chunk_seconds` have passed.
    Use as a context manager: an exception marks the session unclean.
    """

    def __init__(self, path: str | os.PathLike, *, source: str, kind: str,
                 chunk_rows: int = 262_144, chunk_seconds: float = 2.0,
                 info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.chunk_seconds = chunk_seconds
        self._buffers = {f.name: _Buffer() for f in FAMILIES}
        self._last_flush = time.monotonic()
        self._closed = False

        if (self.path / MANIFEST).exists():
            run = open_run(self.path)
            self.manifest = run.manifest
            if run.state == "running":
                raise RunError(f"{self.path}: another vmemtrace process is still writing this run")
            for s in self.manifest["sessions"]:
                if s.get("state") == "running":
                    s["state"] = "unclean"
            self.manifest["schema_version"] = SCHEMA_VERSION
            self._next_id = max(int(self.manifest.get("next_event_id", 1)), run.max_event_id() + 1)
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise RunError(f"{self.path}: exists, is not empty and has no {MANIFEST}; "
                               "refusing to write a run into it")
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = _new_manifest()
            self._next_id = 1

        self._session_first_id = self._next_id
        self.session_no = len(self.manifest["sessions"]) + 1
        self._chunk_no = 0
        self.session: dict[str, Any] = {
            "session": self.session_no, "source": source, "kind": kind, "state": "running",
            "writer": {"pid": os.getpid(), "boot_id": _boot_id()},
            "tools": tool_versions(),
            "monotonic_start_ns": monotonic_ns(), "realtime_start_ns": time.time_ns(),
            "monotonic_end_ns": None, "realtime_end_ns": None,
            "rows": {}, "lost": {},
            **(info or {}),
        }
        self.manifest["sessions"].append(self.session)
        self._save_manifest()

    # -- writing -----------------------------------------------------------------------------

    def write(self, family: str, data: pa.Table | dict[str, Any]) -> None:
        fam = FAMILY_BY_NAME[family]
        table = conform(fam, data if isinstance(data, pa.Table) else pa.table(data))
        if table.num_rows == 0:
            return
        table = self._assign_ids(table).cast(fam.schema)
        buf = self._buffers[family]
        buf.tables.append(table)
        buf.rows += table.num_rows
        if buf.rows >= self.chunk_rows:
            self._flush_family(family, whole_chunks_only=True)
        if time.monotonic() - self._last_flush >= self.chunk_seconds:
            self.flush()

    def count_lost(self, family: str, count: int, reason: str, *, ts_ns: int | None = None) -> None:
        """Record `count` lost events of `family` as a lost_events row and in the manifest."""
        if count <= 0:
            return
        self.write("lost_events", {
            "ts_ns": [ts_ns if ts_ns is not None else monotonic_ns()], "pid": [0], "tid": [0],
            "comm": [""], "source": [self.session["source"]],
            "family": [family], "count": [count], "reason": [reason]})
        for d in (self.manifest["lost"], self.session["lost"]):
            d[family] = d.get(family, 0) + count

    def update_session(self, **info: Any) -> None:
        """Merge facts about this session (sources attached, missing, clocks) into the manifest."""
        self.session.update(info)
        self._save_manifest()

    def flush(self) -> None:
        for name, buf in self._buffers.items():
            if buf.rows:
                self._flush_family(name)
        self._last_flush = time.monotonic()

    def close(self, *, clean: bool = True) -> None:
        if self._closed:
            return
        self.flush()
        self.session["state"] = "clean" if clean else "unclean"
        self.session["monotonic_end_ns"] = monotonic_ns()
        self.session["realtime_end_ns"] = time.time_ns()
        self._closed = True
        self._save_manifest()

    def abort(self) -> None:
        """Drop buffered rows and mark the session unclean; chunks already written stay."""
        for buf in self._buffers.values():
            buf.tables.clear()
            buf.rows = 0
        self.close(clean=False)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(clean=True)
        else:
            self.abort()

    # -- internals ---------------------------------------------------------------------------

    def _assign_ids(self, table: pa.Table) -> pa.Table:
        ids = table.column("event_id")
        missing = ids.null_count
        if missing == 0:
            if pc.min(ids).as_py() < self._session_first_id:
                raise RunError(f"{self.path}: event ids below {self._session_first_id} are already used "
                               "in this run; give higher ids or leave event_id out")
            self._next_id = max(self._next_id, pc.max(ids).as_py() + 1)
            return table
        if missing != table.num_rows:
            raise RunError("event_id must be given for all rows of a write or for none")
        new = pa.array(range(self._next_id, self._next_id + table.num_rows), pa.int64())
        self._next_id += table.num_rows
        return table.set_column(table.schema.get_field_index("event_id"), table.schema.field("event_id"), new)

    def _flush_family(self, family: str, *, whole_chunks_only: bool = False) -> None:
        """Write the buffered rows as chunks of at most chunk_rows; keep a short tail if asked."""
        buf = self._buffers[family]
        table = pa.concat_tables(buf.tables)
        n = self.chunk_rows
        cut = (table.num_rows // n) * n if whole_chunks_only else table.num_rows
        rest = table.slice(cut)
        buf.tables = [rest] if rest.num_rows else []
        buf.rows = rest.num_rows
        for start in range(0, cut, n):
            self._write_chunk(family, table.slice(start, min(n, cut - start)))
        self._save_manifest()

    def _write_chunk(self, family: str, table: pa.Table) -> None:
        self._chunk_no += 1
        folder = self.path / family
        folder.mkdir(exist_ok=True)
        final = folder / f"part-{self.session_no:04d}-{self._chunk_no:06d}.parquet"
        tmp = folder / f".{final.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        fam = self.manifest["families"].setdefault(family, {"rows": 0, "chunks": 0})
        fam["rows"] += table.num_rows
        fam["chunks"] += 1
        self.session["rows"][family] = self.session["rows"].get(family, 0) + table.num_rows

    def _save_manifest(self) -> None:
        self.manifest["next_event_id"] = self._next_id
        _write_json_atomic(self.path / MANIFEST, self.manifest)


def conform(fam: Family, table: pa.Table) -> pa.Table:
    """Return `table` with exactly the family's columns, in order and of its types.

    Unknown columns are an error (they would be silently lost); missing nullable
    columns become nulls; missing required columns are an error naming them.
    """
    schema = fam.schema
    unknown = set(table.column_names) - set(schema.names)
    if unknown:
        raise RunError(f"{fam.name}: unknown column(s) {', '.join(sorted(unknown))}")
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        elif f.nullable or f.name == "event_id":
            arrays.append(pa.nulls(table.num_rows, f.type))
        else:
            raise RunError(f"{fam.name}: required column {f.name!r} is missing")
    # event_id may be null until _assign_ids fills it, so the schema is loosened for that one column.
    loose = schema.set(0, schema.field("event_id").with_nullable(True))
    return pa.Table.from_arrays(arrays, schema=loose).cast(loose)
