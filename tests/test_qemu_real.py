"""A real QEMU under KVM, traced by `vmemtrace collect --comm qemu-system` while it starts and
migrates to `exec:cat > /dev/null`, with QEMU's own trace log as the independent record."""

import time

import pyarrow.compute as pc
import pytest

from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import open_run
from tests.conftest import background_collector, require_qemu_kvm
from tests.qemu_vm import QEMU, QemuVM

FIELDS = ["as_id", "slot", "flags", "gpa", "size", "hva", "ret"]


@pytest.fixture(scope="module")
def traced_qemu(tmp_path_factory):
    require_qemu_kvm(QEMU)
    work = tmp_path_factory.mktemp("qemu")
    run = work / "run"
    with background_collector(run, "qemu-system", 120, start_timeout=60) as collector:
        with QemuVM(work) as vm:
            qemu_pid = vm.proc.pid
            time.sleep(0.5)
            migration = vm.migrate_to_null()
        time.sleep(0.5)
    assert collector["returncode"] == 0, collector["stderr"]
    return {"run": run, "log": work / "qemu-trace.log", "pid": qemu_pid, "migration": migration, "work": work}

def test_memslots_match_qemu_log_line_by_line(traced_qemu):
    run = open_run(traced_qemu["run"])
    assert run.state == "clean"
    kernel = run.read_family("memslots")
    kernel = kernel.filter(pc.equal(kernel["pid"], traced_qemu["pid"])).sort_by("ts_ns")
    logged = import_qemu_log([traced_qemu["log"]], traced_qemu["work"] / "from-log")
    qlog = open_run(traced_qemu["work"] / "from-log").read_family("memslots")
    assert logged["rows"]["memslots"] == qlog.num_rows > 10
    assert kernel.select(FIELDS).to_pylist() == qlog.select(FIELDS).to_pylist()
    assert pc.all(pc.equal(qlog["pid"], traced_qemu["pid"])).as_py()  # pid inferred from thread ids
    # Migration turns dirty logging on for guest RAM and off again.
    assert any(f & 1 for f in kernel["flags"].to_pylist())

def test_qemu_log_aligns_on_the_same_ioctls(traced_qemu, tmp_path):
    import shutil

    run = tmp_path / "both"
    shutil.copytree(traced_qemu["run"], run)
    res = import_qemu_log([traced_qemu["log"]], run)
    a = res["alignment"]
    assert a.method == "memslots" and a.matched >= 10
    assert 0 <= a.residual_ns < 5_000_000  # QEMU logs microseconds after the ioctl returns
    session = open_run(run).manifest["sessions"][-1]
    assert session["clock"]["alignment"] == "memslots"
    # The matched lines are the same ioctls: the run keeps one copy of each.
    assert session["memslots_already_in_run"] == a.matched
    assert "memslots" not in session["rows"]

def test_uprobes_see_migration_and_dirty_logging(traced_qemu):
    run = open_run(traced_qemu["run"])
    attached = run.manifest["sessions"][0]["attached"]
    assert f"uprobe:{QEMU}:qemu_guest_free_page_hint" in attached
    assert f"uprobe:{QEMU}:ram_block_discard_disable" in attached
    assert f"uprobe:{QEMU}:ram_block_discard_is_disabled" in attached
    q = run.read_family("qemu")
    q = q.filter(pc.equal(q["pid"], traced_qemu["pid"])).sort_by("ts_ns").to_pylist()
    events = [r["event"] for r in q]
    assert events.index("dirty_log_start") < events.index("dirty_log_stop")
    notify = [r["detail"] for r in q if r["event"] == "precopy_notify"]
    assert notify[0] == "setup" and notify[-1] == "cleanup" and "complete" in notify
    assert traced_qemu["migration"]["status"] == "completed"

def test_mmu_notifier_and_discards_from_qemu(traced_qemu):
    run = open_run(traced_qemu["run"])
    inval = run.read_family("mmu_notifier")
    assert pc.sum(pc.equal(inval["pid"], traced_qemu["pid"])).as_py() > 0
    for r in inval.filter(pc.equal(inval["event"], "unmap_hva_range")).to_pylist():
        assert r["hva_start"] < r["hva_end"]

def test_detectors_on_a_correct_qemu_72(traced_qemu, tmp_path):
    """QEMU 7.2 predates atomic memslot updates: D4 reports its real windows, classified by the
    traced KVM_RUN: the one vCPU makes the updates itself after an exit to QEMU (SeaBIOS
    programming the PAM/SMRAM registers), so no vCPU is inside KVM_RUN in any window: unreachable,
    info. Nothing else is wrong with this VM."""
    import shutil

    from queries.runner import run_detectors

    run = tmp_path / "run"
    shutil.copytree(traced_qemu["run"], run)
    result = run_detectors(open_run(run))
    status = {s.id: s for s in result.statuses}
    for d in ("D1", "D5"):  # no VFIO device here
        assert status[d].status == "not run" and status[d].missing == ["dma"], d
    for d in ("I", "D2", "D3", "D4"):
        assert status[d].status == "ran", d
    findings = result.findings.filter(pc.equal(result.findings["pid"], traced_qemu["pid"])).to_pylist()
    assert {f["detector"] for f in findings} == {"D4"}
    windows = [f for f in findings if f["kind"] == "update_window"]
    runs = open_run(run).read_family("vcpu_runs")
    assert pc.sum(pc.equal(runs["pid"], traced_qemu["pid"])).as_py() > 0
    assert windows and all(f["severity"] == "info" for f in windows)
    assert all(f["ts_end_ns"] > f["ts_start_ns"] and f["gpa_start"] < f["gpa_end"] for f in windows)
