"""`detect --format junit` and `--baseline`: what CI shows, and known findings that do not fail."""

import json
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import FIXTURES, write_jsonl

DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"
DEMO_EVENTS = [json.loads(line) for line in DEMO.read_text().splitlines() if line.startswith("{")]
# A second QEMU (pid 2400) with its own assigned device and a balloon discard under its DMA mapping,
# at guest addresses the demo's QEMU does not use: new findings, the demo's stay as they were.
SECOND_QEMU = [
    {"kind": "memslot", "ts_ns": 1000000, "pid": 2400, "comm": "qemu-system-x86", "ioctl": "region", "vm_fd": 14,
     "as_id": 0, "slot": 1, "flags": 0, "gpa": "0x40000000", "size": "0x40000000", "hva": "0x7f6600000000", "ret": 0},
    {"kind": "vfio_group", "ts_ns": 1200000, "pid": 2400, "comm": "qemu-system-x86", "op": "attach", "group_fd": 21,
     "container_fd": 20, "ret": 0},
    {"kind": "dma", "ts_ns": 1300000, "end_ns": 1390000, "pid": 2400, "comm": "qemu-system-x86", "api": "vfio_type1",
     "op": "map", "fd": 20, "vaddr": "0x7f6600000000", "iova": "0x40000000", "size": "0x40000000", "flags": 3, "ret": 0},
    {"kind": "discard", "ts_ns": 11000000, "end_ns": 11004000, "pid": 2400, "tid": 2411, "comm": "qemu-system-x86",
     "syscall": "madvise", "hva_start": "0x7f6610000000", "size": "0x200000", "advice": 4, "ret": 0},
]


@pytest.fixture
def runs(tmp_path, cli):
    old, new = tmp_path / "old", tmp_path / "new"
    assert cli("import", "jsonl", DEMO, "--run", old).exit_code == 0
    trace = write_jsonl(tmp_path / "new.jsonl", DEMO_EVENTS + SECOND_QEMU)
    assert cli("import", "jsonl", trace, "--run", new).exit_code == 0
    return old, new


def cases(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 1
    return {c.get("name").split()[0]: c for c in root.iter("testcase")}


def test_junit_one_case_per_detector(runs, cli):
    old, _ = runs
    res = cli("detect", old, "--format", "junit")
    assert res.exit_code == 1
    by_id = cases(res.stdout)
    detectors = [d["id"] for d in json.loads(cli("detect", "--list", "--json").stdout)]
    assert sorted(by_id) == sorted(detectors)
    findings = json.loads(cli("detect", old, "--json").stdout)
    failing = {f["finding_id"] for f in findings if f["severity"] in ("critical", "high")}
    in_failures = {line.split(":")[0].split()[1] for c in by_id.values() for fail in c.findall("failure")
                   for line in fail.text.splitlines()}
    assert in_failures == failing
    assert by_id["D3"].find("skipped").get("message") == "not applicable: no qemu events in this run"
    assert by_id["D4"].find("failure") is None and by_id["D4"].find("skipped") is None
    # the info finding is below --fail-on: reported, not failed
    assert "[info]" in by_id["I"].find("system-out").text and by_id["I"].find("failure") is None
    root = ET.fromstring(res.stdout)
    assert root.get("tests") == str(len(detectors)) and root.get("failures") == "2" and root.get("skipped") == "1"


def test_junit_fail_on_none_and_critical(runs, cli):
    old, _ = runs
    res = cli("detect", old, "--format", "junit", "--fail-on", "none")
    assert res.exit_code == 0 and not any(c.find("failure") is not None for c in cases(res.stdout).values())
    res = cli("detect", old, "--format", "junit", "--fail-on", "critical")
    d1 = cases(res.stdout)["D1"]
    assert d1.find("failure").get("type") == "critical" and "[high]" in d1.find("system-out").text


def test_baseline_known_findings_do_not_fail_new_ones_do(runs, cli, tmp_path):
    old, new = runs
    base = tmp_path / "baseline.json"
    res = cli("detect", old, "--json")
    assert res.exit_code == 1
    base.write_text(res.stdout)

    same = cli("detect", old, "--baseline", base)
    assert same.exit_code == 0
    assert same.stdout.count("(known)") == len(json.loads(base.read_text()))

    res = cli("detect", new, "--baseline", base, "--json")
    assert res.exit_code == 1
    findings = json.loads(res.stdout)
    fresh = [f for f in findings if not f["known"]]
    fresh = sorted((f["detector"], f["kind"], f["gpa_start"]) for f in findings if not f["known"])
    assert fresh == [("D1", "discard_over_live_mapping", 0x50000000), ("D2", "discard_while_inhibited", 0x50000000)]
    known = {(f["detector"], f["kind"], f["pid"]) for f in findings if f["known"]}
    assert {("D1", "confirmed_divergence", 2200), ("D1", "discard_over_live_mapping", 2200),
            ("D2", "discard_while_inhibited", 2200)} <= known
    assert {d for d, _, _ in known} == {"D1", "D2", "I"}
    junit = cases(cli("detect", new, "--baseline", base, "--format", "junit").stdout)
    for det in ("D1", "D2"):
        failures = junit[det].find("failure").text.splitlines()
        assert len(failures) == 1 and "pid 2400" in failures[0]
        assert "(known from baseline)" in junit[det].find("system-out").text
    assert junit["I"].find("failure") is None
