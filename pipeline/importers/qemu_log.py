"""QEMU's own trace output (log backend `-trace EVENT -D FILE`, syslog backend, the journal) into a run.

Line prefixes, every QEMU release from 7.2 on: see `qemu_prefixes` (tracetool's log backend,
`util/log.c`, `util/message.c`, the syslog backend, journalctl's forms). Events: see
`qemu_catalogue` (QEMU's compiled-in format strings, per generation).

Streaming: the file is cut into batches of lines (`line_batches`), and each batch is parsed by
DuckDB (RE2 regexp_extract over the batch, one statement per prefix and per catalogue event) into
staging tables of an on-disk DuckDB database; no Python runs per line. Only when every input is
read are the process id and the clock decided (both may need the whole log), and the staged rows
are then streamed into the run. A rejected input (bad line, no trace line) fails before the run is
touched.

- Lines that are not trace lines (QMP JSON, error_report text, -d output, prose in a paste) are
  counted with their first line numbers (session `non_trace_lines`), never as lost events.
- A known event whose arguments do not fit its format: error naming file, line and field, or
  with --skip-bad a lost line. Events outside the catalogue are counted by name.
- Time: TID@SEC.USEC, ISO-8601 and journal times are the wall clock. They become CLOCK_MONOTONIC
  with --clock-offset; else by memslot ioctls of a kernel-side source in the run matched line by
  line; else by the wall-clock/monotonic offset a collector session of the run recorded on its
  host, when the whole log lies inside that session's time (`host_clock`). Otherwise they stay
  on the wall clock (clock domain "realtime").
  A log without times is "untimed": ts_ns is the line's sequence number across the inputs.
- Process id: --pid; else the process that kernel-side events in the run put the log's threads
  in; else what the log proves (the syslog/journal PID, the thread QEMU names "main", or the
  thread that logs the first memslot line when it creates slot 0 at GPA 0 before any vCPU exit
  or KVM_RUN was logged: QEMU's machine init, on its main thread); else 0 and the manifest says the process is unknown (`pid_from`). A thread id is
  never taken for the process on a guess.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.constants import KVM_RUN
from pipeline.importers import InputFile, TraceFormatError, line_batches
from pipeline.importers.host_clock import offset_from_collector_sessions
from pipeline.importers.qemu_catalogue import EVENTS, Event, field_text, field_value, first_bad_field, token_generation
from pipeline.importers.qemu_prefixes import envelope_sql, group_names, sql_list, sql_str
from pipeline.runstore import RunWriter, open_run
from pipeline.schema import FAMILY_BY_NAME, ENVELOPE

SOURCE = "qemu-log"
DEFAULT_COMM = "qemu-system"
FIRST_LINES_KEPT = 20       # line numbers of non-trace lines listed in the manifest
BAD_LINES_KEPT = 100        # "FILE:LINE: field: why" kept in the manifest with --skip-bad
STAGE_DATABASE = ":memory:"   # rows beyond the memory limit spill to the temp directory
BATCH_BYTES = 32 << 20      # lines parsed per DuckDB pass: bounds memory whatever the file size

_DUCK = {pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.uint64(): "UBIGINT", pa.uint32(): "UINTEGER",
         pa.uint16(): "USMALLINT", pa.uint8(): "UTINYINT", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN"}
_ENVELOPE_NAMES = {f.name for f in ENVELOPE}
# What the staging tables keep of each line besides the family's own columns.
_STAGE_ENVELOPE = {"file_idx": "INTEGER", "line_no": "BIGINT", "seq": "BIGINT", "tid": "INTEGER",
                   "tname": "VARCHAR", "t_ns": "BIGINT", "t_kind": "VARCHAR", "pid_hint": "INTEGER",
                   "ident": "VARCHAR"}


ENVELOPE_SQL = envelope_sql("lines_b")


def _family_columns(family: str) -> dict[str, str]:
    return {f.name: _DUCK[f.type] for f in FAMILY_BY_NAME[family].schema if f.name not in _ENVELOPE_NAMES}


def _incl_refs(expr: str) -> list[str]:
    return sorted(set(re.findall(r"\bf_(\w+)", expr)))


# trim() decodes every character (it strips Unicode spaces): only lines that may need it pay for it.
_TRIMMED_ARGS = ("CASE WHEN starts_with(args, ' ') OR ends_with(args, ' ') OR strlen(args) <> length(args) "
                 "THEN trim(args) ELSE args END")


def event_sql(ev: Event) -> str:
    """SQL over the batch's `env` rows of one event: its parsed, typed family columns, `bad` naming
    the first field that does not parse or fit its column (NULL for a good line), `keep` (the row
    belongs in the family) and `extra` (trailing key=value arguments of other QEMU versions).

    Whether a line fits QEMU's format is the anchored pattern (RE2 without captures, a DFA); the
    values are cut from the line's space-separated tokens, capture groups only run for lines
    whose tokens do not line up with a format (extra arguments, doubled spaces)."""
    pattern = ev.pattern()
    p_sql = sql_str(pattern)
    fam_types = _family_columns(ev.family)
    t_cols = "".join(f", {field_text(ev, f)} AS t_{f}" for f in ev.fields)
    f_cols = "".join(f", {field_value(ev, f)} AS f_{f}" for f in ev.fields)
    # TRY() only around arithmetic, which may overflow on a hostile line; it costs on every row.
    c_cols = "".join(f", TRY_CAST({f'TRY({expr})' if re.search(r'[-+*&>]', expr) else expr} AS {fam_types[c]}) AS {c}"
                     for c, expr in ev.columns.items())
    checks = ["WHEN NOT ok THEN 'arguments'"]
    checks += [f"WHEN t_{f} IS NOT NULL AND f_{f} IS NULL THEN '{f}'" for f in ev.fields if ev.fields[f] != "s"]
    for c, expr in ev.columns.items():
        given = " AND ".join(f"f_{r} IS NOT NULL" for r in _incl_refs(expr)) or "true"
        checks.append(f"WHEN {given} AND {c} IS NULL THEN '{c}'")
    # Only what the staging insert reads is materialised (not the tokens, nor the arguments: the
    # error report of a rejected line takes them from `env`).
    keep_cols = ", ".join(["line_no", "tid", "tname", "t_ns", "t_kind", "pid_hint", "ident", "extra"]
                          + [f'"{c}"' for c in ev.columns])
    return f"""
    SELECT {keep_cols}, CASE {' '.join(checks)} END AS bad, coalesce({ev.where or 'true'}, false) AS keep FROM (
      SELECT *{c_cols} FROM (
        SELECT *{f_cols} FROM (
          SELECT *{t_cols}, coalesce(m['extra'], '') AS extra FROM (
            SELECT *, CASE WHEN tgen IS NULL AND ok THEN regexp_extract(args, {p_sql}, {sql_list(group_names(pattern))})
                      END AS m FROM (
            SELECT *, regexp_full_match(args, {p_sql}) AS ok, {token_generation(ev)} AS tgen FROM (
              SELECT line_no, tid, tname, t_ns, t_kind, pid_hint, ident, args, string_split({_TRIMMED_ARGS}, ' ') AS tk
              FROM env WHERE event = {sql_str(ev.name)} AND NOT prefix_bad))))))"""


@dataclass
class Scan:
    """What reading the inputs learnt, besides the staged rows."""

    inputs: list[InputFile] = field(default_factory=list)
    rows: Counter = field(default_factory=Counter)          # family -> staged rows
    unknown: Counter = field(default_factory=Counter)       # event -> lines
    filtered: Counter = field(default_factory=Counter)      # catalogue event -> lines outside its family
    forms: Counter = field(default_factory=Counter)         # prefix form -> trace lines
    non_trace: list[dict[str, Any]] = field(default_factory=list)   # per input: count, first
    threads: dict[int, str | None] = field(default_factory=dict)    # tid -> thread name
    first_memslot: tuple[int | None, str] | None = None  # (tid, args) of the first kvm_set_user_memory line
    vcpu_ran_before: bool = False   # a vCPU exit or KVM_RUN was logged before that line
    pids: Counter = field(default_factory=Counter)          # syslog / journal PIDs
    hosts: Counter = field(default_factory=Counter)
    qemu_versions: list[str] = field(default_factory=list)  # from QMP greetings in the log
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0


class _Stage:
    """The staging database: one table per family, parsed rows waiting for pid and clock."""

    def __init__(self, folder: Path):
        self.con = duckdb.connect(STAGE_DATABASE.format(folder=folder),
                                  config={"memory_limit": "600MB", "temp_directory": str(folder / "spill"),
                                          "preserve_insertion_order": "false"})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        self.tables: set[str] = set()
        self.sql = {name: event_sql(ev) for name, ev in EVENTS.items()}

    def table(self, family: str) -> str:
        name = f"stage_{family}"
        if name not in self.tables:
            cols = {**_STAGE_ENVELOPE, **_family_columns(family)}
            self.con.execute(f"CREATE TABLE {name} (" + ", ".join(f'"{c}" {t}' for c, t in cols.items()) + ")")
            self.tables.add(name)
        return name


def _scan_batch(stage: _Stage, scan: Scan, path: Path, file_idx: int, seq_base: int, first: int,
                lines: pa.Array, skip_bad: bool) -> tuple[int, int, list[int]]:
    """Parse one batch into the staging tables; returns (trace lines, non-trace lines, first non-trace)."""
    con = stage.con
    batch = pa.table({"line_no": pa.array(np.arange(first, first + len(lines), dtype=np.int64)), "line": lines})
    # Record batches of their own let DuckDB scan the batch on every core.
    batch = pa.Table.from_batches(batch.to_batches(max_chunksize=32_768))
    con.register("lines_b", batch)
    for statement in ENVELOPE_SQL:
        con.execute(statement)
    con.unregister("lines_b")

    n_trace, n_other = con.execute(
        "SELECT count(event), count(*) FILTER (WHERE event IS NULL AND NOT blank) FROM env").fetchall()[0]
    other_first = [r[0] for r in con.execute(
        f"SELECT line_no FROM env WHERE event IS NULL AND NOT blank ORDER BY line_no LIMIT {FIRST_LINES_KEPT}").fetchall()]
    for (v,) in con.execute("SELECT DISTINCT qmp_version FROM env WHERE qmp_version IS NOT NULL").fetchall():
        if v not in scan.qemu_versions:
            scan.qemu_versions.append(v)
    if not n_trace:
        return 0, n_other, other_first
    events = dict(con.execute("SELECT event, count(*) FROM env WHERE event IS NOT NULL GROUP BY event").fetchall())
    for form, n in con.execute("SELECT form, count(*) FROM env WHERE event IS NOT NULL GROUP BY form").fetchall():
        scan.forms[form] += n
    for tid, tname in con.execute("SELECT DISTINCT tid, tname FROM env WHERE tid IS NOT NULL").fetchall():
        if tname or tid not in scan.threads:
            scan.threads[tid] = tname
    for pid, host, n in con.execute("SELECT pid_hint, host_hint, count(*) FROM env WHERE event IS NOT NULL "
                                    "AND (pid_hint IS NOT NULL OR host_hint IS NOT NULL) GROUP BY ALL").fetchall():
        if pid is not None:
            scan.pids[pid] += n
        if host:
            scan.hosts[host] += n
    if scan.first_memslot is None:
        first = con.execute("SELECT line_no, tid, args FROM env WHERE event = 'kvm_set_user_memory' "
                            "ORDER BY line_no LIMIT 1").fetchall()
        ran = con.execute(f"SELECT min(line_no) FROM env WHERE event = 'kvm_run_exit' OR (event = 'kvm_vcpu_ioctl' "
                          f"AND regexp_matches(args, 'type 0x(2000)?{KVM_RUN:x},'))").fetchall()[0][0]
        if ran is not None and (not first or ran < first[0][0]):
            scan.vcpu_ran_before = True
        if first:
            scan.first_memslot = first[0][1:]

    bad: list[tuple[int, str, str]] = []   # (line, field, why)
    for line_no, event, tid_bad in con.execute(
            "SELECT line_no, event, tid_bad FROM env WHERE event IN "
            f"({', '.join(map(sql_str, EVENTS))}) AND prefix_bad ORDER BY line_no").fetchall():
        bad.append((line_no, "thread id" if tid_bad else "time", f"{event}: the line's {'thread id' if tid_bad else 'time stamp'} "
                    "is out of range"))
    for name in events:
        ev = EVENTS.get(name)
        if ev is None:
            scan.unknown[name] += events[name]
            continue
        con.execute(f"CREATE OR REPLACE TEMP TABLE evt AS {stage.sql[name]}")
        for line_no, col, args in con.execute(
                "SELECT line_no, bad, env.args FROM evt JOIN env USING (line_no) WHERE bad IS NOT NULL "
                "ORDER BY line_no").fetchall():
            if col == "arguments":
                col, fmt = first_bad_field(ev, args)
                why = f"{name}: arguments {args[:200]!r} do not match QEMU's format {fmt!r}"
            else:
                why = f"{name}: value of {col!r} does not parse or is out of range in {args[:200]!r}"
            bad.append((line_no, col, why))
        filtered = con.execute("SELECT count(*) FROM evt WHERE bad IS NULL AND NOT keep").fetchall()[0][0]
        if filtered:
            scan.filtered[name] += filtered
        extras = [k for (k,) in con.execute(
            "SELECT DISTINCT unnest(regexp_extract_all(extra, '([A-Za-z_][A-Za-z0-9_]*)=', 1)) "
            "FROM evt WHERE bad IS NULL AND extra <> ''").fetchall()]
        if extras:
            scan.extra_args[name] = sorted(set(scan.extra_args.get(name, [])) | set(extras))
        chosen = [c for c in _family_columns(ev.family) if c in ev.columns and c != "detail"]
        select = [f'"{c}"' for c in chosen]
        if "detail" in ev.columns or (ev.family == "qemu" and extras):
            # Unknown trailing arguments of a QEMU-view event are kept in its free-text detail.
            base = "detail" if "detail" in ev.columns else "NULL"
            chosen.append("detail")
            select.append(f"concat_ws(' ', {base}, nullif(trim(extra), ''))" if ev.family == "qemu" else base)
        table = stage.table(ev.family)
        n = con.execute(
            f"INSERT INTO {table} (file_idx, line_no, seq, tid, tname, t_ns, t_kind, pid_hint, ident, "
            + ", ".join(f'"{c}"' for c in chosen) + ") "
            f"SELECT {file_idx}, line_no, line_no + {seq_base}, tid, tname, t_ns, t_kind, pid_hint, ident, "
            + ", ".join(select) + " FROM evt WHERE bad IS NULL AND keep").fetchall()[0][0]
        scan.rows[ev.family] += n
    if bad:
        bad.sort()
        if not skip_bad:
            line_no, col, why = bad[0]
            raise TraceFormatError(str(path), line_no, why, col)
        scan.bad_count += len(bad)
        scan.bad.extend(f"{path}:{line_no}: field {col!r}: {why}"
                        for line_no, col, why in bad[:max(0, BAD_LINES_KEPT - len(scan.bad))])
    return n_trace, n_other, other_first


def scan_inputs(paths: list[Path], stage: _Stage, *, skip_bad: bool) -> Scan:
    scan = Scan()
    seq_base = 0
    for file_idx, path in enumerate(paths):
        info = InputFile(str(path))
        scan.inputs.append(info)
        trace = other = 0
        first_other: list[int] = []
        try:
            for first, lines in line_batches(path, info, batch_bytes=BATCH_BYTES):
                t, o, f = _scan_batch(stage, scan, path, file_idx, seq_base, first, lines, skip_bad)
                trace, other = trace + t, other + o
                first_other.extend(f[:FIRST_LINES_KEPT - len(first_other)])
        except OSError as e:
            raise TraceFormatError(str(path), 0, e.strerror or str(e)) from None
        if not trace:
            raise TraceFormatError(str(path), 1 if info.lines else 0,
                                   f"no QEMU trace line among its {info.lines} lines (expected QEMU's log or "
                                   "syslog trace backend output: 'event_name args', optionally prefixed "
                                   "'TID@SEC.USEC:', an ISO-8601 time, '(TID:thread):' or a syslog/journal header)")
        scan.non_trace.append({"count": other, "first": first_other})
        seq_base += info.lines
    return scan


@dataclass
class Alignment:
    method: str              # "none", "given", "memslots", "host"
    offset_ns: int | None    # monotonic = log time - offset_ns
    residual_ns: int | None  # largest disagreement among aligned events (host: the session's drift)
    matched: int = 0
    session: int | None = None  # host: the collector session whose clocks gave the offset


def _kernel_side(con: duckdb.DuckDBPyConnection, run_dir: Path) -> bool:
    """Create the run's family views on `con` (named as the families) when the run exists."""
    if not (run_dir / "manifest.json").exists():
        return False
    open_run(run_dir).create_views(con)
    return True


