"""Collectors against real kernel events on this machine, through the real `vmemtrace collect`.

Each workload does known things and writes them down; the collected rows must equal them field
by field. Needs root, tracefs, bcc and kernel headers: elsewhere these tests skip, but under CI
(CI=true) a skip is a failure.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.constants import KVM_EXIT_HLT, KVM_EXIT_IO, MAP_SHARED
from pipeline.runstore import open_run
from tests.conftest import require, require_bcc

ROOT = Path(__file__).resolve().parent.parent
VMEMTRACE = [sys.executable, "-m", "vmemtrace"]


@pytest.fixture(scope="module", autouse=True)
def can_trace():
    require(os.geteuid() == 0, "real-event tests need root")
    require(Path("/sys/kernel/tracing/events/syscalls").is_dir(), "tracefs is not mounted")
    require_bcc()


def collect(run: Path, workload: str, *args, families=(), extra=()) -> subprocess.CompletedProcess:
    fam = [a for f in families for a in ("--families", f)]
    cmd = [*VMEMTRACE, "collect", "--run", str(run), *fam, *extra, "--",
           sys.executable, "-m", f"tests.workloads.{workload}", *map(str, args)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def rows(run: Path, family: str, pid: int) -> list[dict]:
    t = open_run(run).read_family(family)
    return t.filter(pc.equal(t["pid"], pid)).sort_by("event_id").to_pylist()


def subset(row: dict, keys) -> dict:
    return {k: row[k] for k in keys}


def test_discards_field_by_field(tmp_path):
    collect(tmp_path / "run", "discards", tmp_path / "did.json", families=["discards"])
    did = json.loads((tmp_path / "did.json").read_text())
    got = rows(tmp_path / "run", "discards", did["pid"])
    assert len(got) == len(did["rows"])
    for want, have in zip(did["rows"], got):
        assert subset(have, want) == want
        assert have["source"] == "bpf:discards" and have["comm"] == did["comm"]
        assert have["end_ns"] >= have["ts_ns"] > 0
    assert any(r["ret"] == -22 for r in got)  # the failing calls are recorded with their errno
    run = open_run(tmp_path / "run")
    assert run.state == "clean"
    assert "syscalls:sys_enter_madvise" in run.manifest["sessions"][0]["attached"]


def test_tiny_vmm_memslots_dirty_log_and_mmu_notifier(tmp_path):
    collect(tmp_path / "run", "tiny_vmm", tmp_path / "did.json",
            families=["memslots", "dirty_log", "mmu_notifier"])
    did = json.loads((tmp_path / "did.json").read_text())
    pid = did["pid"]
    got = rows(tmp_path / "run", "memslots", pid)
    assert [subset(r, w) for r, w in zip(got, did["memslots"])] == did["memslots"]
    assert len(got) == len(did["memslots"])
    assert any(r["ret"] == -17 for r in got)  # -EEXIST for the overlapping create
    assert [subset(r, w) for r, w in zip(rows(tmp_path / "run", "dirty_log", pid), did["dirty_log"])] \
        == did["dirty_log"]
    inval = [r for r in rows(tmp_path / "run", "mmu_notifier", pid) if r["event"] == "unmap_hva_range"]
    assert {"hva_start": did["discard"]["hva_start"], "hva_end": did["discard"]["hva_end"]} in \
        [subset(r, ("hva_start", "hva_end")) for r in inval]


def test_vfio_and_iommufd_ioctls_decoded_on_enotty(tmp_path):
    collect(tmp_path / "run", "vfio_ioctls", tmp_path / "did.json",
            families=["dma", "vfio_groups", "dirty_log"])
    did = json.loads((tmp_path / "did.json").read_text())
    by_table: dict[str, list] = {}
    for call in did["calls"]:
        by_table.setdefault(call.pop("table"), []).append(call)
    for table, calls in by_table.items():
        got = [r for r in rows(tmp_path / "run", table, did["pid"]) if r["source"] == "bpf:vfio"]
        assert [subset(r, c) for r, c in zip(got, calls)] == calls, table
        assert len(got) == len(calls)
        assert all(r["ret"] == -25 for r in got)  # ENOTTY: /dev/null is no VFIO container


def test_tiny_ring_counts_every_lost_event(tmp_path):
    n = 200_000
    collect(tmp_path / "run", "madvise_flood", n, tmp_path / "n.txt", families=["discards"],
            extra=["--ring-pages", "1"])
    run = open_run(tmp_path / "run")
    assert run.state == "clean"
    kept = run.row_counts()["discards"]
    lost = run.manifest["lost"].get("discards", 0)
    assert lost > 0 and kept > 0
    assert kept + lost == n  # every call is either recorded or counted as lost
    lost_rows = run.read_family("lost_events").to_pylist()
    assert sum(r["count"] for r in lost_rows if r["family"] == "discards") == lost


def test_sigkill_leaves_finished_chunks_and_an_unclean_manifest(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([*VMEMTRACE, "collect", "--run", str(run), "--families", "discards", "--",
                             sys.executable, "-m", "tests.workloads.madvise_flood", "0"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(run.glob("discards/part-*.parquet")):
            assert time.monotonic() < deadline, "no chunk was written"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        manifest = json.loads((run / "manifest.json").read_text())
        workload = manifest["sessions"][0].get("workload_pid")
        if workload:
            try:
                os.kill(workload, signal.SIGKILL)
            except ProcessLookupError:
                pass
    r = open_run(run)
    assert r.state == "unclean"
    table = r.read_family("discards")
    assert table.num_rows > 0 and table.num_rows == r.row_counts()["discards"]
    assert pc.all(pc.equal(table["advice"], 4)).as_py()


def test_kvm_run_per_vcpu_thread_and_file_mappings(tmp_path):
    collect(tmp_path / "run", "kvm_run", tmp_path / "did.json",
            families=["vcpu_runs", "file_mappings", "guest_accesses"])
    did = json.loads((tmp_path / "did.json").read_text())
    assert [r["exit_reason"] for r in did["runs"]] == [KVM_EXIT_IO, KVM_EXIT_HLT] * 2  # the guest ran
    got = rows(tmp_path / "run", "vcpu_runs", did["pid"])
    assert [subset(r, ("op", "tid", "vcpu_fd", "ret", "source")) for r in got] == \
        [{"op": "run", "tid": w["tid"], "vcpu_fd": w["vcpu_fd"], "ret": w["ret"], "source": "bpf:vcpu_run"}
         for w in did["runs"]]
    spans = [(r["ts_ns"], r["end_ns"]) for r in got]
    assert all(a < b for a, b in spans) and all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    maps = [r for r in rows(tmp_path / "run", "file_mappings", did["pid"])
            if r["hva_start"] == did["mappings"][0]["hva_start"]]
    keys = ("event", "hva_start", "size", "fd", "file_offset", "flags", "ret")
    assert [subset(r, keys) for r in maps] == did["mappings"]
    # KVM zaps the VM's shadow pages when it goes away: invalidations, recorded without a pfn.
    zaps = [r for r in rows(tmp_path / "run", "guest_accesses", did["pid"]) if r["via"] == "spte_zap"]
    assert zaps and all(r["pfn"] is None and r["level"] >= 1 for r in zaps)


def test_proc_maps_snapshot_of_a_process_running_before_attach(tmp_path):
    backing = tmp_path / "backing"
    backing.write_bytes(bytes(1 << 20))
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import ctypes, mmap, os, time
fd = os.open({str(backing)!r}, os.O_RDWR)
m = mmap.mmap(fd, 1 << 19, mmap.MAP_SHARED, offset=1 << 18)
open({str(ready)!r}, "w").write(f"{{fd}} {{ctypes.addressof(ctypes.c_char.from_buffer(m))}}")
time.sleep(60)
"""])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fd, addr = map(int, ready.read_text().split())
        res = subprocess.run([*VMEMTRACE, "collect", "--run", str(tmp_path / "run"), "--pid", str(holder.pid),
                              "--families", "file_mappings", "--duration", "0.5"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    finally:
        holder.kill()
        holder.wait()
    got = [r for r in rows(tmp_path / "run", "file_mappings", holder.pid) if r["hva_start"] == addr]
    assert [subset(r, ("event", "size", "fd", "file_offset", "flags", "path", "inode", "source")) for r in got] == [
        {"event": "proc_maps", "size": 1 << 19, "fd": fd, "file_offset": 1 << 18, "flags": MAP_SHARED,
         "path": str(backing), "inode": backing.stat().st_ino, "source": "proc:maps"}]
