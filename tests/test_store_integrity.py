"""Run integrity: one writer per run, staged imports that leave a run as it was when rejected,
event ids unique across families, duplicate input refused, a zombie writer counted as dead."""

import hashlib
import json
import multiprocessing as mp
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.importers import TraceFormatError
from pipeline.importers.jsonl import import_jsonl
from pipeline.runstore import (MAX_GIVEN_EVENT_ID, DuplicateInputError, InvalidRowsError, RunLockedError,
                               RunWriter, open_run)
from pipeline.schema import FAMILIES
from tests.test_runstore import _discards

REPO = Path(__file__).resolve().parent.parent


def tree_digest(root: Path, *, skip_staging: bool = False) -> str:
    """Every file and directory under root (hidden ones too): path, mode, and content."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if skip_staging and p.relative_to(root).parts[0].startswith(".staging-"):
            continue
        st = p.lstat()
        h.update(f"{p.relative_to(root)} {stat.filemode(st.st_mode)}\n".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _dma(n, start=0):
    return {"ts_ns": list(range(start, start + n)), "pid": [2] * n, "tid": [2] * n, "comm": ["q"] * n,
            "source": ["test"] * n, "api": ["vfio_type1"] * n, "op": ["map"] * n, "vaddr": [0] * n,
            "iova": [0] * n, "size": [4096] * n}


# -- concurrent writers --------------------------------------------------------------------------

_barrier = None


def _init(barrier):
    global _barrier
    _barrier = barrier


def _one_writer(args):
    run, name, kind, rows = args
    _barrier.wait()
    try:
        with RunWriter(run, source=name, kind=kind, chunk_rows=500) as w:
            for start in range(0, rows, 250):
                w.write("discards", _discards(250, start))
                w.write("dma", _dma(50, start))
        return "ok", rows + rows // 5
    except RunLockedError as e:
        return "locked", str(e)


TRIALS = 30


def test_concurrent_writers_one_wins_nothing_lost(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    outcome = {"ok": 0, "locked": 0}
    with ctx.Pool(2, initializer=_init, initargs=(barrier,)) as pool:
        for trial in range(TRIALS):
            run = tmp_path / f"run{trial}"
            kinds = ("importer", "collector") if trial % 2 else ("importer", "importer")
            results = pool.map(_one_writer, [(run, "a", kinds[0], 1000), (run, "b", kinds[1], 1000)])
            ok = [n for status, n in results if status == "ok"]
            for status, msg in results:
                outcome[status] += 1
                if status == "locked":
                    assert "is writing this run; one writer at a time" in msg and "process " in msg
            assert ok, results
            r = open_run(run)
            counts = r.row_counts()
            assert counts["discards"] + counts["dma"] == sum(ok)  # 0 events lost
            ids = pa.concat_arrays([r.read_family(f).column("event_id").combine_chunks() for f in ("discards", "dma")])
            assert pc.count_distinct(ids).as_py() == len(ids)  # ids unique across families
            assert [s["state"] for s in r.manifest["sessions"]] == ["clean"] * len(ok)
            assert not list(run.glob(".staging-*"))
    print(f"{TRIALS} trials: {outcome['ok']} writes committed, {outcome['locked']} refused, 0 events lost")
    assert outcome["ok"] + outcome["locked"] == 2 * TRIALS


def _hold_lock_script(run: Path) -> str:
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.runstore import RunWriter
        from tests.test_runstore import _discards
        w = RunWriter({str(run)!r}, source="holder", kind="collector")
        w.write("discards", _discards(3)); w.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        w.close()
    """)


def test_second_writer_fails_at_once_naming_the_holder(tmp_path, cli):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _hold_lock_script(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} is writing this run") as exc:
            RunWriter(run, source="second", kind="importer")
        assert exc.value.holder_pid == holder.pid
        r = open_run(run)
        assert r.state == "running" and r.writer_pid() == holder.pid
        import duckdb

        with pytest.raises(RunLockedError):  # detect refuses while a writer holds the run
            r.create_views(duckdb.connect())
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and open_run(run).state == "clean"


