"""The pytest plugin on real kernel events: a test whose workload makes a real D4 finding (a tiny
VMM over /dev/kvm deleting and re-creating a memslot) fails under vmemtrace with the finding and
the report's path; thresholds, the marker and the not-traced path are checked in the same run."""

import os
import re
from pathlib import Path

import pytest

from tests.conftest import require, require_bcc

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

WORKLOAD = f"""
import subprocess, sys
import pytest

def tiny_vmm(tmp_path):
    subprocess.run([sys.executable, "-m", "tests.workloads.tiny_vmm", str(tmp_path / "did.json")],
                   check=True, cwd={str(REPO)!r})

@pytest.mark.vmemtrace(families=["memslots"], fail_on="medium")
def test_marked_medium(tmp_path):
    tiny_vmm(tmp_path)

def test_default_threshold(tmp_path):
    tiny_vmm(tmp_path)

def test_nothing_to_see():
    assert sum(range(4)) == 6
"""


@pytest.fixture
def plugin_env(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(test_workload=WORKLOAD)
    return pytester


def test_findings_fail_the_test_with_the_finding_and_report(plugin_env):
    require(os.geteuid() == 0, "collecting needs root")
    require(Path("/dev/kvm").exists(), "the tiny VMM needs /dev/kvm")
    require_bcc()
    runs = plugin_env.path / "runs"
    res = plugin_env.runpytest_subprocess("-p", "vmemtrace.pytest_plugin", "--vmemtrace=memslots",
                                          f"--vmemtrace-runs={runs}", "-p", "no:cacheprovider")
    # D4's update window is medium: it fails the marked test (fail_on=medium), not the default (high).
    res.assert_outcomes(passed=2, failed=1)
    out = res.stdout.str()
    assert "FAILED test_workload.py::test_marked_medium" in out
    assert re.search(r"\[medium\] D4 D4-[0-9a-f]+: Memslot 0 \(address space 0\) of python", out)
    page = Path(re.search(r"report: (\S+index\.html)", out).group(1))
    assert page.is_file() and page.is_relative_to(runs)
    summary = out.split("= vmemtrace =")[1]
    assert summary.count("report ") == 3  # every traced test lists its report, passing or not
    assert (runs / "test_workload.py_test_default_threshold" / "manifest.json").is_file()


def test_not_traced_without_flag_or_marker(plugin_env):
    plugin_env.makepyfile(test_plain="def test_plain():\n    assert True\n")
    runs = plugin_env.path / "runs"
    res = plugin_env.runpytest_subprocess("-p", "vmemtrace.pytest_plugin", f"--vmemtrace-runs={runs}",
                                          "test_plain.py")
    res.assert_outcomes(passed=1)
    assert not runs.exists() and "= vmemtrace =" not in res.stdout.str()


def test_skips_with_the_reason_when_it_cannot_collect(plugin_env, monkeypatch):
    """Not root (simulated: this host runs tests as root, and CI does too): skipped, not passed."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = plugin_env.runpytest_inprocess("-p", "vmemtrace.pytest_plugin", "--vmemtrace", "-rs",
                                         "-k", "nothing_to_see")
    res.assert_outcomes(skipped=1)
    assert "vmemtrace cannot collect here: privileges: uid 1000" in res.stdout.str()
