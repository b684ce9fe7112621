"""Real QEMU logs published by others (tests/fixtures/third-party/q*.log, provenance in each
.source.txt): each imports as its .expected.json says (every row of every family), or fails at
the line and field the sidecar documents, and then imports the rest with --skip-bad."""

import json

import pytest

from pipeline.importers import TraceFormatError
from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import open_run
from tests.conftest import FIXTURES

THIRD_PARTY = FIXTURES / "third-party"
LOGS = sorted(THIRD_PARTY.glob("q*.log"))


def test_every_log_has_provenance_and_expectations():
    assert len(LOGS) >= 6
    for log in LOGS:
        assert log.with_suffix(".source.txt").read_text().startswith("Source: ")
        assert log.with_suffix(".expected.json").exists()


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.stem)
def test_imports_as_its_sidecar_says(tmp_path, log):
    expected = json.loads(log.with_suffix(".expected.json").read_text())
    run = tmp_path / "run"
    if expected["imports"]:
        import_qemu_log([log], run)
    else:
        with pytest.raises(TraceFormatError) as e:
            import_qemu_log([log], run)
        assert (e.value.line, e.value.field) == (expected["error"]["line"], expected["error"]["field"])
        assert not run.exists()   # a rejected input leaves nothing behind
        import_qemu_log([log], run, skip_bad=True)
        assert open_run(run).manifest["lost"] == {"qemu-log": expected["skip_bad_lost"]}
    r = open_run(run)
    session = r.manifest["sessions"][-1]
    assert session["clock"]["domain"] == expected["clock_domain"]
    assert session["non_trace_lines"] == expected["non_trace_lines"]
    assert session["unknown_events"] == expected["unknown_events"]
    assert session["pid_from"] == expected["pid_from"]
    families = sorted(f for f in session["rows"] if f != "lost_events")
    assert families == sorted(expected["rows"])
    for family, rows in expected["rows"].items():
        got = [{k: v for k, v in row.items() if k not in ("event_id", "source") and v is not None}
               for row in r.read_family(family).to_pylist()]
        assert got == rows, family


def test_q5_qemu_version_from_its_qmp_greeting(tmp_path):
    import_qemu_log([THIRD_PARTY / "q5-farosas-2025-cpr-transfer.log"], tmp_path / "run")
    traced = open_run(tmp_path / "run").manifest["sessions"][0]["traced"]
    assert traced == {"host": "unknown", "kernel": "unknown", "qemu_version": "9.2.50 (v9.2.0-987-gfd4129a8b9)",
                      "qemu_binaries": []}