def test_zombie_writer_counts_as_dead(tmp_path):
    run = tmp_path / "run"
    code = _hold_lock_script(run).replace("sys.stdin.readline()\nw.close()", "import os; os._exit(0)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "ready"
    try:
        # The leader shows Z while its other threads still exit; the files (and the lock) go with the last.
        for _ in range(400):
            if Path(f"/proc/{child.pid}/stat").read_text().split()[2] == "Z" and open_run(run).writer_pid() is None:
                break
            time.sleep(0.05)
        assert Path(f"/proc/{child.pid}/stat").read_text().split()[2] == "Z"  # not reaped: a zombie
        r = open_run(run)
        assert r.session_state(r.manifest["sessions"][0]) == "unclean" and r.writer_pid() is None
        with RunWriter(run, source="next", kind="importer") as w:  # the zombie holds nothing
            w.write("discards", _discards(1))
    finally:
        child.wait()
    assert [s["state"] for s in open_run(run).manifest["sessions"]] == ["unclean", "clean"]


# -- rejected imports leave the run as it was ----------------------------------------------------

def test_rejected_import_leaves_run_byte_identical(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="first", kind="importer", chunk_rows=100) as w:
        w.write("discards", _discards(250))
    before = tree_digest(run)
    with pytest.raises(InvalidRowsError, match=r"row 1: field 'syscall': 'bogus'"):
        with RunWriter(run, source="second", kind="importer", chunk_rows=100) as w:
            w.write("discards", _discards(300))  # three chunks flushed to staging
            w.write("dma", _dma(10))
            w.write("discards", {**_discards(2), "syscall": ["madvise", "bogus"]})
    assert tree_digest(run) == before
    with pytest.raises(ZeroDivisionError):
        with RunWriter(run, source="third", kind="importer", chunk_rows=100) as w:
            w.write("discards", _discards(300))
            1 / 0
    assert tree_digest(run) == before
    # A new run directory whose import failed is removed entirely.
    with pytest.raises(ZeroDivisionError):
        with RunWriter(tmp_path / "new", source="t", kind="importer", chunk_rows=10) as w:
            w.write("discards", _discards(30))
            1 / 0
    assert not (tmp_path / "new").exists()


def test_jsonl_import_refused_at_the_store_names_the_line(tmp_path):
    run = tmp_path / "run"
    first = tmp_path / "first.jsonl"
    ev = {"kind": "discard", "ts_ns": 1, "pid": 1, "syscall": "madvise", "hva_start": 0, "size": 4096}
    first.write_text("\n".join(json.dumps({**ev, "event_id": i}) for i in range(1, 6)) + "\n")
    import_jsonl([first], run)
    before = tree_digest(run)
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({**ev, "event_id": 10}) + "\n" + json.dumps({**ev, "event_id": 3}) + "\n")
    with pytest.raises(TraceFormatError, match=rf"{second}:2: field 'event_id': 3: event ids below 6 are "
                                               "already used in this run"):
        import_jsonl([second], run)
    assert tree_digest(run) == before


def test_killed_import_leaves_only_hidden_staging_that_readers_ignore(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="first", kind="importer") as w:
        w.write("discards", _discards(5))
    visible_before = tree_digest(run)
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.runstore import RunWriter
        from tests.test_runstore import _discards
        w = RunWriter({str(run)!r}, source="victim", kind="importer", chunk_rows=10)
        w.write("discards", _discards(100))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == -signal.SIGKILL
    assert len(list(run.glob(".staging-*/discards/*.parquet"))) == 10
    assert tree_digest(run, skip_staging=True) == visible_before
    r = open_run(run)
    assert r.state == "clean" and r.row_counts()["discards"] == 5 and len(r.manifest["sessions"]) == 1
    with RunWriter(run, source="next", kind="importer") as w:  # the next writer clears the leftovers
        pass
    assert not list(run.glob(".staging-*"))
    assert open_run(run).row_counts()["discards"] == 5


