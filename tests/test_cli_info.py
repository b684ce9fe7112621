"""`vmemtrace info`: one screen about a real run, before and after detect, and when findings went stale."""

import json
import shutil

from tests.conftest import FIXTURES, write_jsonl

REAL_RUN = FIXTURES / "real" / "balloon" / "run"


def test_info_one_screen_summary(tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(REAL_RUN, run)
    res = cli("info", run)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert len(lines) <= 40  # one screen
    assert lines[1] == "host vm  kernel 6.18.44-fc-v669"
    assert lines[2].startswith("stop: clean   span: 50.6")
    assert "qemu-log" in res.stdout and "discards" in res.stdout and "66371" in res.stdout
    assert "detectors: not run yet" in res.stdout

    assert cli("detect", run).exit_code in (0, 1)
    res = cli("info", run)
    assert "D3 Free page hint and report" in res.stdout and "not run yet" not in res.stdout
    assert "n/a: no memslots events" in res.stdout  # not applicable, not an error
    summary = json.loads(cli("info", run, "--json").stdout)
    assert summary["host"] == "vm" and summary["families"]["qemu"]["rows"] == 394789
    assert {s["source"] for s in summary["sessions"]} == {"bpf", "qemu-log"}
    assert {d["id"] for d in summary["detectors"]} >= {"D1", "D2", "D3", "D4", "D5", "I"}
    assert summary["manifest"]["schema_version"] == 2

    more = write_jsonl(tmp_path / "more.jsonl", [{"kind": "discard", "ts_ns": 5, "pid": 9, "syscall": "madvise",
                                                   "hva_start": 0, "size": 4096, "advice": 4}])
    assert cli("import", "jsonl", more, "--run", run).exit_code == 0
    res = cli("info", run)
    assert "stored findings are stale" in res.stdout
    assert json.loads(cli("info", run, "--json").stdout)["findings_stale"] is True
