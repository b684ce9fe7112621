import json
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from pipeline.runstore import RunError, RunWriter, open_run
from pipeline.schema import FAMILIES, SCHEMA_VERSION


def _discards(n, start=0):
    return {"ts_ns": list(range(start, start + n)), "pid": [1] * n, "tid": [1] * n, "comm": ["x"] * n,
            "source": ["test"] * n, "syscall": ["madvise"] * n, "hva_start": [4096 * i for i in range(n)],
            "size": [4096] * n, "advice": [4] * n}


def test_chunks_manifest_and_ids(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="test", kind="importer", chunk_rows=100) as w:
        w.write("discards", _discards(250))
        w.count_lost("discards", 5, "ring buffer full")
    r = open_run(run)
    assert r.state == "clean"
    assert len(r.chunk_files("discards")) == 3  # 100 + 100 at once, the last 50 at close
    t = r.read_family("discards")
    assert t.num_rows == 250 and t.column("event_id").to_pylist() == list(range(1, 251))
    assert r.manifest["lost"] == {"discards": 5}
    assert r.read_family("lost_events").to_pylist()[0]["count"] == 5
    assert r.manifest["families"]["discards"] == {"rows": 250, "chunks": 3}
    assert r.row_counts()["discards"] == 250
    for f in r.chunk_files("discards"):
        assert pq.read_schema(f).metadata[b"vmemtrace.schema_version"] == str(SCHEMA_VERSION).encode()

    # A second session appends with fresh ids.
    with RunWriter(run, source="again", kind="importer") as w:
        w.write("discards", _discards(2))
    r = open_run(run)
    assert r.read_family("discards").column("event_id").to_pylist()[-2:] == [252, 253]
    assert [s["source"] for s in r.manifest["sessions"]] == ["test", "again"]


def test_every_family_round_trips_empty(tmp_path):
    with RunWriter(tmp_path / "run", source="t", kind="importer"):
        pass
    r = open_run(tmp_path / "run")
    for fam in FAMILIES:
        assert r.read_family(fam.name).schema.equals(fam.schema, check_metadata=False)


def test_exception_marks_unclean_and_keeps_chunks(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with RunWriter(run, source="t", kind="collector", chunk_rows=10) as w:
            w.write("discards", _discards(15))
            1 / 0
    r = open_run(run)
    assert r.state == "unclean"
    assert r.row_counts()["discards"] == 10  # the flushed chunk survives; the 5 buffered rows do not


def test_sigkill_leaves_readable_run_marked_unclean(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from pipeline.runstore import RunWriter
        from tests.test_runstore import _discards
        w = RunWriter({str(run)!r}, source="victim", kind="collector", chunk_rows=100)
        w.write("discards", _discards(300))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    r = open_run(run)
    assert r.state == "unclean"
    assert r.manifest["sessions"][0]["state"] == "running"  # as the writer left it
    assert r.session_state(r.manifest["sessions"][0]) == "unclean"  # its writer is gone
    assert r.read_family("discards").num_rows == 300
    # A later writer records that the killed session stopped uncleanly and continues the ids.
    with RunWriter(run, source="next", kind="importer") as w:
        w.write("discards", _discards(1))
    r = open_run(run)
    assert [s["state"] for s in r.manifest["sessions"]] == ["unclean", "clean"]
    assert r.read_family("discards").column("event_id").to_pylist()[-1] == 301


def test_open_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        open_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"not a vmemtrace run \(manifest.json is missing\)"):
        open_run(tmp_path / "empty")
    with RunWriter(tmp_path / "run", source="t", kind="importer"):
        pass
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunError, match=f"schema version {SCHEMA_VERSION + 1}, this vmemtrace reads up to "
                                       f"{SCHEMA_VERSION}"):
        open_run(tmp_path / "run")
    (tmp_path / "run" / "manifest.json").write_text("{oops")
    with pytest.raises(RunError, match="manifest.json: not valid JSON"):
        open_run(tmp_path / "run")


def test_refuses_foreign_directory_and_used_ids(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty and has no manifest.json"):
        RunWriter(tmp_path / "busy", source="t", kind="importer")
    with RunWriter(tmp_path / "run", source="t", kind="importer") as w:
        w.write("discards", _discards(3))
    with pytest.raises(RunError, match="event ids below 4 are already used"):
        with RunWriter(tmp_path / "run", source="t", kind="importer") as w:
            w.write("discards", {**_discards(1), "event_id": [2]})
