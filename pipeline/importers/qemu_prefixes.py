"""Every line prefix QEMU's trace output carries, 7.2 to current, as RE2 patterns for DuckDB.

Read from QEMU's source, per version:

- QEMU 7.2 .. 10.0, `scripts/tracetool/backend/log.py` (log backend, `-trace EVENT [-D FILE]`):
  with `-msg timestamp=on`  ``qemu_log("%d@%zu.%06zu:NAME " FMT "\\n", qemu_get_thread_id(), tv_sec, tv_usec)``
      ``8010@1795263920.840692:kvm_set_user_memory Slot#0 flags=0x0 ...``  (thread id, gettimeofday)
  without it                ``qemu_log("NAME " FMT "\\n")``
      ``kvm_set_user_memory Slot#0 flags=0x0 ...``  (no thread, no time: the default)
- QEMU 10.1 (commit 012842c075 "log: make '-msg timestamp=on' apply to all qemu_log usage",
  July 2025): tracetool writes ``NAME FMT`` only and `qemu_log()` itself prefixes
  ``g_date_time_format_iso8601(now_utc) + " "``; there is no thread id, and glib leaves the
  fraction out when the microseconds are zero:
      ``2025-08-19T12:34:56.123456Z kvm_set_user_memory AddrSpace#0 Slot#0 ...``
- Message context (D. Berrangé, "util: sync error_report & qemu_log output more closely", v5
  2026-01, `util/message.c` qmessage_context_print): ``[TIME ][[GUEST] ][PROG: ][(TID:THREAD): ]``,
  program name and thread info on by default:
      ``qemu-system-x86_64: (772366:main): kvm_set_user_memory AddrSpace#0 Slot#0 ...``
      ``2026-01-08T17:05:26.123456Z [vm1] qemu-system-x86_64: (772366:CPU 0/KVM): kvm_run_exit ...``
- Syslog backend (`scripts/tracetool/backend/syslog.py`, all versions): ``syslog(LOG_INFO, "NAME " FMT)``
  after ``openlog(NULL, LOG_PID, LOG_DAEMON)``; the daemon adds time, host and ``IDENT[PID]: ``:
      ``Nov 21 12:00:00 host qemu-system-x86_64[4242]: kvm_set_user_memory ...``  (RFC 3164, journalctl short)
      ``2026-11-21T12:00:00.123456+00:00 host qemu-system-x86_64[4242]: ...``     (rsyslog RFC 3339,
                                                                               journalctl short-iso[-precise])
      ``[ 1234.567890] host qemu-system-x86_64[4242]: ...``                       (journalctl short-monotonic)
  and `journalctl -o json` one object per line (MESSAGE, _PID, _HOSTNAME, __REALTIME_TIMESTAMP).
  The message inside may itself carry a log-backend prefix (QEMU's stderr captured by the journal).

A QEMU trace event name is lower case with at least one underscore (`subsystem_what`): that is what
tells an unprefixed trace line from prose, QMP JSON or `error_report` text.
"""

from __future__ import annotations

import re

_ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)"
_MONTH = r"Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
EVENT_NAME = r"[a-z][a-z0-9_]*_[a-z0-9_]*"

# The syslog / journal wrapper: time (three forms), host, IDENT[PID]: message.
OUTER = (r"^(?:(?P<o_mon>" + _MONTH + r") +(?P<o_day>\d{1,2}) (?P<o_hms>\d\d:\d\d:\d\d)(?P<o_frac>\.\d+)?"
         r"|(?P<o_iso>" + _ISO + r")|\[ *(?P<o_mono_s>\d+)\.(?P<o_mono_f>\d+)\])"
         r" (?P<o_host>\S+) (?P<o_ident>[^\s\[\]]+)\[(?P<o_pid>\d+)\]: (?P<o_msg>.*)$")

# QEMU's own prefix (any generation) and the event.
INNER = (r"^(?:(?P<at_tid>\d+)@(?P<at_sec>\d+)\.(?P<at_frac>\d+):"
         r"|(?:(?P<iso>" + _ISO + r") )?(?:\[(?P<guest>[^\]]*)\] )?(?:(?P<prog>[A-Za-z0-9_.+-]+): )?"
         r"(?:\((?P<ctx_tid>\d+):(?P<tname>[^)]*)\): )?)"
         r"(?P<event>" + EVENT_NAME + r")(?:\s(?P<args>.*))?$")


# A year-less syslog time is placed in 1972 (a leap year, so that Feb 29 parses) and counted from
# its 1 January: seconds since New Year of an unknown year.
_LEAP_YEAR_NS = 63072000 * 10**9


