"""Collector faults (issue 12): SIGTERM / SIGINT mid-run flush cleanly and leave no BPF program, map
or uprobe behind; a workload that forks, execs and exits is followed through all three.

The machine may be shared with other tests loading BPF programs, so "nothing left" is checked on
the ids the collector itself held (from /proc/PID/fdinfo while it ran), against `bpftool` after.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.runstore import open_run
from tests.conftest import require
from tests.test_collectors_real import ROOT, VMEMTRACE, can_trace  # noqa: F401  (root, tracefs, bcc)
from tests.workloads.fork_exec import SIZES

UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")
QEMU = "/usr/bin/qemu-system-x86_64"


def bpf_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", kind, "list"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def held_ids(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, map ids) that process `pid` holds open."""
    progs, maps = set(), set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        progs.update(int(x) for x in re.findall(r"^prog_id:\s+(\d+)", text, re.M))
        maps.update(int(x) for x in re.findall(r"^map_id:\s+(\d+)", text, re.M))
    return progs, maps


def wait_for(cond, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_flushes_and_detaches_everything(tmp_path, signum):
    require(shutil.which("bpftool") is not None, "bpftool is not installed (apt-get install bpftool)")
    run = tmp_path / "run"
    progs_before = bpf_ids("prog")
    require(Path(QEMU).exists(), f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    # --qemu attaches the qemu collector's uprobes to that binary at once: they must go too.
    proc = subprocess.Popen([*VMEMTRACE, "collect", "--run", str(run), "--families", "discards",
                             "--families", "qemu", "--qemu", QEMU, "--", sys.executable, "-m", "tests.workloads.madvise_flood", "0"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workload = None
    try:
        wait_for(lambda: list(run.glob("discards/part-*.parquet")), "a first chunk")
        workload = json.loads((run / "manifest.json").read_text())["sessions"][0]["workload_pid"]
        progs, maps = held_ids(proc.pid)
        assert progs and maps and progs.isdisjoint(progs_before)
        uprobes = json.loads((run / "manifest.json").read_text())["sessions"][0]["attached"]
        assert any(a.startswith("uprobe:") for a in uprobes)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # the workload's status: stopped with SIGTERM
    r = open_run(run)
    assert r.state == "clean"
    table = r.read_family("discards")
    assert table.num_rows == r.row_counts()["discards"] > 0
    assert pc.all(pc.equal(table["advice"], 4)).as_py()
    with pytest.raises(ProcessLookupError):  # the workload was stopped, not left behind
        os.kill(workload, 0)
    # The kernel frees a program after its last reference goes, in deferred work: allow it a moment.
    wait_for(lambda: progs.isdisjoint(bpf_ids("prog")) and maps.isdisjoint(bpf_ids("map")),
             f"the collector's BPF programs {sorted(progs)} and maps {sorted(maps)} to be freed", timeout=30)
    assert f"bcc_{proc.pid}" not in UPROBE_EVENTS.read_text()


def test_workload_that_forks_execs_and_exits_is_followed(tmp_path):
    run, proof = tmp_path / "run", tmp_path / "proof.jsonl"
    renamed = tmp_path / "vmt-execd"
    renamed.symlink_to(Path(sys.executable).resolve())
    res = subprocess.run([*VMEMTRACE, "collect", "--run", str(run), "--families", "discards", "--",
                          sys.executable, "-m", "tests.workloads.fork_exec", "parent", str(proof), str(renamed)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    did = sorted((json.loads(line) for line in proof.read_text().splitlines()), key=lambda d: d["size"])
    assert [d["stage"] for d in did] == ["parent", "child", "exec"]
    assert did[1]["pid"] == did[2]["pid"] != did[0]["pid"] and did[2]["comm"] == "vmt-execd"
    table = open_run(run).read_family("discards")
    got = sorted(({k: r[k] for k in ("pid", "comm", "size", "ret")} for r in table.to_pylist()
                  if r["size"] in SIZES.values() and r["pid"] in {d["pid"] for d in did}),
                 key=lambda r: r["size"])
    assert got == [{k: d[k] for k in ("pid", "comm", "size", "ret")} for d in did]
    assert open_run(run).state == "clean"


def test_second_collector_on_the_same_run_refuses(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([*VMEMTRACE, "collect", "--run", str(run), "--families", "discards", "--duration", "60"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "manifest.json").exists(), "the first collector's session")
        second = subprocess.run([*VMEMTRACE, "collect", "--run", str(run), "--families", "discards",
                                 "--duration", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and str(first.pid) in second.stderr and "is writing this run" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    r = open_run(run)
    assert r.state == "clean" and len(r.manifest["sessions"]) == 1
