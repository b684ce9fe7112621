import json

import pytest

from pipeline.importers.jsonl import TraceFormatError, read_jsonl
from pipeline.runstore import open_run

GOOD = {"kind": "discard", "ts_ns": 10, "pid": 7, "syscall": "madvise",
        "hva_start": "0x7f0000000000", "size": 4096, "advice": 4, "ret": 0}


@pytest.mark.parametrize("line, field, text", [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "must be a JSON object"),
    (json.dumps({"ts_ns": 1, "pid": 1}), "kind", "missing"),
    (json.dumps({**GOOD, "kind": "nope"}), "kind", "unknown kind 'nope'"),
    (json.dumps({**GOOD, "colour": 1}), "colour", "not a column of discard"),
    (json.dumps({**GOOD, "size": "lots"}), "size", "'lots' is not an integer"),
    (json.dumps({**GOOD, "size": -1}), "size", "outside uint64"),
    (json.dumps({**GOOD, "pid": 2**40}), "pid", "outside int32"),
    (json.dumps({**GOOD, "size": True}), "size", "not an integer"),
    (json.dumps({**GOOD, "syscall": "munmap"}), "syscall", "not one of madvise"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "ts_ns"}), "ts_ns", "missing"),
    (json.dumps({**GOOD, "comm": None}), "comm", "must not be null"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, field, text):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(GOOD) + "\n# a comment\n\n" + line + "\n")
    with pytest.raises(TraceFormatError) as exc:
        read_jsonl([f])
    assert exc.value.line == 4 and exc.value.field == field
    assert str(exc.value).startswith(f"{f}:4: ")
    assert text in str(exc.value)


def test_bad_input_writes_nothing_and_keeps_the_run(tmp_path, cli):
    run = tmp_path / "run"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    assert cli("import", "jsonl", good, "--run", run).exit_code == 0
    before = sorted(p.name for p in run.rglob("*"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "advice": "x"}) + "\n")
    res = cli("import", "jsonl", bad, "--run", run)
    assert res.exit_code == 2
    assert f"{bad}:2: field 'advice'" in res.output
    assert sorted(p.name for p in run.rglob("*")) == before
    assert open_run(run).row_counts()["discards"] == 1
    res = cli("import", "jsonl", bad, "--run", tmp_path / "fresh")
    assert res.exit_code == 2 and not (tmp_path / "fresh").exists()


def test_defaults_and_hex(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(GOOD) + "\n")
    table = read_jsonl([f]).tables()["discards"]
    row = table.to_pylist()[0]
    assert row["tid"] == 7 and row["comm"] == "" and row["source"] == "jsonl"
    assert row["hva_start"] == 0x7F0000000000 and row["event_id"] is None


def test_duplicate_explicit_ids_are_refused(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({**GOOD, "event_id": 3}) + "\n" + json.dumps({**GOOD, "event_id": 3}) + "\n")
    with pytest.raises(TraceFormatError, match=r":2: field 'event_id': 3 already used at .*:1"):
        read_jsonl([f])
