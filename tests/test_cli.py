import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from vmemtrace.cli import app
from tests.conftest import FIXTURES, write_jsonl

DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"


def _subcommands():
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from ([name, sub] for sub in cmd.commands)
        else:
            yield [name]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("argv", list(_subcommands()), ids=" ".join)
def test_every_subcommand_has_help(cli, argv, flag):
    res = cli(*argv, flag)
    assert res.exit_code == 0
    assert "Usage: vmemtrace " + " ".join(argv) in res.output
    summary = res.output.split("\n\n")[1].strip()
    assert len(summary) > 20, summary


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "vmemtrace", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("vmemtrace ")


def test_detect_exit_codes_and_json_contract(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", DEMO, "--run", run).exit_code == 0
    res = cli("detect", run, "--json")
    assert res.exit_code == 1  # high and critical findings, default --fail-on high
    findings = json.loads(res.stdout)
    assert {f["severity"] for f in findings} == {"critical", "high", "info"}  # info: the demo's lost events
    for f in findings:
        for k in ("detector", "severity", "pid", "ts_start_ns", "ts_end_ns", "gpa_start", "gpa_end",
                  "hva_start", "hva_end", "iova_start", "iova_end", "event_ids", "related", "message"):
            assert k in f
        assert isinstance(f["event_ids"], list)
        if f["gpa_start"] is not None:
            assert f["gpa_start"] < f["gpa_end"]
    assert cli("detect", run, "--fail-on", "critical").exit_code == 1
    assert cli("detect", run, "--fail-on", "none").exit_code == 0
    assert cli("detect", run, "--fail-on", "bogus").exit_code == 2
    assert cli("detect", tmp_path / "nope").exit_code == 2
    assert (run / "findings" / "findings.parquet").exists()
    csv = (run / "findings" / "findings.csv").read_text().splitlines()
    assert csv[0].startswith('"finding_id","detector"') and len(csv) == 1 + len(findings)


def test_detector_without_its_sources_is_not_run(tmp_path, cli):
    trace = write_jsonl(tmp_path / "t.jsonl", [
        {"kind": "discard", "ts_ns": 1, "pid": 1, "syscall": "madvise", "hva_start": 0, "size": 4096,
         "advice": 4}])
    cli("import", "jsonl", trace, "--run", tmp_path / "run")
    res = cli("detect", tmp_path / "run")
    assert res.exit_code == 0
    assert "n/a: no dma events" in res.output  # not applicable, not an error
    status = {s["id"]: s for s in json.loads((tmp_path / "run" / "findings" / "detectors.json").read_text())}
    assert status["D1"]["status"] == "not run" and status["D1"]["missing"] == ["dma"]
    assert status["D4"]["status"] == "not run" and status["D4"]["missing"] == ["memslots"]
    assert status["I"]["status"] == "ran"


def test_detect_list(cli):
    res = cli("detect", "--list", "--json")
    ids = [d["id"] for d in json.loads(res.stdout)]
    assert "D1" in ids


def test_report_is_self_contained_and_escapes_trace_text(tmp_path, cli):
    evil = "<script>alert(1)</script>"
    events = [json.loads(line) for line in DEMO.read_text().splitlines() if line.startswith("{")]
    for e in events:
        if e.get("pid") == 2200:
            e["comm"] = evil
    trace = write_jsonl(tmp_path / "evil.jsonl", events)
    run = tmp_path / "run"
    cli("import", "jsonl", trace, "--run", run)
    res = cli("report", run)
    assert res.exit_code == 0
    page_path = res.stdout.strip()
    assert page_path == str(run / "report" / "index.html")
    page = open(page_path).read()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    stored = pq.read_table(run / "findings" / "findings.parquet").num_rows
    assert stored >= 3 and page.count('class="finding"') == stored
    assert (run / "report" / "findings.csv").exists()


def test_help_documents_exit_codes_and_completion(cli):
    res = cli("-h")
    assert res.exit_code == 0
    for text in ("Exit codes", "3 internal error", "--install-completion", "--show-completion"):
        assert text in res.output
    assert "Exit codes" in cli("detect", "-h").output
