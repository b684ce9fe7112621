"""pytest plugin: trace real kernel events around tests and fail them on vmemtrace findings.

    pytest --vmemtrace                 every test, all collectors
    pytest --vmemtrace=memslots,dma    every test, only the collectors writing these families
    @pytest.mark.vmemtrace             this test, whether or not --vmemtrace is given
    @pytest.mark.vmemtrace(families=["memslots"], fail_on="medium")

Around each traced test, `vmemtrace collect --pid <this pytest>` runs as a subprocess (so bcc's
compile and rings stay out of the test process; the test's own child processes are traced too);
when the test ends, `vmemtrace detect` and `vmemtrace report` run on what it saw. A finding at or
above --vmemtrace-fail-on (default high) fails the test with the findings and the report's path.
Without root, tracefs or bcc a traced test is skipped with the reason, never passed silently.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.schema import SEVERITIES, severity_rank

READY_TIMEOUT_S = 180  # bcc compiles the programs before attaching: seconds on a loaded 2-core host
_REPORTS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmemtrace", "trace guest-memory events around tests (vmemtrace)")
    group.addoption("--vmemtrace", nargs="?", const="", default=None, metavar="FAMILIES",
                    help="Collect around every test (optionally only these comma-separated families) "
                         "and fail tests with findings.")
    group.addoption("--vmemtrace-fail-on", default="high", choices=(*SEVERITIES, "none"),
                    help="Fail a traced test on a finding at or above this severity (default: high).")
    group.addoption("--vmemtrace-runs", default=None, metavar="DIR",
                    help="Folder for the runs and reports [default: pytest's basetemp/vmemtrace].")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vmemtrace(families=None, fail_on=None): trace real kernel events "
                            "around this test with vmemtrace and fail it on findings")
    config.stash[_REPORTS] = []


def _settings(item: pytest.Item) -> tuple[list[str], str] | None:
    """(families, fail_on) when `item` is traced, else None."""
    option = item.config.getoption("vmemtrace")
    mark = item.get_closest_marker("vmemtrace")
    if option is None and mark is None:
        return None
    families = [f for f in (option or "").split(",") if f]
    fail_on = item.config.getoption("vmemtrace_fail_on")
    if mark is not None:
        families = list(mark.kwargs.get("families") or families)
        fail_on = mark.kwargs.get("fail_on") or fail_on
    return families, fail_on


def _vmemtrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmemtrace", *args]


def _env() -> dict[str, str]:
    """The subprocesses import the same vmemtrace as this plugin, installed or from a checkout."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


class Tracer:
    """One `vmemtrace collect --pid` subprocess writing one run."""

    def __init__(self, run: Path, families: list[str], pid: int):
        self.run, self.log = run, run.with_suffix(".collect.log")
        fam = [a for f in families for a in ("--families", f)]
        self.cmd = _vmemtrace("collect", "--run", str(run), "--pid", str(pid), *fam)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.run.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._attached():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmemtrace collect exited {self.proc.returncode} before attaching:\n"
                                   f"{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vmemtrace collect did not attach within {READY_TIMEOUT_S} s; see {self.log}")
            time.sleep(0.05)

    def _attached(self) -> bool:
        """The collector opens its run session only once its programs are attached."""
        try:
            manifest = json.loads((self.run / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return any(s.get("state") == "running" and s.get("writer", {}).get("pid") == self.proc.pid
                   for s in manifest.get("sessions", []))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # collect flushes and detaches on SIGINT
        try:
            self.proc.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_dir(item: pytest.Item) -> Path:
    base = item.config.getoption("vmemtrace_runs")
    base = Path(base) if base else item.config._tmp_path_factory.getbasetemp() / "vmemtrace"
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")


def _detect_and_report(run: Path) -> tuple[list[dict], str]:
    res = subprocess.run(_vmemtrace("detect", str(run), "--json", "--fail-on", "none"), capture_output=True,
                         text=True, env=_env())
    if res.returncode != 0:
        raise RuntimeError(f"vmemtrace detect {run} exited {res.returncode}: {res.stderr.strip()}")
    page = subprocess.run(_vmemtrace("report", str(run)), capture_output=True, text=True, env=_env())
    return json.loads(res.stdout), page.stdout.strip() if page.returncode == 0 else f"(report failed: {page.stderr.strip()})"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _settings(item) is None:
        return
    from vmemtrace.cli.doctor import collect_blockers

    blockers = collect_blockers()
    if blockers:
        pytest.skip("vmemtrace cannot collect here: " + "; ".join(blockers))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    settings = _settings(item)
    if settings is None:
        return (yield)
    families, fail_on = settings
    from vmemtrace.cli.common import inert

    run = _run_dir(item)
    tracer = Tracer(run, families, os.getpid())
    tracer.start()
    try:
        result = yield
    finally:
        tracer.stop()
    findings, page = _detect_and_report(run)
    item.add_report_section("call", "vmemtrace", f"run {run}\nreport {page}")
    item.config.stash[_REPORTS].append((item.nodeid, len(findings), page))
    limit = None if fail_on == "none" else severity_rank(fail_on)
    bad = [f for f in findings if limit is not None and severity_rank(f["severity"]) <= limit]
    if bad:
        lines = "\n".join(inert(f"[{f['severity']}] {f['detector']} {f['finding_id']}: {f['message']}") for f in bad)
        pytest.fail(f"vmemtrace: {len(bad)} finding(s) at or above {fail_on} during this test:\n{lines}\n"
                    f"report: {page}", pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    terminalreporter.section("vmemtrace")
    for nodeid, n, page in reports:
        terminalreporter.write_line(f"{nodeid}: {n} finding(s); report {page}")
