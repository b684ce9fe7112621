"""The run store: a directory of Parquet chunks, one folder per event family, plus manifest.json.

    RUN/manifest.json                         (pipeline/manifest.py: its shape)
    RUN/discards/part-0001-000001.parquet     (session 1, chunk 1)
    RUN/.staging-0002/discards/...            (session 2's chunks until it commits; hidden)
    RUN/findings/                             (pipeline/findings_store.py)

One writer at a time, enforced by the OS: a writer holds flock(LOCK_EX) on the run directory for
its whole life; a second writer fails at once (RunLockedError naming the holder's pid). The lock
goes when the writer's process exits, so a killed or zombie writer holds nothing.

Every row passes the write gate (schema.check_rows) before it is buffered: a violation raises
InvalidRowsError naming family, row within the write, column and value.

Two ways a session's chunks reach the run:
- committed as written (collector sessions, the default for kind="collector"): each chunk is
  renamed into its family folder when flushed and the manifest is rewritten, so a collector
  killed with SIGKILL keeps every chunk it flushed and its session reads as `unclean`.
- staged (importer sessions, the default for kind="importer"): chunks go to RUN/.staging-NNNN/
  and the session enters the manifest only at close(): the manifest (listing the session) is
  written first, then the chunks are renamed into place. An import that fails or is killed before
  that leaves the run byte-identical (a new run directory it created is removed); one killed
  between the two steps is completed by readers (they read a committed session's staged chunks)
  and by the next writer (it moves them into place).

Event ids are unique across all families of a run. Rows without an event_id get the next free
ids. Ids given by the input are kept when free: each must be at least the first id free when the
session started (ids below are used by earlier sessions), at most MAX_GIVEN_EVENT_ID (so that no
input can push the run's ids to the int64 limit), and not used earlier in the session;
otherwise the write is refused with a message saying so (leave event_id out to have ids assigned).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.errors import (DamagedChunkError, DiskFullError, DuplicateInputError, InvalidRowsError,  # noqa: F401
                             ManifestError, RunError, RunLockedError, StaleFindingsError)
from pipeline.manifest import MANIFEST, RUN_FORMAT, new_manifest, normalise, validate
from pipeline.schema import (FAMILIES, FAMILY_BY_NAME, SCHEMA_VERSION, Family, Violation, check_rows,
                             loose_int_array)

STAGING_PREFIX = ".staging-"
DIR_MODE = 0o755   # no group/world write whatever the umask (umask can only take bits away)
FILE_MODE = 0o644
MAX_GIVEN_EVENT_ID = 1 << 48
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def lock_holder(path: Path) -> int | None:
    """Pid holding the writer lock on run directory `path` (from /proc/locks), or None.

    Read without taking any lock, so looking never gets in a writer's way.
    """
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF"; waiters are marked "->" and hold nothing
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        dev_ino = parts[5].rsplit(":", 1)
        if len(dev_ino) == 2 and dev_ino[1] == str(st.st_ino):
            major, minor = (int(x, 16) for x in dev_ino[0].split(":"))
            if (major, minor) == (os.major(st.st_dev), os.minor(st.st_dev)):
                return int(parts[4])
    return None


class _DirLock:
    """flock(LOCK_EX) on a directory, held until release() or until this object (or the process) goes."""

    def __init__(self, path: Path):
        self.fd = -1
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise RunLockedError(path, lock_holder(path)) from None
        if os.stat(path).st_ino != os.fstat(self.fd).st_ino:  # removed and re-made while we opened it
            self.release()
            raise RunLockedError(path, lock_holder(path))

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.release()


def _no_space(e: OSError) -> bool:
    return e.errno in _NO_SPACE


@contextlib.contextmanager
def _replaced_atomically(path: Path, on_full: str = "") -> Iterator[BinaryIO]:
    """A file handle whose contents replace `path` whole when the block ends (written under a
    temporary name, then renamed; mode FILE_MODE). On any error the temporary file is removed and
    `path` is untouched; ENOSPC becomes DiskFullError (`on_full`: what it adds to the message)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise DiskFullError(path, on_full) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file by temporary name and rename, mode FILE_MODE; ENOSPC becomes DiskFullError."""
    with _replaced_atomically(path, "the previous version of the file is kept") as fh:
        fh.write(data)


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(path: Path, table: pa.Table) -> None:
    """A Parquet file by temporary name and rename, mode FILE_MODE; ENOSPC becomes DiskFullError."""
    with _replaced_atomically(path) as fh:
        # Dictionary-encode only the strings: trying it on every integer column (timestamps, ids,
        # addresses: high cardinality) doubled the cost of writing a collector's chunk.
        pq.write_table(table, fh, compression="zstd",
                       use_dictionary=[f.name for f in table.schema if pa.types.is_string(f.type)])


# How chunks are encoded: chosen for the collector's drain, which writes every event it reads
# (issue 13: 2M events per collector CPU second). A chunk of 262,144 madvise rows: zstd with
# statistics on every column cost 472 ns of CPU and 5.69 bytes an event; this 149 ns and 3.45.
# - LZ4_RAW: a quarter of zstd's CPU; with the integer encoding below it compresses as well.
# - Integers BYTE_STREAM_SPLIT: the bytes of each position grouped, so that the high bytes of
#   timestamps, addresses and ids (nearly constant) compress to little. It keeps the decoded size
#   in the footer (queries/runner.py's memory estimate reads it), where DELTA_BINARY_PACKED would
#   record only the deltas.
# - Strings dictionary-encoded; columns that arrive dictionary-encoded (collectors) are written as
#   they are, with no hashing of every row's value.
# - Min/max statistics on integer columns only: max_event_id() reads event_id's, and DuckDB skips
#   row groups by ts_ns, addresses and pids. String statistics cost ~15 ns an event per column and
#   nothing filters chunks by them.
CHUNK_COMPRESSION = "lz4"  # pyarrow writes Parquet's LZ4_RAW codec for it


def _chunk_options(schema: pa.Schema) -> dict[str, Any]:
    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    return {"compression": CHUNK_COMPRESSION, "write_statistics": ints or False,
            "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)],
            "column_encoding": {name: "BYTE_STREAM_SPLIT" for name in ints}}


def write_chunk(path: Path, table: pa.Table, schema: pa.Schema) -> None:
    """A run chunk of `table` (a family's columns, strings plain or dictionary-encoded) stored with the
    family's `schema`: readers get exactly its types and metadata. By temporary name and rename,
    mode FILE_MODE; ENOSPC becomes DiskFullError."""
    # The footer's Arrow schema is the family's: the one pyarrow would store for the plain table
    # (byte for byte), not the dictionary types of the columns handed in. Parquet stores a
    # dictionary-encoded string column the same way whichever it was given.
    if table.schema.names != schema.names:
        raise ValueError(f"chunk columns {table.schema.names} are not the family's {schema.names}")
    footer = {b"ARROW:schema": base64.b64encode(schema.serialize()), **(schema.metadata or {})}
    with _replaced_atomically(path) as fh:
        with pq.ParquetWriter(fh, table.schema, store_schema=False, **_chunk_options(schema)) as writer:
            writer.add_key_value_metadata(footer)
            # One dictionary per column for the whole chunk: a dictionary that changed between
            # the batches of a chunk would make Parquet fall back to plain strings.
            writer.write_table(table.unify_dictionaries())


def make_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, exist_ok=True)


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


def file_input(path: str | os.PathLike) -> dict[str, Any]:
    """{path, sha256, bytes} of an input file, for a session's `inputs`."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"path": str(path), "sha256": digest, "bytes": os.path.getsize(path)}


_DUCK_TYPES = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER",
               pa.uint64(): "UBIGINT", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}


