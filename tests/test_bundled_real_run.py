"""The bundled real runs (make record-real): QEMU 7.2 under KVM booting SeaBIOS and migrating, and
the balloon / reporting / hint scenarios of a Debian guest under TCG, each traced by the eBPF
collectors with QEMU's own log imported beside them. Needs no root.

Finding nothing proves little unless the detector had something to judge: each test also checks
which detectors ran on relevant events ("none": judged and clean) and which had none."""

import shutil

import duckdb
import pyarrow.compute as pc
import pytest

from pipeline.runstore import open_run
from queries.runner import run_detectors
from tests.conftest import FIXTURES
from tests.test_scenarios_real import discards_agree

REAL = FIXTURES / "real" / "kvm-boot" / "run"


def _outcomes(result) -> dict[str, str]:
    return {s.id: s.outcome if s.status == "ran" else f"not run: {'; '.join(s.missing)}" for s in result.statuses}


def test_bundled_kvm_boot(tmp_path):
    shutil.copytree(REAL, tmp_path / "run")
    run = open_run(tmp_path / "run")
    assert run.state == "clean"
    sources = [s["source"] for s in run.manifest["sessions"]]
    assert sources == ["bpf", "qemu-log"]
    memslots = run.read_family("memslots")
    assert memslots.num_rows == run.manifest["sessions"][1]["memslots_already_in_run"] > 10  # one copy
    assert pc.all(pc.equal(memslots["source"], "bpf:kvm")).as_py()

    result = run_detectors(run)
    outcome = _outcomes(result)
    # No VFIO device on this host; no inhibit calls, hints or reports in a SeaBIOS boot.
    assert outcome["D1"] == outcome["D5"] == "not run: dma"
    assert outcome["D2"] == outcome["D3"] == "no relevant events"
    assert outcome["D4"] == "findings"
    found = result.findings.to_pylist()
    assert {f["detector"] for f in found} == {"D4", "I"}
    d4 = [f for f in found if f["detector"] == "D4"]
    # QEMU 7.2 does not inhibit vCPUs around commits, but KVM_RUN is traced: its one vCPU makes the
    # updates itself after exiting to QEMU, so no vCPU is inside KVM_RUN in any window.
    assert run.row_counts()["vcpu_runs"] > 0
    assert {f["severity"] for f in d4} == {"info"}
    assert any("before first vCPU run" in f["message"] for f in d4)
    assert any("unreachable: KVM_RUN was traced and no vCPU was inside it" in f["message"] for f in d4)
    trust = {f["kind"] for f in found if f["detector"] == "I"}
    assert "clock_alignment" in trust


@pytest.mark.parametrize("name", ["balloon", "reporting", "hint"])
def test_bundled_scenarios(name, tmp_path):
    shutil.copytree(FIXTURES / "real" / name / "run", tmp_path / "run")
    run = open_run(tmp_path / "run")
    assert run.state == "clean" and [s["source"] for s in run.manifest["sessions"]] == ["bpf", "qemu-log"]
    qemu = run.read_family("qemu")
    pid = run.manifest["sessions"][1]["pid"]
    con = duckdb.connect()
    con.register("bpf_discards", run.read_family("discards"))
    con.register("bpf_qemu", qemu.filter(pc.equal(qemu["source"], "bpf:qemu")))
    con.register("log_qemu", qemu.filter(pc.equal(qemu["source"], "qemu-log")))
    if name == "balloon":
        # Under TCG QEMU makes no memslot ioctls: its log joined the run's clock through the offset
        # the collector recorded on this host. The same discards, seen by the uprobe at entry and
        # logged by QEMU, then agree to microseconds.
        assert run.manifest["sessions"][1]["clock"]["alignment"] == "host"
        lag = con.execute("""
            WITH b AS (SELECT ts_ns, row_number() OVER (ORDER BY ts_ns) AS n FROM bpf_qemu
                       WHERE event = 'ram_block_discard_range'),
                 l AS (SELECT ts_ns, row_number() OVER (ORDER BY ts_ns) AS n FROM log_qemu
                       WHERE event = 'ram_block_discard_range')
            SELECT count(*), quantile_cont(abs(l.ts_ns - b.ts_ns), [0.5, 0.99]) FROM b JOIN l USING (n)""").fetchone()
        assert lag[0] > 1000 and lag[1][0] < 100_000 and lag[1][1] < 1_000_000
    if name == "hint":
        hints = con.execute(f"SELECT count(*) FROM bpf_qemu WHERE event = 'free_page_hint' AND pid = {pid}")
        assert hints.fetchall()[0][0] > 0
    else:
        assert discards_agree(con, pid) > 0
    result = run_detectors(run)
    assert not {f["detector"] for f in result.findings.to_pylist()} & {"D1", "D2", "D3"}
    outcome = _outcomes(result)
    # TCG guests: no VFIO (D1 cannot run). QEMU asked ram_block_discard_is_disabled() before
    # every balloon / reporting discard, so D2 judged those answers (a migration asks nothing).
    # D3 judged the hints against the migration's bitmap syncs; QEMU 7.2's reporting path
    # discards directly (no report events), so D3 has nothing to judge there.
    assert outcome["D1"].startswith("not run: dma")
    assert outcome["D2"] == ("no relevant events" if name == "hint" else "none")
    assert outcome["D3"] == ("none" if name == "hint" else "no relevant events")
