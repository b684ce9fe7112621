"""Faults around a run: damaged chunks, glob characters in paths, read-only runs, disk full,
stale findings, malformed manifests, formula injection in CSV."""

import contextlib
import csv
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.findings_store import has_findings, load_findings, save_findings, write_findings_csv
from pipeline.runstore import (DamagedChunkError, DiskFullError, ManifestError, RunError, RunWriter,
                               StaleFindingsError, open_run)
from pipeline.schema import FINDING_SCHEMA
from tests.conftest import FIXTURES, require
from tests.test_runstore import _discards
from tests.test_store_integrity import tree_digest


def _two_chunk_run(path: Path) -> Path:
    with RunWriter(path, source="t", kind="importer", chunk_rows=10) as w:
        w.write("discards", _discards(20))
    return path


# -- damaged chunks ------------------------------------------------------------------------------

def _damage(chunk: Path, how: str) -> None:
    data = chunk.read_bytes()
    if how == "zero bytes":
        chunk.write_bytes(b"")
    elif how == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    elif how == "not parquet":
        chunk.write_text("hello, I am a text file pretending to be a chunk\n" * 20)
    elif how == "wrong columns":
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"event_id": [1], "colour": ["blue"]}), chunk)


@pytest.mark.parametrize("how, reason", [
    ("zero bytes", "empty file (0 bytes)"), ("truncated", "not a readable Parquet file"),
    ("not parquet", "not a readable Parquet file"), ("wrong columns", "wrong columns: 'colour'")])
def test_damaged_chunk_is_named_or_skipped(tmp_path, how, reason):
    run = _two_chunk_run(tmp_path / "run")
    bad = sorted((run / "discards").glob("*.parquet"))[0]
    _damage(bad, how)
    r = open_run(run)
    for read in (lambda: r.read_family("discards"), r.row_counts, lambda: r.create_views(duckdb.connect())):
        with pytest.raises(DamagedChunkError) as exc:
            read()
        assert str(exc.value).startswith(f"{bad}: damaged chunk: {reason}")

    r = open_run(run, skip_damaged=True)
    assert r.read_family("discards").num_rows == 10 and r.row_counts()["discards"] == 10
    con = duckdb.connect()
    r.create_views(con)
    assert con.execute("SELECT count(*) FROM discards").fetchone() == (10,)
    rows = con.execute("SELECT family, file, reason FROM damaged_chunks").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("discards", str(bad)) and rows[0][2].startswith(reason)


# -- glob characters -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, sibling", [("a*", "ab"), ("q?", "qx"), ("r[1]", "r1"), ("s[ab]", "sa")])
def test_glob_characters_never_read_another_runs_chunks(tmp_path, name, sibling):
    with RunWriter(tmp_path / name, source="t", kind="importer") as w:
        w.write("discards", _discards(3))
    with RunWriter(tmp_path / sibling, source="t", kind="importer") as w:
        w.write("discards", _discards(5))
    for run, n in ((name, 3), (sibling, 5)):
        con = duckdb.connect()
        open_run(tmp_path / run).create_views(con)
        assert con.execute("SELECT count(*) FROM discards").fetchone() == (n,)


# -- read-only runs --------------------------------------------------------------------------------

def _detect_into(run_path: Path, out: Path):
    from queries.runner import run_detectors

    r = open_run(run_path)
    result = run_detectors(r)
    save_findings(r, result.findings, [vars(s) for s in result.statuses], out_dir=out)
    assert has_findings(r, out)
    return load_findings(r, out)


def test_detect_and_load_never_write_into_the_run(tmp_path):
    run = _two_chunk_run(tmp_path / "run")
    subprocess.run(["chmod", "-R", "a-w", str(run)], check=True)
    try:
        before = tree_digest(run)
        findings, statuses = _detect_into(run, tmp_path / "out")
        assert statuses and tree_digest(run) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(run)], check=True)


