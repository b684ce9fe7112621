"""Every detector's fixtures: tests/fixtures/<detector id>/<case>.jsonl with <case>.expected.json.

An expected file is {"detectors": [ids], "findings": [...]}: the detectors the case is about and
every finding those detectors must produce on it, nothing else. Findings of other detectors are
not compared, so a new detector that fires on an old case breaks no expectation. Ranges may be
written as "0x..." strings; "message_contains" lists text the finding's message must hold.
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


def load_expected(case: Path) -> tuple[set[str], list[dict]]:
    expected = json.loads(case.with_suffix(".expected.json").read_text())
    about = set(expected["detectors"])
    assert case.parent.name in about, f"{case.name} lives in {case.parent.name}/ but is not about it"
    stray = {f["detector"] for f in expected["findings"]} - about
    assert not stray, f"{case.name} expects findings of {stray} it does not say it is about"
    return about, expected["findings"]


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_fixture_findings(case: Path, tmp_path, cli):
    about, expected = load_expected(case)
    run = tmp_path / "run"
    assert cli("import", "jsonl", case, "--run", run).exit_code == 0
    res = cli("detect", run, "--json", "--fail-on", "none")
    assert res.exit_code == 0, res.output
    got = [f for f in json.loads(res.stdout) if f["detector"] in about]

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
