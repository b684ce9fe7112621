import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmemtrace.cli import app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ON_CI = os.environ.get("CI") == "true"


@pytest.fixture
def cli():
    """Run the real `vmemtrace` CLI in-process: cli("detect", run) -> Result (exit_code, stdout)."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def require(condition: bool, reason: str) -> None:
    """Skip a real-event test that cannot run here; under CI (CI=true) that is a failure."""
    if condition:
        return
    if ON_CI:
        pytest.fail(f"CI can trace real events, but: {reason}")
    pytest.skip(reason)


def require_bcc() -> None:
    """Skip (fail under CI) a real-event test when bcc's Python module is not importable."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc is not importable (make setup-host)")


def require_qemu_kvm(qemu: str) -> None:
    """Skip (fail under CI) a test that runs a real QEMU under KVM and traces it."""
    require(os.geteuid() == 0, "needs root")
    require(Path(qemu).exists(), f"{qemu} is not installed")
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is not usable")
    require_bcc()


@contextmanager
def background_collector(run: Path, comm: str, duration: int, start_timeout: float):
    """`vmemtrace collect --comm COMM` in the background, entered once its probes are attached (it
    writes the manifest then) and stopped with SIGINT on leaving. Yields a dict that gets the
    collector's `stderr`, `returncode` and `stopped_in` (seconds from SIGINT to exit)."""
    collector = subprocess.Popen([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run),
                                  "--comm", comm, "--duration", str(duration)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict = {}
    try:
        deadline = time.monotonic() + start_timeout
        while not (run / "manifest.json").exists():
            assert collector.poll() is None, collector.stderr.read()
            assert time.monotonic() < deadline, "collector did not start"
            time.sleep(0.1)
        yield result
    finally:
        stop = time.monotonic()
        collector.send_signal(signal.SIGINT)
        _, result["stderr"] = collector.communicate(timeout=120)
        result["stopped_in"] = time.monotonic() - stop
        result["returncode"] = collector.returncode


@contextmanager
def tracefs_instance(name: str):
    """A private tracefs instance NAME-PID recording on CLOCK_MONOTONIC (trace_clock mono), removed
    on leaving. Skips (fails under CI) without root or a mounted tracefs."""
    require(os.geteuid() == 0, "needs root")
    base = Path("/sys/kernel/tracing")
    require((base / "instances").is_dir(), "tracefs is not mounted")
    inst = base / "instances" / f"{name}-{os.getpid()}"
    inst.mkdir()
    try:
        (inst / "trace_clock").write_text("mono")
        yield inst
    finally:
        inst.rmdir()
