"""The real ground truth for D1 (REFERENCE.md 5.9): an io_uring registered buffer is a long-term pin
on this machine, and a discard under it leaves the ring holding a page the CPU no longer sees.

The workload (tests/workloads/io_uring_pin.py) proves the divergence itself from /proc/self/pagemap;
the collected rows must equal what it did, field by field, and D1 must report exactly the
discarded overlap as `high`. The near misses (no discard; the discard after unregistering) give
no D1 finding.
"""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc

from pipeline.runstore import open_run
from tests.test_collectors_real import ROOT, VMEMTRACE, can_trace  # noqa: F401  (root, tracefs, bcc)
from tests.workloads.io_uring_pin import DISCARD


def collect_pin(tmp_path: Path, mode: str) -> tuple[Path, dict]:
    run, proof = tmp_path / "run", tmp_path / "proof.json"
    res = subprocess.run([*VMEMTRACE, "collect", "--run", str(run), "--families", "dma", "--families",
                          "discards", "--", sys.executable, "-m", "tests.workloads.io_uring_pin", mode,
                          str(proof)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return run, json.loads(proof.read_text())


def family_rows(run: Path, family: str, pid: int) -> list[dict]:
    t = open_run(run).read_family(family)
    return t.filter(pc.equal(t["pid"], pid)).sort_by("event_id").to_pylist()


def pin_rows(run: Path, did: dict) -> list[dict]:
    keys = ("api", "op", "fd", "vaddr", "size", "iova", "buf_index", "ret")
    return [{k: r[k] for k in keys} for r in family_rows(run, "dma", did["pid"]) if r["source"] == "bpf:io_uring"]


def buffer_discards(run: Path, did: dict) -> list[dict]:
    """The discards that touch the registered buffer (the interpreter makes others of its own)."""
    lo, hi = did["buffer"]["vaddr"], did["buffer"]["vaddr"] + did["buffer"]["size"]
    return [{k: r[k] for k in ("syscall", "hva_start", "size", "advice", "ret")}
            for r in family_rows(run, "discards", did["pid"])
            if r["hva_start"] is not None and r["hva_start"] < hi and lo < r["hva_start"] + r["size"]]


def d1_findings(run: Path) -> list[dict]:
    res = subprocess.run([*VMEMTRACE, "detect", str(run), "--json", "-D", "D1", "--fail-on", "none"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [f for f in json.loads(res.stdout) if f["detector"] == "D1"]


def expected_pins(did: dict) -> list[dict]:
    buf = did["buffer"]
    common = {"api": "io_uring", "fd": did["ring_fd"], "iova": None, "ret": 0}
    return [{**common, "op": "map", "vaddr": buf["vaddr"], "size": buf["size"], "buf_index": 0},
            {**common, "op": "unmap", "vaddr": None, "size": None, "buf_index": None}]


def expected_discard(did: dict) -> dict:
    return {"syscall": "madvise", **did["discard"], "ret": 0}


def test_discard_under_registered_buffer_is_reported_high(tmp_path):
    run, did = collect_pin(tmp_path, "discard")
    # The workload's own proof: while pinned, exactly the discarded pages moved for the CPU.
    assert did["pinned_at_discard"] and did["diverged_pages"] == list(DISCARD)
    assert all(p is not None for p in did["pinned_pfns"] + did["after_pfns"])
    assert pin_rows(run, did) == expected_pins(did)
    assert buffer_discards(run, did) == [expected_discard(did)]
    findings = d1_findings(run)
    assert [(f["severity"], f["hva_start"], f["hva_end"]) for f in findings] == \
        [("high", did["discard"]["hva_start"], did["discard"]["hva_start"] + did["discard"]["size"])]


def test_no_discard_gives_no_finding(tmp_path):
    run, did = collect_pin(tmp_path, "no_discard")
    assert did["diverged_pages"] == [] and did["pinned_pfns"] == did["after_pfns"]
    assert pin_rows(run, did) == expected_pins(did)
    assert buffer_discards(run, did) == []
    assert d1_findings(run) == []


def test_discard_after_unregister_gives_no_finding(tmp_path):
    run, did = collect_pin(tmp_path, "after_unregister")
    assert pin_rows(run, did) == expected_pins(did)
    assert buffer_discards(run, did) == [expected_discard(did)]
    unregister = [r for r in family_rows(run, "dma", did["pid"]) if r["op"] == "unmap"][0]
    madv = [r for r in family_rows(run, "discards", did["pid"]) if r["hva_start"] == did["discard"]["hva_start"]][0]
    assert unregister["end_ns"] <= madv["ts_ns"]  # the pin had ended before the discard began
    assert d1_findings(run) == []
