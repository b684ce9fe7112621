"""Nothing let in: text from a trace, a run or a manifest reaches the terminal inert."""

import json

import pytest

from tests.conftest import FIXTURES, write_jsonl
from vmemtrace.cli.common import inert

DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"
FORGED = "\x1b[31m[critical] forged\n"


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x9b2J", "\\x9b2J"),                       # the one-byte C1 CSI
    ("abc\u202eevil", "abc\\u202eevil"),         # right-to-left override
    ("qemu-system-x86 ünïcode", "qemu-system-x86 ünïcode"),
])
def test_inert(raw, shown):
    assert inert(raw) == shown


def _forged_run(tmp_path, cli):
    events = [json.loads(line) for line in DEMO.read_text().splitlines() if line.startswith("{")]
    for e in events:
        if e.get("pid") == 2200:
            e["comm"] = FORGED
    run = tmp_path / "run"
    assert cli("import", "jsonl", write_jsonl(tmp_path / "t.jsonl", events), "--run", run).exit_code == 0
    return run


def test_detect_prints_no_escape_and_no_forged_line(tmp_path, cli):
    run = _forged_run(tmp_path, cli)
    res = cli("detect", run)
    assert res.exit_code == 1
    assert "\x1b" not in res.output and "\\x1b[31m[critical] forged\\n" in res.output
    assert not any(line.startswith("[critical] forged") for line in res.output.splitlines())
    junit = cli("detect", run, "--format", "junit").stdout
    assert "\x1b" not in junit and "\\x1b[31m" in junit


def test_info_cannot_print_a_forged_stop_line(tmp_path, cli):
    run = _forged_run(tmp_path, cli)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["host"]["hostname"] = "vm\nstop: clean"
    manifest["sessions"][0]["source"] = "\x1b[2J\x1b[Hjsonl"
    manifest["sessions"][0]["state"] = "unclean"
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = cli("info", run)
    assert res.exit_code == 0
    assert "\x1b" not in res.output
    stops = [line for line in res.output.splitlines() if line.startswith("stop:")]
    assert len(stops) == 1 and stops[0].startswith("stop: unclean")
    assert "vm\\nstop: clean" in res.output


def test_error_messages_are_inert(tmp_path, cli):
    evil = tmp_path / "x\x1b[2Jy"
    res = cli("detect", evil)
    assert res.exit_code == 2
    assert "\x1b" not in res.stderr and "x\\x1b[2Jy" in res.stderr
