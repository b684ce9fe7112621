"""The write gate: every row that reaches a run is checked against the schema, whoever writes it."""

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.importers import TraceFormatError
from pipeline.importers.jsonl import import_jsonl, read_jsonl
from pipeline.runstore import InvalidRowsError, RunWriter, open_run
from pipeline.schema import FAMILIES, FAMILY_BY_NAME, check_rows, int_bounds, loose_int_array

INT_FIELDS = [(fam.name, f.name, f.type) for fam in FAMILIES for f in fam.schema
              if pa.types.is_integer(f.type) and f.name != "event_id"]


def _row(fam, overrides):
    """One valid row of `fam` (required fields set to an in-range value or the first enum value)."""
    from pipeline.schema import field_enum

    row = {}
    for f in fam.schema:
        if f.name == "event_id" or f.nullable:
            continue
        if pa.types.is_string(f.type):
            row[f.name] = (field_enum(f) or ("x",))[0]
        elif pa.types.is_boolean(f.type):
            row[f.name] = True
        else:
            row[f.name] = 1
    row.update(overrides)
    return row


def _table(fam, rows):
    names = dict.fromkeys(n for r in rows for n in r)
    cols = {n: [r.get(n) for r in rows] for n in names}
    return pa.table({n: loose_int_array(v) if pa.types.is_integer(fam.schema.field(n).type) else pa.array(v)
                     for n, v in cols.items()})


@st.composite
def out_of_range(draw):
    family, column, t = draw(st.sampled_from(INT_FIELDS))
    lo, hi = int_bounds(t)
    value = draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)))
    return family, column, value


@st.composite
def in_range(draw):
    family, column, t = draw(st.sampled_from(INT_FIELDS))
    lo, hi = int_bounds(t)
    return family, column, draw(st.integers(min_value=lo, max_value=hi))


@settings(max_examples=300, deadline=None)
@given(case=out_of_range(), row=st.integers(min_value=0, max_value=4))
def test_out_of_range_is_refused_naming_row_and_column(case, row):
    family, column, value = case
    fam = FAMILY_BY_NAME[family]
    rows = [_row(fam, {}) for _ in range(5)]
    rows[row][column] = value
    violations = check_rows(fam, _table(fam, rows))
    assert [(v.row, v.column) for v in violations] == [(row, column)]
    assert "is outside" in violations[0].message


@settings(max_examples=300, deadline=None)
@given(case=in_range())
def test_in_range_is_accepted(case):
    family, column, value = case
    fam = FAMILY_BY_NAME[family]
    assert check_rows(fam, _table(fam, [_row(fam, {column: value})])) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=out_of_range())
def test_run_writer_refuses_and_writes_nothing(tmp_path_factory, case):
    family, column, value = case
    fam = FAMILY_BY_NAME[family]
    run = tmp_path_factory.mktemp("gate") / "run"
    with pytest.raises(InvalidRowsError) as exc:
        with RunWriter(run, source="t", kind="importer") as w:
            w.write(family, {k: [v] for k, v in _row(fam, {column: value}).items()})
    assert exc.value.family == family and exc.value.violations[0].column == column
    assert f"field {column!r}" in str(exc.value) and "row 0" in str(exc.value)
    assert not run.exists()  # a new run whose only write was refused is removed


@pytest.mark.parametrize("family, column, value, ok", [
    ("discards", "fd", -1, True),                  # fd -1 is a real argument
    ("discards", "fd", 0xFFFFFFFFFFFFFFFF, False),  # the kernel's -1 printed as u64 is not an int32
    ("discards", "size", -1, False),
    ("discards", "size", 2**64, False),
    ("discards", "tid", 2**31, False),
    ("memslots", "as_id", 70000, False),
    ("discards", "ts_ns", 2**63, False),           # seconds beyond int64 ns
])
def test_issue_12_values(family, column, value, ok):
    fam = FAMILY_BY_NAME[family]
    violations = check_rows(fam, _table(fam, [_row(fam, {column: value})]))
    assert (violations == []) is ok
    if not ok:
        assert violations[0].column == column and violations[0].value == value


def test_enum_null_and_type_are_refused_by_the_store(tmp_path):
    fam = FAMILY_BY_NAME["discards"]
    base = {k: [v, v] for k, v in _row(fam, {}).items()}
    cases = [({"syscall": ["madvise", "bogus"]}, 1, "syscall", "'bogus' is not one of"),
             ({"comm": ["x", None]}, 1, "comm", "must not be null"),
             ({"size": ["1", "2"]}, None, "size", "has type string")]
    for change, row, column, text in cases:
        with pytest.raises(InvalidRowsError) as exc:
            with RunWriter(tmp_path / "run", source="t", kind="collector") as w:
                w.write("discards", {**base, **change})
        v = exc.value.violations[0]
        assert (v.row, v.column) == (row, column) and text in v.message
    with pytest.raises(InvalidRowsError, match="field 'colour': not a column of discards"):
        with RunWriter(tmp_path / "run", source="t", kind="collector") as w:
            w.write("discards", {**base, "colour": [1, 2]})


GOOD = {"kind": "discard", "ts_ns": 10, "pid": 7, "syscall": "madvise", "hva_start": "0x7f0000000000",
        "size": 4096, "advice": 4, "ret": 0}


@pytest.mark.parametrize("change, field", [
    ({"fd": "0xffffffffffffffff"}, "fd"), ({"size": -4096}, "size"), ({"size": 2**70}, "size"),
    ({"size": 2**300}, "size"), ({"tid": 2**31}, "tid"), ({"ts_ns": 2**63}, "ts_ns"),
    ({"syscall": "bogus"}, "syscall"), ({"event_id": 0}, "event_id")])
def test_jsonl_gate_errors_name_file_line_and_field(tmp_path, change, field):
    f = tmp_path / "t.jsonl"
    f.write_text("# comment\n" + json.dumps(GOOD) + "\n" + json.dumps({**GOOD, **change}) + "\n")
    with pytest.raises(TraceFormatError) as exc:
        read_jsonl([f])
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(f), 3, field)


def test_jsonl_memslot_as_id_and_skip_bad(tmp_path):
    slot = {"kind": "memslot", "ts_ns": 1, "pid": 1, "ioctl": "region", "as_id": 0, "slot": 1, "flags": 0,
            "gpa": 0, "size": 4096, "hva": 4096}
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(e) for e in [slot, {**slot, "as_id": 70000}, GOOD,
                                                   {**GOOD, "size": -1}, {**GOOD, "fd": -1}]) + "\n")
    with pytest.raises(TraceFormatError, match=r":2: field 'as_id': 70000 is outside uint16"):
        read_jsonl([f])
    counts = import_jsonl([f], tmp_path / "run", skip_bad=True)
    assert counts == {"memslots": 1, "discards": 2}
    run = open_run(tmp_path / "run")
    assert run.manifest["lost"] == {"jsonl": 2}
    assert [b.split(": ", 1)[0] for b in run.manifest["sessions"][0]["bad_lines"]] == [f"{f}:2", f"{f}:4"]
    assert run.read_family("discards").column("fd").to_pylist() == [None, -1]
