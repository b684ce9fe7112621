"""Every detector's fixtures: tests/fixtures/<detector id>/<case>.jsonl with <case>.expected.json.

The expected file lists every finding the case must produce (from all detectors), and the run
must produce nothing else. Ranges may be written as "0x..." strings.
"""

import json
from pathlib import Path

import pytest

from queries.runner import load_detectors
from tests.conftest import FIXTURES

COMPARED = ("detector", "kind", "severity", "pid", "ts_start_ns", "ts_end_ns",
            "gpa_start", "gpa_end", "hva_start", "hva_end", "iova_start", "iova_end", "event_ids")
CASES = sorted(p for d in FIXTURES.iterdir() if d.name[:1] in "DI" and d.is_dir()
               for p in d.glob("*.jsonl"))


def _norm(v):
    return int(v, 16) if isinstance(v, str) and v.startswith("0x") else v


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_fixture_findings(case: Path, tmp_path, cli):
    expected = json.loads(case.with_suffix(".expected.json").read_text())
    run = tmp_path / "run"
    assert cli("import", "jsonl", case, "--run", run).exit_code == 0
    res = cli("detect", run, "--json", "--fail-on", "none")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)

    def key(f):
        return tuple(str(_norm(f.get(k))) for k in COMPARED)

    want = sorted(({k: _norm(e.get(k)) for k in COMPARED} for e in expected), key=key)
    have = sorted(({k: f[k] for k in COMPARED} for f in got), key=key)
    assert have == want
    for e in expected:
        match = next(f for f in got if key(f) == key(e))
        for text in e.get("message_contains", []):
            assert text in match["message"]


def test_every_detector_has_fixtures():
    dirs = {d.name for d in FIXTURES.iterdir() if d.is_dir()}
    for det in load_detectors():
        assert det.id in dirs, f"{det.path.name} has no tests/fixtures/{det.id}/"
        assert any((FIXTURES / det.id).glob("*.expected.json"))
