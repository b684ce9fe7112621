"""The ftrace importer on real tracefs output, on every event it claims, and on bad lines; and
live, on a tracefs instance recording a real workload."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.importers import TraceFormatError
from pipeline.importers.ftrace import import_ftrace
from pipeline.runstore import open_run
from tests.conftest import FIXTURES, tracefs_instance

HERE = FIXTURES / "ftrace"
ROOT = Path(__file__).resolve().parent.parent


def _check_against_workload(run_dir: Path, did: dict) -> None:
    rows = open_run(run_dir).read_family("discards")
    rows = rows.filter(pc.equal(rows["pid"], did["pid"])).sort_by("ts_ns").to_pylist()
    want = [r for r in did["rows"] if r["syscall"] != "process_madvise"]  # iovecs are not in the trace
    assert len(rows) == len(want)
    for w, h in zip(want, rows):
        assert {k: h[k] for k in w} == w
        assert h["source"] == "ftrace" and h["end_ns"] >= h["ts_ns"]


def test_real_tracefs_capture(tmp_path):
    res = import_ftrace([HERE / "tracefs-mono.txt"], tmp_path / "run", trace_clock="mono")
    assert res["pid_from"]["summary"] == "tgid column" and res["bad"] == 0 and res["non_trace"] == 0
    assert res["clock"]["domain"] == "monotonic" and res["clock"]["alignment"] == "none"
    _check_against_workload(tmp_path / "run", json.loads((HERE / "tracefs-mono.did.json").read_text()))
    inval = open_run(tmp_path / "run").read_family("mmu_notifier").to_pylist()
    assert len(inval) == 5 and all(r["hva_start"] < r["hva_end"] for r in inval)


def test_clock_is_never_assumed(tmp_path):
    """Without --trace-clock and with a trace that does not say, times stay relative within the file."""
    res = import_ftrace([HERE / "tracefs-mono.txt"], tmp_path / "run")
    session = open_run(tmp_path / "run").manifest["sessions"][0]
    assert res["clock"]["domain"] == session["clock"]["domain"] == "relative"
    assert "not stated" in session["clock"]["source"]
    assert session["traced"] == {"host": "unknown", "kernel": "unknown", "qemu_version": None, "qemu_binaries": []}
    data = (HERE / "tracefs-mono.txt").read_bytes()
    assert session["inputs"] == [{"path": str(HERE / "tracefs-mono.txt"), "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()}]


def test_every_event_and_the_older_format(tmp_path):
    res = import_ftrace([HERE / "formats.txt"], tmp_path / "run", trace_clock="local", clock_offset_ns=100)
    assert res["unknown"] == {"sched_switch": 1} and res["clock"]["alignment"] == "given"
    run = open_run(tmp_path / "run")
    d = run.read_family("discards").to_pylist()
    assert [(r["syscall"], r["hva_start"], r["size"], r["advice"], r["ret"]) for r in d[:2]] == [
        ("madvise", 0x7F0000200000, 0x200000, 4, 0), ("madvise", 0x7F0000600000, 0x1000, 0x18, -22)]
    assert d[0]["ts_ns"] == 100_000_001_000 - 100 and d[0]["end_ns"] == 100_000_003_000 - 100
    assert (d[2]["syscall"], d[2]["fd"], d[2]["mode"], d[2]["offset"], d[2]["ret"]) == ("fallocate", 7, 3, 0x1000000, None)
    # keyed by the line's microsecond (100.000100 -> 100) after undoing the 100 ns offset
    a = {(r["ts_ns"] + 100) // 1000 % 1000: r for r in run.read_family("guest_accesses").to_pylist()}
    assert (a[100]["via"], a[100]["vcpu"], a[100]["gpa"], a[100]["write"]) == ("page_fault", 0, 0x201000, True)
    assert (a[101]["gpa"], a[101]["write"], a[101]["vcpu"]) == (0x202000, False, 0)  # vcpu from "CPU 0/KVM"
    assert (a[102]["via"], a[102]["gpa"], a[102]["pfn"]) == ("spte_requested", 0x201000, 0x123456)
    assert (a[103]["pfn"], a[104]["pfn"]) == (0x123456, None)  # a zapped SPTE maps nothing
    assert (a[105]["via"], a[105]["gpa"], a[105]["write"]) == ("mmio", 0xFEE000B0, True)
    assert (a[106]["via"], a[106]["error_code"]) == ("userspace_exit", 2)
    assert (a[107]["as_id"], a[107]["slot"], a[107]["page_offset"]) == (1, 1, 0x1F)
    n = {r["event"]: r for r in run.read_family("mmu_notifier").to_pylist()}
    assert n["age_hva"]["hva_end"] == 0x7F0000001000 and n["test_age_hva"]["hva_end"] is None
    dma = run.read_family("dma").to_pylist()
    assert [(r["op"], r["iova"], r["paddr"], r["size"], r["unmapped"]) for r in dma] == [
        ("map", 0x100000, 0x123400000, 0x200000, None), ("unmap", 0x100000, None, 0x200000, 0x200000)]
    assert run.read_family("dirty_log").to_pylist()[0]["op"] == "kvm_get_dirty_log"
    assert all(r["pid"] == r["tid"] for r in d)  # no TGID column, not a QEMU thread name: the thread id
    assert {r["pid"] for r in a.values()} == {1010}  # QEMU's vCPU thread grouped into a QEMU process
    pid_from = run.manifest["sessions"][0]["pid_from"]
    assert pid_from["threads"]["thread id"] == 1 and pid_from["qemu_processes"][0]["threads"] == 1


def test_bad_lines(tmp_path):
    """A known event whose arguments do not parse is an error naming file and line (or skipped and
    counted as lost with --skip-bad); a line that is no trace line is counted apart, never lost."""
    bad = tmp_path / "bad.txt"
    lines = (HERE / "formats.txt").read_text().splitlines()
    lines.insert(5, "           qemu-1000  [000]   100.000002: kvm_unmap_hva_range: mmu notifier unmap range: zz")
    lines.insert(8, "garbage")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError, match=rf"^{bad}:6: kvm_unmap_hva_range: arguments"):
        import_ftrace([bad], tmp_path / "run")
    with pytest.raises(TraceFormatError, match="unknown trace clock"):
        import_ftrace([bad], tmp_path / "run", trace_clock="sundial")
    assert not (tmp_path / "run").exists()
    res = import_ftrace([bad], tmp_path / "run", skip_bad=True)
    assert res["bad"] == 1 and res["non_trace"] == 1
    session = open_run(tmp_path / "run").manifest["sessions"][0]
    assert open_run(tmp_path / "run").manifest["lost"] == {"ftrace": 1}
    assert session["non_trace_lines"]["count"] == 1 and session["non_trace_lines"]["first"] == [9]
    assert session["bad_lines"][0].startswith(f"{bad}:6: kvm_unmap_hva_range")


def test_rejected_import_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    import_ftrace([HERE / "formats.txt"], run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_text((HERE / "formats.txt").read_text() + "  qemu-1000  [000]  101.0: kvm_mmio: mmio write len\n")
    with pytest.raises(TraceFormatError, match=r":\d+: kvm_mmio: arguments"):
        import_ftrace([bad], run)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_no_trace_line_at_all(tmp_path):
    prose = tmp_path / "mail.txt"
    prose.write_text("Hi,\n\nthe trace is attached.\n")
    with pytest.raises(TraceFormatError, match="no ftrace event line"):
        import_ftrace([prose], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_live_tracefs_instance(tmp_path):
    """Record a real workload through a private tracefs instance (trace_clock mono, record-tgid)."""
    with tracefs_instance("vmemtrace-test") as inst:
        (inst / "options" / "record-tgid").write_text("1")
        for e in ("sys_enter_madvise", "sys_exit_madvise", "sys_enter_fallocate", "sys_exit_fallocate"):
            (inst / "events" / "syscalls" / e / "enable").write_text("1")
        subprocess.run([sys.executable, "-m", "tests.workloads.discards", str(tmp_path / "did.json")],
                       cwd=ROOT, check=True)
        (inst / "tracing_on").write_text("0")
        (tmp_path / "trace.txt").write_text((inst / "trace").read_text())
    res = import_ftrace([tmp_path / "trace.txt"], tmp_path / "run", trace_clock="mono")
    assert res["pid_from"]["summary"] == "tgid column" and res["bad"] == 0
    _check_against_workload(tmp_path / "run", json.loads((tmp_path / "did.json").read_text()))
