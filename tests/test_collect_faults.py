"""`vmemtrace collect` when things go wrong: killed after a burst, a second collector on the same run,
targets that cannot be traced. Real collectors (root, bcc), run as the user runs them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.runstore import open_run
from tests.conftest import require, require_bcc

ROOT = Path(__file__).resolve().parent.parent
BURST = 3000
# The burst, then silence until killed: nothing after the burst would push its rows to disk.
BURST_THEN_QUIET = f"""
import sys, time
from tests.workloads.libc import anon, libc
m, addr = anon(1 << 16)
for _ in range({BURST}):
    libc.madvise(addr, 4096, 4)
open(sys.argv[1], "w").write("done")
time.sleep(600)
"""


@pytest.fixture(scope="module", autouse=True)
def _can_collect():
    require(os.geteuid() == 0, "needs root")
    require_bcc()


def _collect(run: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def _rows_on_disk(run: Path) -> int:
    return open_run(run).manifest["sessions"][0]["rows"].get("discards", 0)


def test_sigkill_after_a_burst_and_silence_keeps_the_burst(tmp_path):
    from collectors.session import FLUSH_SECONDS

    run, marker = tmp_path / "run", tmp_path / "burst-done"
    collector = _collect(run, "-f", "discards", "--", sys.executable, "-c", BURST_THEN_QUIET, str(marker),
                         start_new_session=True)
    try:
        _wait_for(marker, collector)
        # The quiet period: nothing after the burst makes the collector write, yet its rows must
        # reach disk (every FLUSH_SECONDS; the deadline is generous for a loaded machine).
        deadline = time.monotonic() + FLUSH_SECONDS + 30
        while _rows_on_disk(run) < BURST and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(collector.pid, signal.SIGKILL)  # the collector and the workload it started
        collector.wait()
    finally:
        if collector.poll() is None:
            os.killpg(collector.pid, signal.SIGKILL)
    r = open_run(run)
    assert r.state == "unclean"  # its writer died: the session says so
    workload = r.manifest["sessions"][0]["workload_pid"]
    d = r.read_family("discards")
    mine = d.filter(pc.and_(pc.equal(d["pid"], workload), pc.equal(d["advice"], 4)))
    assert mine.num_rows == BURST

    # A later collection on the same run says it appends, and leaves the killed session unclean.
    again = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run), "-f", "discards",
                            "--", "true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "appending session 2 to its 1" in again.stderr
    sessions = open_run(run).manifest["sessions"]
    assert [s["state"] for s in sessions] == ["unclean", "clean"]


def test_second_collector_on_the_same_run_refuses_and_comm_never_matched_warns(tmp_path):
    run = tmp_path / "run"
    first = _collect(run, "-f", "discards", "--comm", "no-such-process-x", "--duration", "300")
    try:
        _wait_for(run / "manifest.json", first)
        second = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run), "-f", "discards",
                                 "--duration", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"another vmemtrace process (pid {first.pid}) is writing this run" in second.stderr
        assert "attached" not in second.stderr  # refused before loading anything
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "warning: no process named no-such-process-x* ran while collecting" in err
    assert "detaching..." in err and "Ctrl-C to stop." in err
    assert [s["state"] for s in open_run(run).manifest["sessions"]] == ["clean"]


@pytest.mark.parametrize("args, message", [
    (["--pid", "999999999"], "no process with pid 999999999"),
    (["--", "/no/such/program"], "cannot run /no/such/program: not found"),
    (["--", "{text}"], "cannot run {text}: {text} is not an executable file"),
])
def test_untraceable_targets_fail_before_loading_bpf(tmp_path, args, message):
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    args = [a.format(text=text) for a in args]
    message = message.format(text=text)
    proc = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(tmp_path / "run"),
                           "-f", "discards", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "attached" not in proc.stderr
    assert not (tmp_path / "run").exists()
