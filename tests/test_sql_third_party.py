"""Third-party QEMU logs (tests/fixtures/third-party/, with their provenance) give only the findings their content
justifies. The expectations in tests/fixtures/third-party-findings/ were written by reading each
trace, with the reason per finding; they name findings by detector, kind, severity, GPA range and
number of evidence events (event ids depend on the importer)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

TRACES = FIXTURES / "third-party"
EXPECTED = sorted((FIXTURES / "third-party-findings").glob("*.json"))


def _key(f: dict) -> tuple:
    norm = lambda v: int(v, 16) if isinstance(v, str) else v  # noqa: E731
    return (f["detector"], f["kind"], f["severity"], norm(f["gpa_start"]), norm(f["gpa_end"]),
            f["evidence_events"] if "evidence_events" in f else len(f["event_ids"]))


@pytest.mark.parametrize("expected", EXPECTED, ids=[p.stem for p in EXPECTED])
def test_third_party_log_findings(expected: Path, tmp_path, cli):
    want = json.loads(expected.read_text())
    log = TRACES / want["log"]
    # A log that does not import as published (lines wrapped by a mail client) is judged on what
    # --skip-bad keeps: its importer expectation documents the refusal and the lines lost.
    as_published = json.loads(log.with_suffix(".expected.json").read_text()).get("imports", True)
    run = tmp_path / "run"
    res = cli("import", "qemu-log", log, "--run", run, *([] if as_published else ["--skip-bad"]))
    assert res.exit_code == 0, res.output
    det = cli("detect", run, "--json", "--fail-on", "none")
    assert det.exit_code == 0, det.output
    got = [f for f in json.loads(det.stdout) if f["detector"] in want["detectors"]]
    assert Counter(map(_key, got)) == Counter(map(_key, want["findings"]))
    statuses = {s["id"]: s for s in json.loads((run / "findings" / "detectors.json").read_text())}
    for det_id, outcome in want.get("outcomes", {}).items():
        assert statuses[det_id]["outcome"] == outcome