@contextlib.contextmanager
def _mounted(args: list[str], target: Path):
    target.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    require(res.returncode == 0, f"cannot mount here ({res.stderr.strip() or 'not root'})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_read_only_mounted_run_is_detected_with_output_elsewhere(tmp_path):
    require(os.geteuid() == 0, "needs root to bind-mount a run read-only")
    run = _two_chunk_run(tmp_path / "run")
    with _mounted(["--bind", "-o", "ro", str(run)], tmp_path / "ro") as ro:
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")  # really read-only, even for root
        findings, statuses = _detect_into(ro, tmp_path / "out")
        assert (tmp_path / "out" / "findings.csv").exists() and statuses
        with pytest.raises(RunError):  # a writer says why it cannot, no traceback from deep inside
            RunWriter(ro, source="t", kind="importer").close()


# -- disk full -------------------------------------------------------------------------------------

def _random_discards(n, seed):
    rng = np.random.default_rng(seed)
    t = pa.table(_discards(n))
    for col in ("hva_start", "size"):  # incompressible, so chunks really take space
        t = t.set_column(t.schema.get_field_index(col), col, pa.array(rng.integers(0, 2**63, n, dtype=np.uint64)))
    return t


def test_disk_full_collector_keeps_what_it_committed(tmp_path):
    with _mounted(["-t", "tmpfs", "-o", "size=6m", "tmpfs"], tmp_path / "small") as small:
        run = small / "run"
        w = RunWriter(run, source="bpf", kind="collector", chunk_rows=50_000)
        with pytest.raises(DiskFullError, match=rf"{run}/discards/part-0001-\d+\.parquet: no space left on device"):
            for i in range(20):
                w.write("discards", _random_discards(50_000, i))
        r = open_run(run)
        session = r.manifest["sessions"][0]
        assert r.state == "unclean" and session["state"] == "unclean"
        kept = r.read_family("discards").num_rows  # every committed chunk reads back
        assert kept == r.manifest["families"]["discards"]["rows"] > 0 and kept % 50_000 == 0
        assert "no space left on device" in session["stopped"]["reason"]
        assert not list(run.rglob(".*.tmp"))


def test_disk_full_import_leaves_the_run_as_it_was(tmp_path):
    with _mounted(["-t", "tmpfs", "-o", "size=6m", "tmpfs"], tmp_path / "small") as small:
        run = _two_chunk_run(small / "run")
        before = tree_digest(run)
        with pytest.raises(DiskFullError):
            with RunWriter(run, source="big", kind="importer", chunk_rows=50_000) as w:
                for i in range(20):
                    w.write("discards", _random_discards(50_000, i))
        assert tree_digest(run) == before and open_run(run).row_counts()["discards"] == 20
        filler = small / "filler"  # and findings that do not fit say so
        with open(filler, "wb") as fh:
            with contextlib.suppress(OSError):
                while True:
                    fh.write(os.urandom(1 << 20))
        r = open_run(run)
        findings = FINDING_SCHEMA.empty_table()
        with pytest.raises(DiskFullError, match="no space left on device"):
            save_findings(r, findings, [{"id": "X", "status": "ran"}] * 20000, out_dir=small / "out")


# -- stale findings --------------------------------------------------------------------------------

def test_findings_of_an_earlier_run_state_are_stale(tmp_path):
    run = _two_chunk_run(tmp_path / "run")
    r = open_run(run)
    r.create_views(duckdb.connect())
    save_findings(r, FINDING_SCHEMA.empty_table(), [])
    assert has_findings(r)
    load_findings(r)
    with RunWriter(run, source="later", kind="importer") as w:
        w.write("discards", _discards(1))
    r2 = open_run(run)
    assert not has_findings(r2)
    with pytest.raises(StaleFindingsError, match="computed before the run last changed"):
        load_findings(r2)
    # The run changed between reading it and storing findings: refused.
    r2.create_views(duckdb.connect())
    with RunWriter(run, source="during", kind="importer") as w:
        w.write("discards", _discards(1))
    with pytest.raises(StaleFindingsError, match="changed while the detectors ran"):
        save_findings(r2, FINDING_SCHEMA.empty_table(), [])


# -- manifests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda m: m["sessions"][0].update(kind="daemon"), "sessions[0].kind"),
    (lambda m: m["sessions"][0].update(clock={"domain": "sundial"}), "sessions[0].clock.domain"),
    (lambda m: m["lost"].update(discards="many"), "lost.discards"),
    (lambda m: m.update(families=[]), "families"),
    (lambda m: m["sessions"][0].update(inputs=[{"path": "x", "sha256": "nope", "bytes": 1}]),
     "sessions[0].inputs[0].sha256"),
    (lambda m: m.update(next_event_id=-3), "next_event_id"),
])
def test_malformed_manifest_names_the_field(tmp_path, edit, field):
    run = _two_chunk_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    edit(m)
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as exc:
        open_run(run)
    assert exc.value.field == field and str(exc.value).startswith(f"{run / 'manifest.json'}: field {field!r}")


def test_v1_manifests_open_normalised(tmp_path):
    for path in sorted((FIXTURES / "v1-run").glob("*/run")):
        r = open_run(path)
        assert r.manifest["schema_version"] == 1
        bpf = r.manifest["sessions"][0]
        assert bpf["clock"] == {"domain": "monotonic", "source": "CLOCK_MONOTONIC (bpf_ktime_get_ns)",
                                "alignment": "none", "offset_ns": None, "residual_ns": None, "matched_events": 0}
        assert all(s["clock"]["domain"] == "monotonic" for s in r.manifest["sessions"])
    with pytest.raises(RunError, match="is a file, not a run directory"):
        open_run(FIXTURES / "v1-run" / "kvm-boot" / "run" / "manifest.json")


def test_binary_manifest_is_a_clear_error(tmp_path):
    run = _two_chunk_run(tmp_path / "run")
    (run / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunError, match="manifest.json: not UTF-8 text"):
        open_run(run)


# -- CSV formula injection -------------------------------------------------------------------------

def test_csv_cells_that_start_a_formula_are_neutralised(tmp_path):
    evil = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd", "plain", "a=b"]
    n = len(evil)
    findings = pa.Table.from_pylist([{
        "finding_id": f"id{i}", "detector": "D1", "kind": "k", "severity": "high", "pid": 1, "comm": v,
        "event_ids": [1, 2], "related": [], "message": v} for i, v in enumerate(evil)], schema=FINDING_SCHEMA)
    path = tmp_path / f"{uuid.uuid4().hex}.csv"
    write_findings_csv(findings, path)
    rows = list(csv.DictReader(path.open(newline="")))
    assert len(rows) == n
    for row, v in zip(rows, evil):
        want = v if v in ("plain", "a=b") else "'" + v
        assert row["message"] == want and row["comm"] == want
    assert rows[0]["event_ids"] == "1 2"
    shutil.rmtree(tmp_path, ignore_errors=True)