def align_on_memslots(con: duckdb.DuckDBPyConnection) -> Alignment | None:
    """Offset that maps QEMU's logged memslot updates onto the same ioctls seen by a kernel source.

    The n-th log line for a given (slot, flags, gpa, size, hva, ret) is paired with the n-th such
    ioctl; QEMU logs after the ioctl returns, so its time is compared with the ioctl's exit. The
    matched log rows are dropped from the staging table: the run already holds those ioctls.
    """
    key = "as_id, slot, flags, gpa, size, hva, ret"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pairs AS
        WITH kk AS (SELECT coalesce(end_ns, ts_ns) AS t, {key},
                           row_number() OVER (PARTITION BY {key} ORDER BY ts_ns) AS n
                    FROM memslots WHERE source NOT LIKE '{SOURCE}%'),
             qq AS (SELECT t_ns AS t, file_idx, line_no, {key},
                           row_number() OVER (PARTITION BY {key} ORDER BY seq) AS n
                    FROM stage_memslots WHERE t_kind = 'wall' AND t_ns IS NOT NULL)
        SELECT qq.t - kk.t AS off, file_idx, line_no FROM qq JOIN kk USING ({key}, n)""")
    row = con.execute("SELECT count(*), median(off)::BIGINT, "
                      "max(abs(off - (SELECT median(off) FROM pairs)))::BIGINT FROM pairs").fetchall()[0]
    if not row[0]:
        return None
    con.execute("DELETE FROM stage_memslots WHERE (file_idx, line_no) IN (SELECT (file_idx, line_no) FROM pairs)")
    return Alignment("memslots", int(row[1]), int(row[2]), int(row[0]))


def align_on_collector_sessions(con: duckdb.DuckDBPyConnection, tables: set[str], manifest: dict) -> Alignment | None:
    """The offset a collector session of the run recorded on its host, when the log's wall-clock
    span lies inside that session's (see `host_clock`)."""
    union = " UNION ALL ".join(f"SELECT t_ns FROM {t} WHERE t_kind = 'wall'" for t in sorted(tables))
    # fetchall: a result left open would block the next relation on this connection.
    first, last = con.execute(f"SELECT min(t_ns), max(t_ns) FROM ({union})").fetchall()[0]
    if first is None:
        return None
    found = offset_from_collector_sessions(manifest, first, last)
    if found is None:
        return None
    return Alignment("host", found.offset_ns, found.residual_ns, session=found.session)