def duckdb_literal_path(path: Path) -> str:
    """`path` as a DuckDB string literal that read_parquet takes as that one file, never as a glob."""
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in str(path))
    return "'" + escaped.replace("'", "''") + "'"


def chunk_problem(fam: Family, path: Path) -> str | None:
    """Why a chunk cannot be read as family `fam` (zero bytes, not Parquet, wrong columns), or None."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        schema = pq.read_schema(path)
    except OSError as e:
        return e.strerror or str(e)
    except (pa.ArrowException, ValueError) as e:
        return f"not a readable Parquet file ({e})"
    want = fam.schema
    for name in schema.names:
        if name not in want.names:
            return f"wrong columns: {name!r} is not a column of {fam.name}"
    for f in want:
        if f.name in schema.names:
            got = schema.field(f.name).type
            if got != f.type:
                return f"wrong columns: {f.name!r} is {got}, expected {f.type}"
        elif not f.nullable and f.name in {e.name for e in want[:6]}:
            # Chunks of an older schema may lack newer (nullable) columns, never the envelope.
            return f"wrong columns: required column {f.name!r} is missing"
    return None


@dataclass
class Run:
    """A run opened for reading. Nothing here writes into the run directory."""

    path: Path
    manifest: dict[str, Any]
    skip_damaged: bool = False
    damaged: list[tuple[str, str, str]] = field(default_factory=list)  # (family, file, reason)
    viewed_fingerprint: str | None = None  # the run's state when create_views read it

    def writer_pid(self) -> int | None:
        """Pid of the process writing this run now, if any."""
        return lock_holder(self.path)

    def session_state(self, session: dict[str, Any]) -> str:
        """A session's state now: one its writer left `running` is `unclean` once that writer is gone."""
        if session.get("state") != "running":
            return session.get("state", "unclean")
        w = session.get("writer", {})
        holder = self.writer_pid()
        return "running" if holder is not None and holder == w.get("pid") else "unclean"

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
        """Every chunk of the family, damaged or not; including those of a committed session whose
        writer died before moving them out of staging."""
        files = list(self.family_dir(family).glob("part-*.parquet"))
        committed = len(self.manifest.get("sessions", []))
        for staged in self.path.glob(STAGING_PREFIX + "*"):
            if _staging_session(staged) <= committed:
                files += (staged / family).glob("part-*.parquet")
        return sorted(files, key=lambda p: p.name)

    def good_chunks(self, family: str, *, skip_damaged: bool | None = None) -> list[Path]:
        """The family's chunks that can be read; a damaged one raises DamagedChunkError or, when
        skipping, is recorded in `damaged` and left out."""
        skip = self.skip_damaged if skip_damaged is None else skip_damaged
        fam = FAMILY_BY_NAME[family]
        good = []
        for p in self.chunk_files(family):
            reason = chunk_problem(fam, p)
            if reason is None:
                good.append(p)
                continue
            if not skip:
                raise DamagedChunkError(p, reason)
            entry = (family, str(p), reason)
            if entry not in self.damaged:
                self.damaged.append(entry)
        return good

    def read_family(self, family: str, *, skip_damaged: bool | None = None) -> pa.Table:
        fam = FAMILY_BY_NAME[family]
        files = self.good_chunks(family, skip_damaged=skip_damaged)
        if not files:
            return fam.schema.empty_table()
        tables = []
        for f in files:
            try:
                tables.append(_conform_read(fam, pq.read_table(f)))
            except (pa.ArrowException, OSError) as e:  # footer fine, pages not
                if not (self.skip_damaged if skip_damaged is None else skip_damaged):
                    raise DamagedChunkError(f, f"cannot read its data ({e})") from None
                self.damaged.append((family, str(f), f"cannot read its data ({e})"))
        return pa.concat_tables(tables) if tables else fam.schema.empty_table()

    def row_counts(self, *, skip_damaged: bool | None = None) -> dict[str, int]:
        return {f.name: sum(pq.ParquetFile(p).metadata.num_rows
                            for p in self.good_chunks(f.name, skip_damaged=skip_damaged))
                for f in FAMILIES}

    def fingerprint(self) -> str:
        """Digest of what the run holds: its sessions and its chunk files (name and size).

        Changes whenever a session is added or changes state, or a chunk appears, goes or changes size.
        """
        sessions = [(s.get("session"), s.get("source"), s.get("state"), s.get("rows"))
                    for s in self.manifest.get("sessions", [])]
        chunks = []
        for fam in FAMILIES:
            for p in self.chunk_files(fam.name):
                try:
                    chunks.append((fam.name, p.name, p.stat().st_size))
                except OSError:
                    chunks.append((fam.name, p.name, -1))
        return hashlib.sha256(json.dumps([sessions, chunks], sort_keys=True).encode()).hexdigest()

    def create_views(self, con, *, skip_damaged: bool | None = None) -> None:
        """One DuckDB view per event family over this run's chunks, with every column of the schema,
        and a table damaged_chunks(family, file, reason) of the chunks left out.

        Refuses (RunLockedError) while another process writes the run: findings of a half-written
        run would be kept as if they were the run's. Chunk paths are escaped so that glob
        characters in the run's path never make DuckDB read other files.
        """
        holder = self.writer_pid()
        if holder is not None and holder != os.getpid():
            raise RunLockedError(self.path, holder)
        self.viewed_fingerprint = self.fingerprint()
        for fam in FAMILIES:
            files = self.good_chunks(fam.name, skip_damaged=skip_damaged)
            if not files:
                con.register(f"_empty_{fam.name}", fam.schema.empty_table())
                con.execute(f"CREATE OR REPLACE VIEW {fam.name} AS SELECT * FROM _empty_{fam.name}")
                continue
            listing = ", ".join(duckdb_literal_path(f) for f in files)
            # Chunks written by an older schema lack the newer columns: those read as NULL.
            present = set().union(*(pq.read_schema(f).names for f in files))
            cols = ", ".join(f'"{f.name}"' if f.name in present else f'NULL::{_DUCK_TYPES[f.type]} AS "{f.name}"'
                             for f in fam.schema)
            con.execute(f"CREATE OR REPLACE VIEW {fam.name} AS SELECT {cols} "
                        f"FROM read_parquet([{listing}], union_by_name = true)")
        damaged = pa.table({"family": pa.array([d[0] for d in self.damaged], pa.string()),
                            "file": pa.array([d[1] for d in self.damaged], pa.string()),
                            "reason": pa.array([d[2] for d in self.damaged], pa.string())})
        con.register("_damaged_chunks", damaged)
        con.execute("CREATE OR REPLACE TABLE damaged_chunks AS SELECT * FROM _damaged_chunks")
        con.unregister("_damaged_chunks")

    def max_event_id(self) -> int:
        """Largest event id in any chunk (from Parquet statistics; no data is read)."""
        best = 0
        for fam in FAMILIES:
            for p in self.good_chunks(fam.name):
                meta = pq.ParquetFile(p).metadata
                col = meta.schema.to_arrow_schema().get_field_index("event_id")
                for rg in range(meta.num_row_groups):
                    stats = meta.row_group(rg).column(col).statistics
                    if stats is not None and stats.has_min_max:
                        best = max(best, int(stats.max))
        return best


