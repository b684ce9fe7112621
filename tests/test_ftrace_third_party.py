"""Real ftrace / trace-cmd text published by others (tests/fixtures/third-party/f*): each imports as its
.expected.json sidecar says, row by row, with the provenance in its .source.txt sidecar."""

import json
from pathlib import Path

import pytest

from pipeline.importers.ftrace import import_ftrace
from pipeline.runstore import open_run
from tests.conftest import FIXTURES

HERE = FIXTURES / "third-party"
TRACES = sorted(p for p in HERE.glob("f*.txt") if not p.name.endswith(".source.txt"))


def test_every_trace_has_its_sidecars():
    assert len(TRACES) >= 8
    for trace in TRACES:
        assert trace.with_suffix(".source.txt").is_file(), trace
        assert trace.with_suffix(".expected.json").is_file(), trace


@pytest.mark.parametrize("trace", TRACES, ids=[t.stem.split("-")[0] for t in TRACES])
def test_imports_as_published(trace: Path, tmp_path):
    want = json.loads(trace.with_suffix(".expected.json").read_text())
    assert want["imports"], "every ftrace fixture found so far imports; a failing one names its reason here"
    import_ftrace([trace], tmp_path / "run")
    run = open_run(tmp_path / "run")
    session = run.manifest["sessions"][0]
    for family in run.row_counts():
        got = [{k: v for k, v in row.items() if v is not None and k not in ("event_id", "source")}
               for row in run.read_family(family).to_pylist()]
        got.sort(key=lambda row: (row["ts_ns"], json.dumps(row, sort_keys=True)))
        assert got == want["rows"].get(family, []), family
    assert session["unknown_events"] == want["unknown_events"]
    assert session["non_trace_lines"]["count"] == want["non_trace_lines"]["count"]
    assert session["non_trace_lines"]["first"] == want["non_trace_lines"]["first"]
    assert session["ftrace"]["rejoined_lines"] == want["rejoined_lines"]
    assert session["ftrace"]["context_events"] == want["context_events"]
    assert run.manifest["lost"] == want["lost"]
    assert session["clock"]["domain"] == want["clock_domain"] == "relative"  # none of them states its clock
    assert session["pid_from"] == want["pid_from"]
    lines = session["ftrace"]["lines"]  # every line is accounted for, none dropped silently
    assert lines["read"] == sum(n for kind, n in lines.items() if kind != "read") == len(trace.read_text().splitlines())


def test_gva_only_after_a_pf_intercept():
    """The meaning, not only the rows: a #PF intercept makes kvm_page_fault's address a GVA (f8), an SVM
    nested page fault leaves it a GPA (f9), and a zapped SPTE never names a page (f2)."""
    f8 = json.loads((HERE / "f8-kvm-example-2017-realmode-pf.expected.json").read_text())["rows"]["guest_accesses"]
    assert {(r.get("gva"), r.get("gpa")) for r in f8 if r["via"] == "page_fault"} == {(0x1000, None), (0x66, None)}
    f9 = json.loads((HERE / "f9-wanpengli-2020-svm-npf.expected.json").read_text())["rows"]["guest_accesses"]
    assert {(r.get("gva"), r.get("gpa")) for r in f9 if r["via"] == "page_fault"} == {(None, 0xFD000)}
    f2 = json.loads((HERE / "f2-minipli-2023-cr0wp-kvmmmu.expected.json").read_text())["rows"]["guest_accesses"]
    assert all("pfn" not in r for r in f2) and sum(r["via"] == "spte_zap" for r in f2) == 4
