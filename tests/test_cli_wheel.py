"""The built wheel works outside the checkout: SQL, views, templates and BPF sources are package data.

One test, slow-ish (~30 s): build the wheel from a copy of the sources, install it into a fresh
venv (its dependencies are the shared venv's, made visible by a .pth file: no network needed
for them), then run `vmemtrace detect --list` and `vmemtrace detect` on a copied real run from a
directory that has no checkout in it.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("collectors", "pipeline", "queries", "reports", "vmemtrace")
REAL_RUN = REPO / "tests" / "fixtures" / "real" / "balloon" / "run"


def _sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    return dest


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = _sources(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp_path / "dist"), "--no-deps",
                    "-q"], check=True, cwd=tmp_path, timeout=600)
    wheel = next((tmp_path / "dist").glob("vmemtrace-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(REPO).as_posix() for pattern in ("queries/*.sql", "queries/views/*.sql",
                                                           "reports/templates/*", "collectors/*.c", "collectors/*.h")
            for p in REPO.glob(pattern)]
    assert len(data) > 20
    assert sorted(set(data) - names) == []
    assert "vmemtrace/pytest_plugin.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "shared-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--no-deps", "-q", str(wheel)], check=True, timeout=600)

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REAL_RUN, elsewhere / "run")
    vmemtrace = venv / "bin" / "vmemtrace"
    where = subprocess.run([venv / "bin" / "python", "-c", "import queries, vmemtrace; print(queries.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)
    listed = subprocess.run([vmemtrace, "detect", "--list", "--json"], cwd=elsewhere, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert {"D1", "D2", "D3", "D4", "D5", "I"} <= {d["id"] for d in json.loads(listed.stdout)}
    res = subprocess.run([vmemtrace, "detect", "run", "--json", "--fail-on", "none"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads(res.stdout), list)
    statuses = json.loads((elsewhere / "run" / "findings" / "detectors.json").read_text())
    assert {s["id"]: s["status"] for s in statuses}["D3"] == "ran"  # the real balloon run has QEMU events
    page = subprocess.run([vmemtrace, "report", "run"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert page.returncode == 0, page.stderr
    assert Path(elsewhere / page.stdout.strip()).is_file()