def _pid_of_threads(con: duckdb.DuckDBPyConnection, tids: list[int]) -> int | None:
    """The process that the run's kernel-side events put these thread ids in, if any."""
    if not tids:
        return None
    parts = " UNION ALL ".join(f"SELECT pid, tid FROM {f} WHERE source NOT LIKE '{SOURCE}%' AND pid <> 0"
                               for f in FAMILY_BY_NAME if f != "lost_events")
    row = con.execute(f"SELECT pid FROM ({parts}) WHERE tid IN (SELECT unnest(?::INTEGER[])) "
                      "GROUP BY pid ORDER BY count(*) DESC LIMIT 1", [tids]).fetchall()
    return row[0][0] if row else None


def _main_thread(scan: Scan) -> tuple[int | None, str]:
    """QEMU's main thread, when the log proves which it is (its id is the process id)."""
    if any(scan.threads.values()):   # thread names are printed: only the one named main counts
        named = [tid for tid, name in scan.threads.items() if name == "main"]
        if len(named) == 1:
            return named[0], "the thread QEMU names 'main' (message-context prefix)"
        return None, ""
    # Machine init registers guest RAM at slot 0, GPA 0, without dirty logging, on the main thread
    # before the guest first runs; later memslot updates may come from vCPU or migration threads.
    if scan.first_memslot and scan.first_memslot[0] is not None and not scan.vcpu_ran_before:
        if re.match(r"^(?:AddrSpace#0 )?Slot#0 flags=0x0 gpa=0x0 size=0x0*[1-9a-fA-F]", scan.first_memslot[1]):
            return scan.first_memslot[0], ("the thread that logs QEMU's first memslot (slot 0 at GPA 0, created by "
                                           "machine init on the main thread before any vCPU ran)")
    return None, ""