def _staging_session(path: Path) -> int:
    try:
        return int(path.name[len(STAGING_PREFIX):])
    except ValueError:
        return 1 << 30


def read_manifest(path: Path) -> dict[str, Any]:
    """The run's manifest, checked (format, version, then every field) and normalised to the current shape."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunError(f"{path}: not a vmemtrace run ({MANIFEST} is missing)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{mpath}: not valid JSON (line {e.lineno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise RunError(f"{mpath}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise RunError(f"{mpath}: cannot read ({e.strerror})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise RunError(f"{mpath}: field 'format' is {got!r}, expected {RUN_FORMAT!r}")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise RunError(f"{mpath}: field 'schema_version' is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise RunError(f"{path}: run has schema version {version}, this vmemtrace reads up to "
                       f"{SCHEMA_VERSION}; upgrade vmemtrace to read it")
    normalise(manifest)
    validate(manifest, mpath)
    return manifest


def open_run(path: str | os.PathLike, *, skip_damaged: bool = False) -> Run:
    """Open a run for reading; fails with a message naming what is wrong. Never writes.

    skip_damaged: damaged chunks are left out (listed in Run.damaged and the damaged_chunks
    table) instead of raising DamagedChunkError.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: is a file, not a run directory")
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    return Run(path, read_manifest(path), skip_damaged=skip_damaged)


