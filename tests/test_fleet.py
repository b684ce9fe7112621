"""`vmemtrace fleet` on a local Ray cluster: the lake holds exactly what `detect` finds per run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.runstore import open_run
from queries.runner import run_detectors

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "fixtures" / "real"


def vmemtrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmemtrace", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two real runs, one run with a broken manifest, detected once into a lake."""
    base = tmp_path_factory.mktemp("fleet")
    runs = base / "runs"
    for name in ("kvm-boot", "balloon"):
        shutil.copytree(REAL / name / "run", runs / name, ignore=shutil.ignore_patterns("findings", "report"))
    (runs / "broken").mkdir()
    (runs / "broken" / "manifest.json").write_text("{not json")
    lake = base / "lake"
    res = vmemtrace("fleet", "detect", runs, "--lake", lake, "--num-cpus", 2)
    return runs, lake, res


def test_failed_run_is_recorded_and_exit_says_so(fleet):
    runs, lake, res = fleet
    assert res.returncode == 2, res.stderr
    assert "[3/3]" in res.stderr and "failed 1, ok 2" in res.stderr
    con = duckdb.connect()
    rows = con.execute(f"SELECT run, status, error FROM read_parquet('{lake}/*/*/*/runs.parquet', "
                       "hive_partitioning = true) ORDER BY run").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("balloon", "ok"), ("broken", "failed"), ("kvm-boot", "ok")]
    assert "not valid JSON" in rows[1][2]


def test_lake_findings_equal_detect_on_each_run(fleet):
    runs, lake, _ = fleet
    con = duckdb.connect()
    for name in ("kvm-boot", "balloon"):
        alone = run_detectors(open_run(runs / name)).findings.to_pylist()
        in_lake = con.sql(
            f"SELECT * EXCLUDE (host, date, run) FROM read_parquet('{lake}/*/*/*/findings.parquet', "
            f"hive_partitioning = true) WHERE run = '{name}' ORDER BY finding_id").to_arrow_table().to_pylist()
        assert in_lake == sorted(alone, key=lambda f: f["finding_id"])
        assert alone, f"{name}: the bundled run has findings (I at least), so the comparison is not empty"


def test_partitions_are_hive_and_rerun_replaces(fleet, tmp_path):
    runs, lake, _ = fleet
    parts = sorted(p.relative_to(lake).as_posix() for p in lake.glob("host=*/date=*/run=*"))
    assert len(parts) == 3 and all(p.startswith("host=") for p in parts)
    before = {p: sorted(f.name for f in (lake / p).iterdir()) for p in parts}
    res = vmemtrace("fleet", "detect", runs / "balloon", "--lake", lake, "--num-cpus", 1)
    assert res.returncode == 0, res.stderr
    after = {p.relative_to(lake).as_posix(): sorted(f.name for f in p.iterdir())
             for p in lake.glob("host=*/date=*/run=*")}
    assert after == before
    assert not list(lake.rglob(".staging-*")) and not list(lake.rglob(".old-*"))


def test_summary_and_query(fleet, tmp_path):
    _, lake, _ = fleet
    res = vmemtrace("fleet", "summary", "--lake", lake, "--json", "--html", tmp_path / "fleet.html")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["totals"][0]["runs"] == 3 and summary["totals"][0]["failed"] == 1
    assert [r["run"] for r in summary["untrusted_runs"]] == ["broken"]
    d4 = [r for r in summary["by_detector"] if r["detector"] == "D4"]
    assert d4 and {r["qemu_version"] for r in d4} == {"7.2.22"}
    assert "fleet summary" in (tmp_path / "fleet.html").read_text()
    res = vmemtrace("fleet", "query", "--lake", lake, "--json",
                    "SELECT run, count(*) AS n FROM findings GROUP BY run ORDER BY run")
    assert res.returncode == 0, res.stderr
    by_run = {r["run"]: r["n"] for r in json.loads(res.stdout)}
    assert set(by_run) == {"balloon", "kvm-boot"}
    res = vmemtrace("fleet", "query", "--lake", lake, "SELECT nope FROM findings")
    assert res.returncode == 2 and "query:" in res.stderr
    # Lake values come from manifests: printed as a table they stay inert.
    res = vmemtrace("fleet", "query", "--lake", lake, "SELECT chr(27) || '[31m[critical] forged' || chr(10) AS x")
    assert res.returncode == 0 and "\x1b" not in res.stdout and "\\x1b[31m" in res.stdout
