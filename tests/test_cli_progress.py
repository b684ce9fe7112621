"""Progress is drawn on stderr only when it is a terminal: a real pseudo-terminal, and a pipe."""

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURES

REPO = Path(__file__).resolve().parent.parent


def _detect(run: Path, stderr) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmemtrace", "detect", str(run), "--fail-on", "none"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr)


def test_progress_only_on_a_terminal(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", FIXTURES / "demo" / "vfio-balloon.jsonl", "--run", run).exit_code == 0

    master, slave = pty.openpty()
    proc = _detect(run, slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        shown += chunk
    stdout, _ = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    assert b"running D1 Stale device mapping after discard" in shown
    assert b"running" not in stdout  # progress never goes to stdout

    proc = _detect(run, subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stderr == b"" and b"findings written to" in stdout