@dataclass
class _Buffer:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0


class RunWriter:
    """Appends events to a run, one session at a time; the only way anything reaches a run's chunks.

    `write(family, table)` takes an Arrow table (or a dict of columns) with the family's columns;
    missing nullable columns are filled with nulls and rows without an event_id get the next free
    ids. Rows are checked by the write gate, buffered and flushed as a chunk when `chunk_rows` are
    waiting or `chunk_seconds` have passed.

    staged: None = by kind (importer: staged, collector: committed as written); see the module doc.
    inputs: files the session reads; their sha256 is recorded, and a file already imported into
    the run is refused (DuplicateInputError naming the session) unless force=True.
    Use as a context manager: an exception aborts the session (staged: nothing kept; committed:
    flushed chunks kept, session unclean).
    """

    def __init__(self, path: str | os.PathLike, *, source: str, kind: str,
                 chunk_rows: int = 262_144, chunk_seconds: float = 2.0,
                 info: dict[str, Any] | None = None, inputs: Iterable[str | os.PathLike] = (),
                 force: bool = False, staged: bool | None = None):
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.chunk_seconds = chunk_seconds
        self.staged = kind == "importer" if staged is None else staged
        self._buffers = {f.name: _Buffer() for f in FAMILIES}
        self._last_flush = time.monotonic()
        self._closed = False
        self._committed = False
        self._staged_chunks: list[tuple[str, Path]] = []
        self._given_ids = np.empty(0, np.int64)
        self._generated: list[tuple[int, int]] = []  # [start, end) ranges handed out this session

        input_records = [file_input(p) for p in inputs]  # before the lock: hashing may take a while
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: is a file, not a run directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir(mode=DIR_MODE)
            self._created = True
        except FileExistsError:
            self._created = False
        except OSError as e:
            raise RunError(f"{self.path}: cannot create the run directory: {(e.strerror or str(e)).lower()}") from None
        try:
            self._lock = _DirLock(self.path)
        except FileNotFoundError:  # removed by a writer whose new run failed, while we opened it
            raise RunLockedError(self.path, None) from None
        try:
            self._open_under_lock(source, kind, info, input_records, force)
        except OSError as e:
            self._discard()
            if _no_space(e):
                raise DiskFullError(e.filename or self.path) from None
            raise RunError(f"{self.path}: cannot write this run: {(e.strerror or str(e)).lower()} "
                           f"({e.filename or self.path})") from None
        except BaseException:
            self._discard()
            raise

    def _open_under_lock(self, source, kind, info, input_records, force) -> None:
        if (self.path / MANIFEST).exists():
            self.manifest = read_manifest(self.path)
            self._recover_staging()
            for s in self.manifest["sessions"]:
                if s.get("state") == "running":  # we hold the lock: its writer is gone
                    s["state"] = "unclean"
            self.manifest["schema_version"] = SCHEMA_VERSION
            run = Run(self.path, self.manifest, skip_damaged=True)
            self._next_id = max(int(self.manifest.get("next_event_id", 1)), run.max_event_id() + 1)
        else:
            for leftover in self.path.glob(STAGING_PREFIX + "*"):  # an import killed before its first commit
                shutil.rmtree(leftover)
            if any(self.path.iterdir()):
                raise RunError(f"{self.path}: exists, is not empty and has no {MANIFEST}; "
                               "refusing to write a run into it")
            self.manifest = new_manifest()
            self._next_id = 1
        if input_records and not force:
            self._refuse_duplicate_inputs(input_records)

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
            **({"inputs": input_records} if input_records else {}),
            **(info or {}),
        }
        normalise({"sessions": [self.session]})
        # A malformed session is the writer's bug: say so now, before any work.
        validate({**self.manifest, "sessions": self.manifest["sessions"] + [self.session]}, self.path / MANIFEST)
        if self.staged:
            self._staging = self.path / f"{STAGING_PREFIX}{self.session_no:04d}"
            make_dir(self._staging)
        else:
            self.manifest["sessions"].append(self.session)
            self._save_manifest()

    def _refuse_duplicate_inputs(self, records: list[dict[str, Any]]) -> None:
        for s in self.manifest["sessions"]:
            for earlier in s.get("inputs", []):
                for rec in records:
                    if rec["sha256"] == earlier.get("sha256"):
                        raise DuplicateInputError(
                            f"{rec['path']}: already imported into {self.path} by session {s['session']} "
                            f"({s['source']}, as {earlier.get('path')}); importing it again would "
                            "duplicate its events (force to import anyway)")

    def _recover_staging(self) -> None:
        """Finish the commit of a session killed while moving its chunks; drop uncommitted staging."""
        committed = len(self.manifest["sessions"])
        for staged in sorted(self.path.glob(STAGING_PREFIX + "*")):
            if _staging_session(staged) <= committed:
                for chunk in staged.glob("*/part-*.parquet"):
                    make_dir(self.path / chunk.parent.name)
                    os.replace(chunk, self.path / chunk.parent.name / chunk.name)
            shutil.rmtree(staged)

    # -- writing -----------------------------------------------------------------------------

    def write(self, family: str, data: pa.Table | dict[str, Any]) -> None:
        """Check `data` against the schema (InvalidRowsError: nothing of it is kept) and buffer it."""
        self._check_open()
        fam = FAMILY_BY_NAME.get(family)
        if fam is None:
            raise RunError(f"{family!r} is not an event family")
        table = data if isinstance(data, pa.Table) else _table_from_columns(fam, data)
        if table.num_rows == 0:
            return
        violations = check_rows(fam, table)
        if violations:
            raise InvalidRowsError(family, violations)
        table = self._assign_ids(family, conform(fam, table, keep_dictionaries=True))
        table = table.cast(_stored_schema(fam, table.schema))
        buf = self._buffers[family]
        buf.tables.append(table)
        buf.rows += table.num_rows
        if buf.rows >= self.chunk_rows:
            self._flush_family(family, whole_chunks_only=True)
        if time.monotonic() - self._last_flush >= self.chunk_seconds:
            self.flush()

    def count_lost(self, family: str, count: int, reason: str, *, ts_ns: int | None = None) -> None:
        """Record `count` lost events as a lost_events row and in the manifest.

        `family`: a family name, or the name of the source that lost them (see pipeline/manifest.py).
        """
        if count <= 0:
            return
        self.write("lost_events", {
            "ts_ns": [ts_ns if ts_ns is not None else monotonic_ns()], "pid": [0], "tid": [0],
            "comm": [""], "source": [self.session["source"]],
            "family": [family], "count": [count], "reason": [reason]})
        self.session["lost"][family] = self.session["lost"].get(family, 0) + count
        if not self.staged:
            self.manifest["lost"][family] = self.manifest["lost"].get(family, 0) + count

    def update_session(self, **info: Any) -> None:
        """Merge facts about this session (sources attached, missing, clocks) into the manifest."""
        self._check_open()
        self.session.update(info)
        normalise({"sessions": [self.session]})
        if not self.staged:
            self._save_manifest()

    def flush(self) -> None:
        self._check_open()
        for name, buf in self._buffers.items():
            if buf.rows:
                self._flush_family(name)
        self._last_flush = time.monotonic()

    def close(self, *, clean: bool = True) -> None:
        """End the session: flush, then commit (staged) or mark it clean/unclean; release the lock.

        close(clean=False) of a staged session discards it, like abort().
        """
        if self._closed:
            return
        if self.staged and not clean:
            self._discard()
            return
        try:
            self.flush()
            self.session["state"] = "clean" if clean else "unclean"
            self.session["monotonic_end_ns"] = monotonic_ns()
            self.session["realtime_end_ns"] = time.time_ns()
            if self.staged:
                self._commit()
            else:
                self._save_manifest()
        except BaseException as e:
            if not self._closed:  # a failure already handled where it happened has closed the writer
                if self.staged:
                    self._discard()
                else:
                    self._stopped(str(e) if isinstance(e, DiskFullError) else f"error while closing: {e!r}")
            raise
        self._closed = True
        self._lock.release()

    def abort(self) -> None:
        """Staged: drop everything this session wrote. Committed: drop buffered rows, keep flushed
        chunks, mark the session unclean."""
        if self._closed:
            return
        if self.staged:
            self._discard()
            return
        for buf in self._buffers.values():
            buf.tables.clear()
            buf.rows = 0
        self._stopped(None)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(clean=True)
        else:
            self.abort()

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RunError(f"{self.path}: this writer's session has ended")

    def _stopped(self, reason: str | None) -> None:
        """Committed mode: the session ends unclean (saying why, if known) with what was flushed."""
        self.session["state"] = "unclean"
        self.session["monotonic_end_ns"] = monotonic_ns()
        self.session["realtime_end_ns"] = time.time_ns()
        if reason:
            self.session["stopped"] = {"reason": reason}
        if not self.staged:
            try:
                self._save_manifest()
            except (DiskFullError, OSError):
                pass  # the last manifest written stays; it lists every chunk committed before it
        self._closed = True
        self._lock.release()

    def _discard(self) -> None:
        """Leave the run as it was before this writer: staging removed, a directory we created removed."""
        self._closed = True
        for buf in self._buffers.values():
            buf.tables.clear()
            buf.rows = 0
        if self._committed:
            pass  # the manifest lists the session: readers and the next writer finish the move
        elif self._created and not (self.path / MANIFEST).exists():
            shutil.rmtree(self.path, ignore_errors=True)
        elif getattr(self, "_staging", None) is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if hasattr(self, "_lock"):
            self._lock.release()

    def _commit(self) -> None:
        """Staged session: manifest first (it lists the session), then chunks renamed into place."""
        self.manifest["sessions"].append(self.session)
        for family, n in self.session["rows"].items():
            fam = self.manifest["families"].setdefault(family, {"rows": 0, "chunks": 0})
            fam["rows"] += n
            fam["chunks"] += sum(1 for f, _ in self._staged_chunks if f == family)
        for name, n in self.session["lost"].items():
            self.manifest["lost"][name] = self.manifest["lost"].get(name, 0) + n
        try:
            self._save_manifest()
        except BaseException:
            self.manifest["sessions"].pop()
            raise
        self._committed = True
        for family, chunk in self._staged_chunks:
            make_dir(self.path / family)
            os.replace(chunk, self.path / family / chunk.name)
        shutil.rmtree(self._staging)

    def _assign_ids(self, family: str, table: pa.Table) -> pa.Table:
        if table.column("event_id").null_count == table.num_rows:  # collectors give none: no masks
            return table.set_column(0, table.schema.field("event_id"), pa.array(self._new_ids(table.num_rows)))
        ids = table.column("event_id").combine_chunks()
        given_mask = pc.is_valid(ids)
        given = ids.filter(given_mask).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(given):
            self._check_given_ids(family, ids, given)
        missing = len(ids) - len(given)
        if missing == 0:
            return table
        filled = pc.replace_with_mask(ids, pc.invert(given_mask), pa.array(self._new_ids(missing)))
        return table.set_column(table.schema.get_field_index("event_id"), table.schema.field("event_id"), filled)

    def _new_ids(self, count: int) -> np.ndarray:
        """The next `count` free ids, recorded as handed out (one range for consecutive writes)."""
        start = self._next_id
        if self._generated and self._generated[-1][1] == start:
            self._generated[-1] = (self._generated[-1][0], start + count)
        else:
            self._generated.append((start, start + count))
        self._next_id += count
        return np.arange(start, start + count, dtype=np.int64)

    def _check_given_ids(self, family: str, ids: pa.Array, given: np.ndarray) -> None:
        def refuse(bad: np.ndarray, why: str):
            value = int(bad[0])
            row = pc.index(ids, pa.scalar(value, pa.int64())).as_py()
            raise InvalidRowsError(family, [Violation(row, "event_id", value, f"{value}: {why}")])

        low = given[given < self._session_first_id]
        if len(low):
            refuse(low, f"event ids below {self._session_first_id} are already used in this run; give higher "
                        "ids or leave event_id out to have ids assigned")
        high = given[given > MAX_GIVEN_EVENT_ID]
        if len(high):
            refuse(high, f"above {MAX_GIVEN_EVENT_ID}, the largest id an input may give (so that later "
                         "imports keep room for ids); leave event_id out to have ids assigned")
        uniq, counts = np.unique(given, return_counts=True)
        if (counts > 1).any():
            refuse(uniq[counts > 1], "given twice in this write")
        used = given[np.isin(given, self._given_ids)]
        for start, end in self._generated:
            used = np.concatenate([used, given[(given >= start) & (given < end)]])
        if len(used):
            refuse(used, "already used earlier in this session")
        self._given_ids = np.union1d(self._given_ids, given)
        self._next_id = max(self._next_id, int(given.max()) + 1)

    def _flush_family(self, family: str, *, whole_chunks_only: bool = False) -> None:
        """Write the buffered rows as chunks of at most chunk_rows; keep a short tail if asked."""
        buf = self._buffers[family]
        if len({t.schema for t in buf.tables}) > 1:  # writers mixed plain and dictionary strings
            buf.tables = [t.cast(FAMILY_BY_NAME[family].schema) for t in buf.tables]
        table = pa.concat_tables(buf.tables)
        n = self.chunk_rows
        cut = (table.num_rows // n) * n if whole_chunks_only else table.num_rows
        rest = table.slice(cut)
        buf.tables = [rest] if rest.num_rows else []
        buf.rows = rest.num_rows
        try:
            for start in range(0, cut, n):
                self._write_chunk(family, table.slice(start, min(n, cut - start)))
            if not self.staged:
                self._save_manifest()
        except DiskFullError as e:
            if self.staged:
                self._discard()
            else:
                self._stopped(str(e))
            raise

    def _write_chunk(self, family: str, table: pa.Table) -> None:
        self._chunk_no += 1
        folder = (self._staging if self.staged else self.path) / family
        make_dir(folder)
        final = folder / f"part-{self.session_no:04d}-{self._chunk_no:06d}.parquet"
        write_chunk(final, table, FAMILY_BY_NAME[family].schema)
        self.session["rows"][family] = self.session["rows"].get(family, 0) + table.num_rows
        if self.staged:
            self._staged_chunks.append((family, final))
            return
        fam = self.manifest["families"].setdefault(family, {"rows": 0, "chunks": 0})
        fam["rows"] += table.num_rows
        fam["chunks"] += 1

    def _save_manifest(self) -> None:
        self.manifest["next_event_id"] = self._next_id
        validate(self.manifest, self.path / MANIFEST)
        write_json(self.path / MANIFEST, self.manifest)


def _table_from_columns(fam: Family, data: dict[str, Any]) -> pa.Table:
    """A dict of columns as a table the gate can check: integer lists as wide as their values need."""
    cols = {}
    for name, values in data.items():
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            cols[name] = values
            continue
        if isinstance(values, np.ndarray) and values.dtype != object:  # typed already: no Python per value
            cols[name] = pa.array(values)
            continue
        f = fam.schema.field(name) if name in fam.schema.names else None
        try:
            if f is not None and pa.types.is_integer(f.type):
                cols[name] = loose_int_array(list(values))
            else:
                cols[name] = pa.array(values, f.type if f is not None else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            cols[name] = pa.array(values)  # of another type: the gate names it
    return pa.table(cols)


DICTIONARY_STRING = pa.dictionary(pa.int32(), pa.string())


def conform(fam: Family, table: pa.Table, *, keep_dictionaries: bool = False) -> pa.Table:
    """Return a gate-checked `table` with exactly the family's columns, in order and of its types.

    Missing nullable columns become nulls; event_id stays nullable until ids are assigned.
    keep_dictionaries: dictionary-encoded string columns stay so (as DICTIONARY_STRING), for the
    chunk writer to store without decoding them.
    """
    arrays, fields = [], []
    for f in fam.schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            fields.append(f)
        elif keep_dictionaries and pa.types.is_string(f.type) and _clean_dictionary(table.column(f.name)):
            arrays.append(table.column(f.name).cast(DICTIONARY_STRING))
            fields.append(f.with_type(DICTIONARY_STRING))
        else:
            arrays.append(table.column(f.name).cast(f.type))
            fields.append(f)
    fields[0] = fields[0].with_nullable(True)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fam.schema.metadata))


def _clean_dictionary(col: pa.ChunkedArray) -> bool:
    """Whether a column is dictionary-encoded with distinct, non-null values in each dictionary:
    the chunk writer hands dictionaries to Parquet as they are, and Parquet needs them so."""
    if not pa.types.is_dictionary(col.type):
        return False
    return all(c.dictionary.null_count == 0 and len(pc.unique(c.dictionary)) == len(c.dictionary)
               for c in col.chunks)


def _stored_schema(fam: Family, schema: pa.Schema) -> pa.Schema:
    """The family's schema, with the dictionary-encoded string columns of `schema` kept so."""
    return pa.schema([f.with_type(DICTIONARY_STRING) if pa.types.is_dictionary(schema.field(f.name).type) else f
                      for f in fam.schema], metadata=fam.schema.metadata)


def _conform_read(fam: Family, table: pa.Table) -> pa.Table:
    """A chunk as read, with the current schema's columns (older chunks lack newer ones: nulls)."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in fam.schema]
    return pa.Table.from_arrays(arrays, schema=fam.schema)