def _clock_domain(con: duckdb.DuckDBPyConnection, tables: set[str]) -> tuple[str, dict[str, int]]:
    if not tables:
        return "untimed", {}
    union = " UNION ALL ".join(f"SELECT t_kind, t_ns FROM {t}" for t in sorted(tables))
    kinds = {k or "none": n for k, n in con.execute(
        f"SELECT t_kind, count(*) FROM ({union}) GROUP BY t_kind").fetchall()}
    if len(kinds) == 1:
        return {"wall": "realtime", "rel": "relative", "mono": "monotonic", "none": "untimed"}[next(iter(kinds))], kinds
    return "untimed", kinds   # a mix of stamped and unstamped lines: only the order is sure


_CLOCK_SOURCE = {
    "realtime": "wall clock of the traced host (QEMU's gettimeofday / ISO-8601 UTC, or the syslog/journal "
                "time), microseconds",
    "relative": "syslog time without year or time zone (RFC 3164 / journalctl short): seconds since "
                "1 January of an unknown year",
    "monotonic": "journalctl short-monotonic: the traced host's CLOCK_MONOTONIC",
    "untimed": "no time stamps: ts_ns is the line's sequence number across the inputs",
}


def import_qemu_log(paths: list[Path], run_dir: Path, *, pid: int | None = None, comm: str | None = None,
                    clock_offset_ns: int | None = None, skip_bad: bool = False, host: str | None = None,
                    kernel: str | None = None, qemu_version: str | None = None) -> dict[str, Any]:
    paths = [Path(p) for p in paths]
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="vmemtrace-qemu-log-") as tmp:
        stage = _Stage(Path(tmp))
        scan = scan_inputs(paths, stage, skip_bad=skip_bad)
        con = stage.con
        has_run = _kernel_side(con, run_dir)
        domain, kinds = _clock_domain(con, stage.tables)

        align = Alignment("none", None, None)
        if domain != "untimed" and clock_offset_ns is not None:
            align = Alignment("given", clock_offset_ns, None)
        elif domain == "realtime" and has_run:
            if "stage_memslots" in stage.tables:
                align = align_on_memslots(con) or align
            if align.offset_ns is None:
                align = align_on_collector_sessions(con, stage.tables, open_run(run_dir).manifest) or align
        out_domain = "monotonic" if align.offset_ns is not None else domain

        tids = sorted(scan.threads)
        pid_from, process = "--pid", pid
        if process is None and scan.pids:
            process, pid_from = scan.pids.most_common(1)[0][0], "the syslog / journal PID of each line"
        elif process is None:
            process = _pid_of_threads(con, tids) if has_run else None
            pid_from = "thread ids matched to kernel-side events in the run"
            if process is None:
                process, pid_from = _main_thread(scan)
            if process is None:
                pid_from = ("unknown: the log names no process and proves no main thread; pid 0 stands for "
                            "the QEMU process (give --pid)")

        traced_host = host or (scan.hosts.most_common(1)[0][0] if scan.hosts else "unknown")
        info = {
            "inputs": [i.manifest() for i in scan.inputs],
            "traced": {"host": traced_host, "kernel": kernel or "unknown",
                       "qemu_version": qemu_version or (scan.qemu_versions[0] if scan.qemu_versions else None),
                       "qemu_binaries": []},
            "clock": {"domain": out_domain, "source": _CLOCK_SOURCE[domain], "alignment": align.method,
                      "offset_ns": align.offset_ns, "residual_ns": align.residual_ns,
                      "matched_events": align.matched},
            "non_trace_lines": {"count": sum(n["count"] for n in scan.non_trace),
                                "first": next((n["first"] for n in scan.non_trace if n["first"]), [])},
            "unknown_events": dict(scan.unknown),
            "pid": process, "pid_from": pid_from,
            "formats": dict(scan.forms),
        }
        if len(scan.inputs) > 1:
            for entry, nt in zip(info["inputs"], scan.non_trace):
                entry["non_trace_lines"] = nt
        if scan.filtered:
            info["catalogue_events_outside_family"] = dict(scan.filtered)
        if scan.extra_args:
            info["extra_arguments"] = scan.extra_args
        if align.method == "memslots":
            info["memslots_already_in_run"] = align.matched
        if align.method == "host":
            info["clock"]["from_session"] = align.session
        if domain == "untimed" and kinds:
            info["clock"]["stamped_rows"] = {k: n for k, n in kinds.items()}

        offset = align.offset_ns or 0
        ts = "seq" if domain == "untimed" else f"t_ns - ({offset})::BIGINT"
        pid_sql = (f"{int(pid)}" if pid is not None else
                   f"coalesce(pid_hint, {int(process) if process is not None else 0})")  # syslog: per line
        comm_sql = f"coalesce(tname, {sql_str(comm) if comm else 'NULL'}, left(ident, 15), '{DEFAULT_COMM}')"
        rows: Counter = Counter()
        with RunWriter(run_dir, source=SOURCE, kind="importer", info=info) as w:
            for table in sorted(stage.tables):
                family = table.removeprefix("stage_")
                cols = ", ".join(f'"{c}"' for c in _family_columns(family))
                reader = con.sql(
                    f"SELECT {ts} AS ts_ns, {pid_sql}::INTEGER AS pid, coalesce(tid, 0) AS tid, {comm_sql} AS comm, "
                    f"'{SOURCE}' AS source, {cols} FROM {table} ORDER BY seq").to_arrow_reader(262_144)
                for batch in reader:
                    w.write(family, pa.Table.from_batches([batch]))
                    rows[family] += batch.num_rows
            if scan.bad_count:
                w.count_lost(SOURCE, scan.bad_count, "lines of known events that could not be parsed (--skip-bad)",
                             ts_ns=0)
                w.update_session(bad_lines=scan.bad)
        stage.con.close()
    # rows: what the log held per family; written: what the run got (memslot lines that are the
    # kernel-side source's own ioctls are not written twice)
    return {"rows": dict(scan.rows), "written": dict(rows), "unknown": dict(scan.unknown), "bad": scan.bad_count, "alignment": align,
            "clock": info["clock"], "pid": process, "pid_from": pid_from,
            "non_trace": info["non_trace_lines"]["count"]}
