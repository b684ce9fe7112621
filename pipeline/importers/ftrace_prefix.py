"""The fixed part of an ftrace event line (thread, CPU, flags, time, event name) for a batch of lines.

Layouts (kernel trace_output.c / trace.c, trace-cmd tracecmd/trace-read.c):
    '%16s-%-7d (%7s) [%03d] %s %5lu.%06lu: ' tracefs, TGID column and flags optional (4 to 7 flags)
    '%16s-%-5d [%03d] %12s: '                trace-cmd report, with '%*s: ' file prefix for several files
    '%8.8s-%-5d %3d%s %s: '                   trace-cmd report -l (latency flags glued to the CPU)
Most lines are cut with Arrow's split kernels (the fast path: no prefix, '[CPU]'); the rest go
through one regular expression that knows every layout. Both give the same string fields.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIELDS = ("file", "comm", "tid", "tgid", "cpu", "sec", "frac", "event", "sep", "args")
LINE = (r"^\s*(?:(?P<file>\S+): \s+)?(?P<comm>\S.*?)-(?P<tid>\d{1,10})\s+(?:\(\s*(?P<tgid>[\d-]{1,10})\)\s+)?"
        r"(?:\[(?P<cpu>\d{1,6})\]|(?P<lcpu>\d{1,6})(?P<lflags>[^\s\d]\S{2,6}))\s+"
        r"(?:(?P<flags>[^\s\d]\S{0,6})\s+)?(?P<sec>\d{1,18})(?:\.(?P<frac>\d{1,9}))?:\s+"
        r"(?P<event>[\w.-]+)(?P<sep>: |:$|\(| -> |$)(?P<args>.*)$")
EVENT_NAME = re.compile(r"^[\w.-]+$")


def item(lists: pa.Array, i: int) -> pa.Array:
    """Element i of every list, null where a list is shorter or null (list_element would raise):
    one take from the list values at offset + i, half the cost of slicing and flattening the lists."""
    width = np.int64 if pa.types.is_large_list(lists.type) else np.int32
    offsets = np.frombuffer(lists.buffers()[1], width)[lists.offset:lists.offset + len(lists) + 1]
    at = offsets[:-1] + i
    missing = at >= offsets[1:]
    if lists.null_count:
        missing |= ~np.asarray(lists.is_valid())
    return lists.values.take(pa.array(at, mask=missing))


def _np(mask: pa.Array) -> np.ndarray:
    return np.asarray(mask.fill_null(False), dtype=bool)


def _digits(s: pa.Array, most: int) -> np.ndarray:
    n = np.asarray(pc.binary_length(s).fill_null(0))
    return _np(pc.string_is_ascii(s)) & _np(pc.utf8_is_digit(s)) & (n > 0) & (n <= most)


def _fast(lines: pa.Array) -> tuple[np.ndarray, dict[str, pa.Array]]:
    parts = pc.split_pattern(lines, ": ", max_splits=2)
    head, second, third = item(parts, 0), item(parts, 1), item(parts, 2)
    h = pc.split_pattern(head, " ", max_splits=1, reverse=True)
    pre, ts = item(h, 0), item(h, 1)
    t = pc.split_pattern(ts, ".", max_splits=1)
    sec, frac = item(t, 0), pc.coalesce(item(t, 1), "")
    b = pc.split_pattern(pre, "[", max_splits=1, reverse=True)
    left_raw, right = item(b, 0), item(b, 1)
    left = pc.utf8_rtrim_whitespace(left_raw)
    r = pc.split_pattern(right, "]", max_splits=1)
    cpu, flags = item(r, 0), pc.utf8_trim_whitespace(item(r, 1))
    has_tgid = pc.ends_with(left, ")")
    if _np(has_tgid).any():
        g = pc.split_pattern(left, "(", max_splits=1, reverse=True)
        tgid = pc.if_else(has_tgid, pc.utf8_trim_whitespace(pc.utf8_rtrim(item(g, 1), ")")), "")
        left = pc.if_else(has_tgid, pc.utf8_rtrim_whitespace(item(g, 0)), left)
    else:   # no TGID column in the block (a null left fails the checks below either way)
        tgid = pa.nulls(len(lines), pa.string()).fill_null("")
    d = pc.split_pattern(left, "-", max_splits=1, reverse=True)
    comm, tid = pc.utf8_ltrim_whitespace(item(d, 0)), item(d, 1)

    has_paren = pc.match_substring(second, "(")
    paren = pc.split_pattern(second, "(", max_splits=1)
    after = item(paren, 1)
    enter_args = pc.if_else(pc.is_null(third), after, pc.binary_join_element_wise(after, third, ": "))
    has_arrow = pc.match_substring(second, " -> ")
    arrow = pc.split_pattern(second, " -> ", max_splits=1)
    event = pc.if_else(has_paren, item(paren, 0), pc.if_else(has_arrow, item(arrow, 0), second))
    args = pc.if_else(has_paren, enter_args, pc.if_else(has_arrow, item(arrow, 1), pc.coalesce(third, "")))
    sep = pc.if_else(has_paren, "(", pc.if_else(has_arrow, " -> ", ": "))

    flen = np.asarray(pc.binary_length(flags).fill_null(99))
    first_is_digit = _np(pc.utf8_is_digit(pc.utf8_slice_codeunits(flags, 0, 1)))
    no_dash_tgid = pc.replace_substring(tgid, "-", "")
    ok = (_np(pc.ends_with(left_raw, " ")) & _digits(tid, 10) & _digits(cpu, 6) & _digits(sec, 18)
          & (_np(pc.equal(frac, "")) | _digits(frac, 9))
          & (flen <= 7) & ~first_is_digit & ~_np(pc.match_substring(flags, " "))
          & (_np(pc.equal(no_dash_tgid, "")) | _digits(tgid, 10))
          & _np(pc.greater(pc.binary_length(comm), 0)))
    names = pc.dictionary_encode(event)
    good_names = np.array([n is not None and bool(EVENT_NAME.match(n)) for n in names.dictionary.to_pylist()],
                          dtype=bool)
    codes = np.asarray(names.indices.fill_null(0))
    ok &= good_names[codes] if len(good_names) else False
    ok &= _np(pc.is_valid(names))
    fields = {"file": pa.nulls(len(lines), pa.string()).fill_null(""), "comm": comm, "tid": tid,
              "tgid": tgid, "cpu": cpu, "sec": sec, "frac": frac, "event": event, "sep": sep, "args": args}
    return ok, fields


def event_fields(lines: pa.Array) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Which lines are event lines, and their fields (strings; one element per event line, in order)."""
    fast_ok, fast = _fast(lines)
    if fast_ok.all():
        return fast_ok, fast
    keep = pa.array(fast_ok)
    fast = {k: v.filter(keep) for k, v in fast.items()}
    rest = np.flatnonzero(~fast_ok)
    m = pc.extract_regex(lines.take(pa.array(rest)), LINE)
    slow_ok = _np(m.is_valid())
    if not slow_ok.any():
        return fast_ok, fast
    m = m.filter(pa.array(slow_ok))
    cpu = m.field("cpu")
    slow = {name: m.field(name) for name in FIELDS if name != "cpu"}
    slow["cpu"] = pc.if_else(pc.equal(cpu, ""), m.field("lcpu"), cpu)
    is_event = fast_ok.copy()
    is_event[rest[slow_ok]] = True
    rows = np.concatenate([np.flatnonzero(fast_ok), rest[slow_ok]])
    order = pa.array(np.argsort(rows, kind="stable"))
    return is_event, {k: pa.concat_arrays([fast[k], slow[k].cast(pa.string())]).take(order) for k in FIELDS}
