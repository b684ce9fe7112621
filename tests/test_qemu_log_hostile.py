"""Hostile input to the QEMU log importer, generated (hypothesis): mutated catalogue lines, random
text, control characters, broken prefixes. Whatever comes in: no crash, every line is accounted
for exactly once (a row, an unknown or filtered event, a lost line with --skip-bad, a non-trace
or blank line), and a row is never a wrong event: its values are what QEMU's format, matched by
Python's `re` on that one line, says."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.importers import TraceFormatError
from pipeline.importers.qemu_catalogue import CATALOGUE, EVENTS
from pipeline.importers.qemu_log import import_qemu_log
from pipeline.importers.qemu_prefixes import INNER
from pipeline.runstore import open_run

VALID = [f"{e.name} {e.example}".rstrip() for e in CATALOGUE]
PREFIXES = ["", "  ", "\t", "12@1795262400.000001:", "12@1795262400.000001: ", "x@1.2:", "99999999999@1.1:",
            "12@99999999999999.1:", "2026-11-21T12:00:00Z ", "(1:main): ", "qemu: (1:a): ", "-> ", "{", "Nov 21 "]


@st.composite
def mutated(draw):
    line = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(list("0123456789abcdefxXzZ -_:@#=,.()[]\t\r\\'\"%\x00\x7f") + ["é", "\u2028",
                                                                                              "0x", "ffffffffffffffffff"]))
        if op == "insert":
            line = line[:pos] + ch + line[pos:]
        elif op == "delete":
            line = line[:pos] + line[pos + 1:]
        else:
            line = line[:pos] + ch + line[pos + 1:]
    return draw(st.sampled_from(PREFIXES)) + line


LINE = st.one_of(mutated(), st.sampled_from(VALID),
                 st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=80))


def _expected_value(typ: str, text: str):
    if typ == "x":
        return int(text, 16)
    if typ == "p":
        return 0 if text == "(nil)" else int(text, 16)
    return int(text) if typ in "du" else text


def _check_row(row: dict, line: str) -> None:
    """The row a line became is what QEMU's format says the line holds."""
    m = re.match(INNER, line.lstrip(" \t"))
    assert m, f"row from a line that is no trace line: {line!r}"
    ev = EVENTS[m["event"]]
    fm = re.fullmatch(ev.pattern(), m["args"] or "")
    assert fm, f"row from arguments that do not fit {ev.name}'s format: {line!r}"
    for column, expr in ev.columns.items():
        ref = re.fullmatch(r"f_(\w+)", expr)
        if not ref:
            continue
        name = ref[1]
        texts = [v for k, v in fm.groupdict().items() if k.rsplit("__", 1)[0] == name and v is not None]
        if texts:
            assert row[column] == _expected_value(ev.fields[name], texts[0]), (column, line)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(lines=st.lists(LINE, min_size=1, max_size=25))
def test_hostile_lines(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("hostile")
    # A bare line without time keeps the log untimed, so that ts_ns is each row's line number.
    lines = lines + ["migration_bitmap_sync_start"]
    src = tmp / "in.log"
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    stored = src.read_bytes().decode("utf-8", "replace").split("\n")[:-1]
    stored = [s.rstrip("\r\n") for s in stored]
    try:
        res = import_qemu_log([src], tmp / "run", skip_bad=True)
    except TraceFormatError as e:   # only a file that holds no trace line at all may be refused
        pytest.fail(f"refused although the last line is a trace line: {e}")
    run = open_run(tmp / "run")
    session = run.manifest["sessions"][0]
    assert session["clock"]["domain"] == "untimed"
    blank = sum(1 for s in stored if not s.lstrip(" \t"))
    filtered = sum(session.get("catalogue_events_outside_family", {}).values())
    accounted = (sum(res["rows"].values()) + sum(res["unknown"].values()) + res["bad"] + res["non_trace"]
                 + blank + filtered)
    assert accounted == len(stored)
    for family in res["rows"]:
        for row in run.read_family(family).to_pylist():
            _check_row(row, stored[row["ts_ns"] - 1])


def test_known_mutations_are_reported_with_their_line(tmp_path):
    src = tmp_path / "in.log"
    src.write_text("kvm_set_user_memory Slot#0 flags=0x0 gpa=0x1e3 size=1e3 ua=0x0 ret=0\n")
    with pytest.raises(TraceFormatError) as e:   # DuckDB would cast '1e3'; QEMU never prints it
        import_qemu_log([src], tmp_path / "run")
    assert (e.value.line, e.value.field) == (1, "size")
