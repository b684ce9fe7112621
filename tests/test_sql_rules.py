"""Rules of the shared SQL layer and the detectors that depend on facts outside the events: the
QEMU version a session names, an untimed log, the modules' dependency order, and the detector
status that tells "ran: none" from "ran: no relevant events"."""

import json
from pathlib import Path

import pytest

from pipeline.runstore import open_run
from queries.runner import DetectorError, Module, load_modules, module_order, run_detectors
from tests.conftest import FIXTURES


TRACED = {"host": "unknown", "kernel": "unknown", "qemu_version": None, "qemu_binaries": []}


def _import(cli, case: Path, run: Path, **session) -> Path:
    assert cli("import", "jsonl", case, "--run", run).exit_code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["sessions"][0].update(session)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _d4_windows(run: Path) -> list[dict]:
    found = run_detectors(open_run(run)).findings.to_pylist()
    return [f for f in found if f["detector"] == "D4" and f["kind"] == "update_window"]


def test_qemu_8_makes_windows_unreachable(tmp_path, cli):
    # The seed-003 split with no KVM_RUN evidence inside it: medium while the version is unknown.
    case = FIXTURES / "D4" / "window.jsonl"
    unknown = _d4_windows(_import(cli, case, tmp_path / "unknown"))
    assert [f["severity"] for f in unknown] == ["medium"]
    assert "give the QEMU version" in unknown[0]["message"]
    new = _d4_windows(_import(cli, case, tmp_path / "new", traced={**TRACED, "qemu_version": "8.2.2"}))
    assert [f["severity"] for f in new] == ["info"]
    assert "unreachable: QEMU 8.2 inhibits vCPU ioctls" in new[0]["message"]
    old = _d4_windows(_import(cli, case, tmp_path / "old", traced={
        **TRACED, "qemu_binaries": [{"path": "/usr/bin/qemu-system-x86_64", "version": "7.2.11", "probes": {}}]}))
    assert [f["severity"] for f in old] == ["medium"]


def test_untimed_log_judges_order_and_prints_no_durations(tmp_path, cli):
    run = _import(cli, FIXTURES / "D4" / "access_in_window.jsonl", tmp_path / "run",
                  clock={"domain": "untimed", "source": "line order", "alignment": "none",
                         "offset_ns": None, "residual_ns": None, "matched_events": 0})
    found = [f for f in run_detectors(open_run(run)).findings.to_pylist() if f["detector"] == "D4"]
    assert sorted(f["kind"] for f in found) == ["access_in_window", "update_window"]
    for f in found:
        assert " us " not in f["message"] and "order only" in f["message"]


def test_no_relevant_events_is_not_none(tmp_path, cli):
    # Only migration bitmap syncs: D3 has rows in its tables but nothing it reasons about.
    lines = [{"kind": "qemu", "event_id": i, "ts_ns": 1000 * i, "pid": 7, "comm": "qemu", "event": e}
             for i, e in enumerate(["bitmap_sync_start", "bitmap_sync_end"], start=1)]
    case = tmp_path / "sync.jsonl"
    case.write_text("".join(json.dumps(e) + "\n" for e in lines))
    run = _import(cli, case, tmp_path / "run")
    status = {s.id: s for s in run_detectors(open_run(run)).statuses}
    assert status["D3"].status == "ran" and status["D3"].outcome == "no relevant events"
    assert status["D3"].relevant_missing == ["free_page_hints | free_page_reports"]
    assert status["D2"].outcome == "no relevant events"
    assert status["I"].outcome == "none"
    stored = json.loads((run / "findings" / "detectors.json").read_text()) if (run / "findings").exists() else None
    assert stored is None  # run_detectors itself stores nothing; `detect` does (below)
    assert cli("detect", run, "--json", "--fail-on", "none").exit_code == 0
    stored = {s["id"]: s for s in json.loads((run / "findings" / "detectors.json").read_text())}
    assert stored["D3"]["outcome"] == "no relevant events"


def test_modules_load_after_what_they_use():
    modules = load_modules()
    order = [m.name for m in module_order(["discards"], modules)]
    assert order.index("base") < order.index("memslots") < order.index("discards")
    for m in modules.values():
        assert f"-- module: {m.name}" in m.path.read_text()
    loop = {"a": Module("a", ("b",), Path("a.sql"), ""), "b": Module("b", ("a",), Path("b.sql"), "")}
    with pytest.raises(DetectorError, match="module cycle: a -> b -> a"):
        module_order(["a"], loop)