def group_names(pattern: str) -> list[str]:
    """Names of the pattern's groups in the order DuckDB's regexp_extract numbers them."""
    index = re.compile(pattern).groupindex
    return sorted(index, key=index.get)


def sql_list(names: list[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _frac_ns(col: str) -> str:
    """Nanoseconds of a decimal fraction given as digits (`123456` -> 123456000)."""
    return f"coalesce(TRY_CAST(rpad(nullif({col}, ''), 9, '0') AS BIGINT), 0)"


def _secs_ns(col: str) -> str:
    # Ten digits of seconds keep nanoseconds inside int64 (until 2286); more is not a time.
    return f"CASE WHEN length({col}) BETWEEN 1 AND 10 THEN TRY_CAST({col} AS BIGINT) * 1000000000 END"


def _iso_ns(col: str) -> str:
    return f"epoch_ns(TRY_CAST(replace(nullif({col}, ''), ',', '.') AS TIMESTAMPTZ))"


_AT_FORM = r"^[0-9]+@[0-9]+\.[0-9]+:"


def envelope_sql(lines_table: str) -> list[str]:
    """SQL statements turning a table (line_no, line) into the temp table `env`: one row per line,
    with event (NULL for a line that is not a trace line), args, thread, time (t_ns with its kind:
    wall / rel / mono), and what a syslog or journal wrapper says (pid, host, ident).

    The two forms that make up nearly all logs (TID@SEC.USEC: and no prefix) are cut with plain
    string functions after an anchored match; only the other lines go through the full patterns
    (RE2 capture groups cost several microseconds a line)."""
    return [f"""
    CREATE OR REPLACE TEMP TABLE cut AS
    WITH t AS (SELECT line_no, CASE WHEN starts_with(line, ' ') OR starts_with(line, chr(9))
                                    THEN ltrim(line, ' ' || chr(9)) ELSE line END AS l FROM {lines_table}),
    r AS (SELECT line_no, l, regexp_matches(l, {sql_str(_AT_FORM)}) AS at_form FROM t),
    e AS (SELECT line_no, l, at_form, CASE WHEN at_form THEN substr(l, strpos(l, ':') + 1) ELSE l END AS rest FROM r)
    SELECT *, regexp_full_match(ev, {sql_str(EVENT_NAME)}) AS is_event FROM (SELECT *, split_part(rest, ' ', 1) AS ev FROM e)""", f"""
    CREATE OR REPLACE TEMP TABLE env AS
    SELECT *, coalesce(tid_bad, false) OR (t_kind IS NOT NULL AND t_ns IS NULL) AS prefix_bad FROM (
    WITH fast AS (SELECT * FROM cut WHERE is_event)
    SELECT line_no, false AS blank, NULL::VARCHAR AS qmp_version, ev AS event,
           substr(rest, length(ev) + 2) AS args,
           CASE WHEN at_form THEN TRY_CAST(substr(l, 1, strpos(l, '@') - 1) AS INTEGER) END AS tid,
           at_form AND TRY_CAST(substr(l, 1, strpos(l, '@') - 1) AS INTEGER) IS NULL AS tid_bad,
           NULL::VARCHAR AS tname,
           CASE WHEN at_form THEN {_secs_ns("substr(l, strpos(l, '@') + 1, strpos(l, '.') - strpos(l, '@') - 1)")}
                                  + {_frac_ns("substr(l, strpos(l, '.') + 1, strpos(l, ':') - strpos(l, '.') - 1)")}
           END AS t_ns,
           CASE WHEN at_form THEN 'wall' END AS t_kind,
           NULL::INTEGER AS pid_hint, NULL::VARCHAR AS host_hint, NULL::VARCHAR AS ident,
           CASE WHEN at_form THEN 'tid@sec.usec' ELSE 'no-prefix' END AS form
    FROM fast
    UNION ALL
    {_slow_sql("(SELECT line_no, l FROM cut WHERE NOT is_event)")})"""]


def _slow_sql(rows: str) -> str:
    """The full patterns, for lines (line_no, l) of the rarer forms and for non-trace lines."""
    outer, inner = group_names(OUTER), group_names(INNER)
    o_frac = _frac_ns("o.o_frac[2:]")
    return f"""(
    WITH w AS (
        SELECT line_no, l, l = '' AS blank,
               CASE WHEN starts_with(l, '{{"QMP"') AND json_valid(l) THEN printf('%s.%s.%s (%s)',
                   json_extract_string(l, '$.QMP.version.qemu.major'), json_extract_string(l, '$.QMP.version.qemu.minor'),
                   json_extract_string(l, '$.QMP.version.qemu.micro'), json_extract_string(l, '$.QMP.version.package'))
               END AS qmp_version,
               CASE WHEN contains(l, ']: ') THEN regexp_extract(l, {sql_str(OUTER)}, {sql_list(outer)}) END AS o,
               CASE WHEN starts_with(l, '{{') AND json_valid(l) AND json_exists(l, '$.MESSAGE')
                    THEN l END AS j
        FROM {rows}),
    m AS (
        SELECT line_no, blank, qmp_version, o, j,
               CASE WHEN o.o_pid <> '' THEN o.o_msg
                    WHEN j IS NOT NULL THEN ltrim(json_extract_string(j, '$.MESSAGE'), ' \t')
                    ELSE l END AS msg
        FROM w),
    i AS (SELECT line_no, blank, qmp_version, o, j, regexp_extract(msg, {sql_str(INNER)}, {sql_list(inner)}) AS i FROM m)
    SELECT line_no, blank, qmp_version,
           nullif(i.event, '') AS event,
           coalesce(i.args, '') AS args,
           coalesce(TRY_CAST(nullif(i.at_tid, '') AS INTEGER), TRY_CAST(nullif(i.ctx_tid, '') AS INTEGER)) AS tid,
           (i.at_tid <> '' AND TRY_CAST(i.at_tid AS INTEGER) IS NULL)
               OR (i.ctx_tid <> '' AND TRY_CAST(i.ctx_tid AS INTEGER) IS NULL) AS tid_bad,
           nullif(i.tname, '') AS tname,
           CASE WHEN i.at_tid <> '' THEN {_secs_ns('i.at_sec')} + {_frac_ns('i.at_frac')}
                WHEN i.iso <> '' THEN {_iso_ns('i.iso')}
                WHEN o.o_mon <> '' THEN epoch_ns(TRY_STRPTIME('1972 ' || o.o_mon || ' ' || o.o_day || ' ' || o.o_hms,
                                                              '%Y %b %d %H:%M:%S')) - {_LEAP_YEAR_NS} + {o_frac}
                WHEN o.o_iso <> '' THEN {_iso_ns('o.o_iso')}
                WHEN o.o_mono_s <> '' THEN {_secs_ns('o.o_mono_s')} + {_frac_ns('o.o_mono_f')}
                WHEN j IS NOT NULL THEN CASE WHEN length(json_extract_string(j, '$.__REALTIME_TIMESTAMP')) <= 17
                    THEN TRY_CAST(json_extract_string(j, '$.__REALTIME_TIMESTAMP') AS BIGINT) * 1000 END
           END AS t_ns,
           CASE WHEN i.at_tid <> '' OR i.iso <> '' OR o.o_iso <> '' THEN 'wall'
                WHEN o.o_mon <> '' THEN 'rel'
                WHEN o.o_mono_s <> '' THEN 'mono'
                WHEN j IS NOT NULL AND json_exists(j, '$.__REALTIME_TIMESTAMP') THEN 'wall'
           END AS t_kind,
           CASE WHEN o.o_pid <> '' THEN TRY_CAST(o.o_pid AS INTEGER)
                WHEN j IS NOT NULL THEN TRY_CAST(json_extract_string(j, '$._PID') AS INTEGER) END AS pid_hint,
           CASE WHEN o.o_pid <> '' THEN o.o_host WHEN j IS NOT NULL THEN json_extract_string(j, '$._HOSTNAME') END AS host_hint,
           CASE WHEN o.o_pid <> '' THEN o.o_ident
                WHEN j IS NOT NULL THEN json_extract_string(j, '$.SYSLOG_IDENTIFIER') END AS ident,
           concat_ws('+',
               CASE WHEN o.o_mon <> '' THEN 'syslog' WHEN o.o_iso <> '' THEN 'syslog-iso'
                    WHEN o.o_mono_s <> '' THEN 'journal-monotonic' WHEN j IS NOT NULL THEN 'journal-json' END,
               CASE WHEN i.at_tid <> '' THEN 'tid@sec.usec'
                    WHEN i.ctx_tid <> '' OR i.prog <> '' OR i.guest <> '' THEN 'message-context'
                    WHEN i.iso <> '' THEN 'iso8601'
                    WHEN i.event <> '' AND coalesce(o.o_pid, '') = '' AND j IS NULL THEN 'no-prefix' END) AS form
    FROM i)"""
