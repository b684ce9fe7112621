"""Booted-guest QEMU scenarios (tests/scenarios.py), each traced by `vmemtrace collect` with QEMU's
own trace log beside it, and the two records checked against each other."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import open_run
from queries.runner import run_detectors
from tests.conftest import require, require_bcc
from tests.qemu_vm import QEMU

ROOT = Path(__file__).resolve().parent.parent


def _scenario(name: str, tmp_path_factory) -> dict:
    require(os.geteuid() == 0, "needs root")
    require(Path(QEMU).exists(), f"{QEMU} is not installed")
    require(shutil.which("apt-get") is not None and Path("/bin/busybox").exists(),
            "the guest image needs apt-get and busybox-static")
    require_bcc()
    work = tmp_path_factory.mktemp(name)
    res = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(work / "run"), "--",
                          sys.executable, "-m", "tests.scenarios", name, str(work / "qemu")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    import_qemu_log([work / "qemu" / "qemu-trace.log"], work / "log-only", pid=result["qemu_pid"])
    shutil.copytree(work / "run", work / "both")
    import_qemu_log([work / "qemu" / "qemu-trace.log"], work / "both", pid=result["qemu_pid"])
    con = duckdb.connect()
    for table, run in (("bpf_discards", "run"), ("bpf_qemu", "run"), ("log_qemu", "log-only")):
        family = "discards" if table.endswith("discards") else "qemu"
        con.register(table, open_run(work / run).read_family(family))
    return {"work": work, "result": result, "pid": result["qemu_pid"], "con": con}


@pytest.fixture(scope="module")
def balloon(tmp_path_factory):
    return _scenario("balloon", tmp_path_factory)


@pytest.fixture(scope="module")
def reporting(tmp_path_factory):
    return _scenario("reporting", tmp_path_factory)


@pytest.fixture(scope="module")
def hint(tmp_path_factory):
    return _scenario("hint", tmp_path_factory)


def discards_agree(con: duckdb.DuckDBPyConnection, pid: int) -> int:
    """QEMU's logged ram_block_discard_range calls (table log_qemu) = the uprobed ones (bpf_qemu) =
    madvise(DONTNEED) seen by eBPF (bpf_discards), call for call; returns the bytes discarded."""
    logged = con.execute("SELECT count(*), sum(size) FROM log_qemu WHERE event = 'ram_block_discard_range'"
                         " AND ret = 0").fetchone()
    probed = con.execute("SELECT count(*), sum(size) FROM bpf_qemu WHERE event = 'ram_block_discard_range'"
                         f" AND ret = 0 AND pid = {pid}").fetchone()
    assert logged == probed and logged[0] > 0
    unmatched = con.execute(f"""
        SELECT count(*) FROM log_qemu q
        WHERE q.event = 'ram_block_discard_range' AND NOT EXISTS (
            SELECT 1 FROM bpf_discards d
            WHERE d.pid = {pid} AND d.syscall = 'madvise' AND d.advice = 4 AND d.ret = 0
              AND d.hva_start = q.hva AND d.size = q.size)
    """).fetchone()[0]
    assert unmatched == 0
    return logged[1]


def test_balloon_inflate_and_deflate(balloon):
    r = balloon["result"]
    assert (r["inflated_to"], r["deflated_to"]) == (256 << 20, 512 << 20)
    discarded = discards_agree(balloon["con"], balloon["pid"])
    assert discarded >= 256 << 20  # the inflate, plus what free page reporting added
    ok = balloon["con"].execute(f"SELECT count(*), count(*) FILTER (WHERE ret = 0) FROM bpf_qemu "
                                f"WHERE event = 'discard_is_disabled' AND pid = {balloon['pid']}").fetchone()
    assert ok[0] > 0 and ok[0] == ok[1]  # the balloon asked QEMU and was never inhibited


def test_reporting_discards(reporting):
    assert discards_agree(reporting["con"], reporting["pid"]) > 0


def test_hint_during_migration(hint):
    con, pid = hint["con"], hint["pid"]
    assert hint["result"]["migration"] == "completed"
    hints = con.execute(f"SELECT count(*), sum(size), count(hva) FROM bpf_qemu "
                        f"WHERE event = 'free_page_hint' AND pid = {pid}").fetchone()
    assert hints[0] > 0 and hints[1] > 0 and hints[2] == hints[0]
    # Each migration bitmap sync QEMU logs is one memory_global_dirty_log_sync the uprobe saw.
    syncs = con.execute("SELECT count(*) FROM log_qemu WHERE event = 'bitmap_sync_start'").fetchone()[0]
    probed = con.execute(f"SELECT count(*) FROM bpf_qemu WHERE event = 'dirty_log_sync' AND pid = {pid}"
                         ).fetchone()[0]
    assert syncs == probed > 0


@pytest.mark.parametrize("name", ["balloon", "reporting", "hint"])
def test_correct_qemu_has_no_d1_d2_d3_findings(name, request):
    s = request.getfixturevalue(name)
    result = run_detectors(open_run(s["work"] / "both"))
    found = {f["detector"] for f in result.findings.to_pylist()}
    assert not found & {"D1", "D2", "D3"}
    status = {st.id: st.status for st in result.statuses}
    assert status["D2"] == status["D3"] == "ran"