def test_import_killed_mid_commit_is_complete_for_readers_and_finished_by_the_next_writer(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="first", kind="importer") as w:
        w.write("discards", _discards(5))
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import pipeline.runstore as rs
        from tests.test_runstore import _discards
        real = os.replace
        def replace(src, dst):  # die right after the manifest listing the session is in place
            real(src, dst)
            if str(dst).endswith("manifest.json") and "victim" in open(dst).read():
                os.kill(os.getpid(), signal.SIGKILL)
        rs.os.replace = replace
        with rs.RunWriter({str(run)!r}, source="victim", kind="importer", chunk_rows=10) as w:
            w.write("discards", _discards(30))
    """)
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == -signal.SIGKILL
    assert len(list(run.glob(".staging-0002/discards/*.parquet"))) == 3
    r = open_run(run)
    assert r.state == "clean" and r.row_counts()["discards"] == 35 == r.manifest["families"]["discards"]["rows"]
    with RunWriter(run, source="next", kind="importer"):
        pass
    assert not list(run.glob(".staging-*")) and len(list((run / "discards").glob("*.parquet"))) == 4
    assert open_run(run).read_family("discards").num_rows == 35


def test_interrupted_import_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="first", kind="importer") as w:
        w.write("discards", _discards(5))
    before = tree_digest(run)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.runstore import RunWriter
        from tests.test_runstore import _discards
        with RunWriter({str(run)!r}, source="victim", kind="importer", chunk_rows=10) as w:
            w.write("discards", _discards(100))
            print("ready", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    assert list(run.glob(".staging-*/discards/*.parquet"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert tree_digest(run) == before


# -- event ids -----------------------------------------------------------------------------------

def test_ids_unique_across_families_and_bounded(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="t", kind="importer") as w:
        w.write("discards", {**_discards(3), "event_id": [5, 7, 9]})
        w.write("dma", _dma(2))                      # generated after the largest given id: 10, 11
        with pytest.raises(InvalidRowsError, match=r"row 1: field 'event_id': 7: already used earlier"):
            w.write("dma", {**_dma(2), "event_id": [6, 7]})
        with pytest.raises(InvalidRowsError, match="already used earlier"):
            w.write("dma", {**_dma(1), "event_id": [11]})
        w.write("dma", {**_dma(2), "event_id": [6, None]})  # a free id, and one assigned
    r = open_run(run)
    ids = sorted(r.read_family("discards").column("event_id").to_pylist() + r.read_family("dma").column("event_id").to_pylist())
    assert ids == [5, 6, 7, 9, 10, 11, 12]

    for huge in (2**63 - 1, MAX_GIVEN_EVENT_ID + 1):
        with pytest.raises(InvalidRowsError, match=f"field 'event_id': {huge}: above {MAX_GIVEN_EVENT_ID}"):
            with RunWriter(run, source="t", kind="importer") as w:
                w.write("discards", {**_discards(1), "event_id": [huge]})
    with RunWriter(run, source="t", kind="importer") as w:  # the largest allowed id ...
        w.write("discards", {**_discards(1), "event_id": [MAX_GIVEN_EVENT_ID]})
    with RunWriter(run, source="t", kind="importer") as w:  # ... leaves later imports possible
        w.write("discards", _discards(2))
    assert open_run(run).read_family("discards").column("event_id").to_pylist()[-2:] == [
        MAX_GIVEN_EVENT_ID + 1, MAX_GIVEN_EVENT_ID + 2]


def test_same_input_twice_is_refused_unless_forced(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"kind": "discard", "ts_ns": 1, "pid": 1, "syscall": "madvise", "size": 1}) + "\n")
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(f.read_bytes())
    import_jsonl([f], tmp_path / "run")
    before = tree_digest(tmp_path / "run")
    with pytest.raises(DuplicateInputError, match=rf"{copy}: already imported into .* by session 1 "
                                                  rf"\(jsonl, as {f}\)"):
        import_jsonl([copy], tmp_path / "run")
    assert tree_digest(tmp_path / "run") == before
    import_jsonl([copy], tmp_path / "run", force=True)
    r = open_run(tmp_path / "run")
    assert r.row_counts()["discards"] == 2
    assert r.manifest["sessions"][0]["inputs"][0]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


def test_modes_have_no_group_or_world_write_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with RunWriter(tmp_path / "run", source="t", kind="collector") as w:
            w.write("discards", _discards(3))
    finally:
        os.umask(old)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    assert len(paths) >= 4
    for p in paths:
        assert p.stat().st_mode & 0o022 == 0, p


def test_every_family_empty_round_trip_after_staging(tmp_path):
    with RunWriter(tmp_path / "run", source="t", kind="importer"):
        pass
    r = open_run(tmp_path / "run")
    assert all(r.read_family(f.name).num_rows == 0 for f in FAMILIES) and r.state == "clean"
