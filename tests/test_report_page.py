"""The report page: verdict first, the overview's lanes, address-space pictures, DMA lifetimes from
dma_mappings, the size cap with a synthetic findings table of 300k rows, file permissions, and the
real balloon run rendered in headless Chromium (screenshot build/test-artifacts/report-balloon.png)."""

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.findings_store import load_findings
from pipeline.runstore import open_run
from pipeline.schema import FINDING_SCHEMA
from reports.html import MAX_CARDS, MAX_TABLE_ROWS, write_report
from tests.conftest import FIXTURES, write_jsonl
from tests.test_report import ARTIFACTS, EVIL, browser  # noqa: F401  (the Chromium fixture)

DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"
PAGE_CAP = 20 * 2**20


class _Elements(HTMLParser):
    """Start tags with their attributes, and the text inside elements with an id."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self._open.append((tag, a["id"]))
            self.text.setdefault(a["id"], "")

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        for _, i in self._open:
            self.text[i] += data


def parse(page: Path) -> _Elements:
    p = _Elements()
    p.feed(page.read_text())
    return p


@pytest.fixture
def demo_page(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", DEMO, "--run", run).exit_code == 0
    res = cli("report", run)
    assert res.exit_code == 0
    return run, Path(res.stdout.strip())


def test_verdict_comes_first_with_worst_severity_and_not_applicable_detectors(demo_page):
    run, page = demo_page
    html = page.read_text()
    el = parse(page)
    findings, statuses = load_findings(open_run(run))
    assert html.index('id="verdict"') < html.index('id="overview"') < html.index('id="findings"')
    verdict = " ".join(el.text["verdict"].split())
    n_crit = sum(s == "critical" for s in findings.column("severity").to_pylist())
    assert n_crit and f"critical {n_crit} critical finding" in verdict
    not_run = [s for s in statuses if s["status"] == "not run"]
    for s in not_run:
        assert f"{s['id']} {s['title']}: not applicable: the run has no {'; '.join(s['missing'])}" in verdict
    # Not applicable is not an error: no error styling anywhere for them.
    assert not [a for t, a in el.tags if t == "li" and "err" in (a.get("class") or "")]
    assert "qemu-system-x86 (2200)" in el.text["traced"] and "qemu-system-x86 (2300)" in el.text["traced"]
    assert "session 1 (jsonl importer): host unknown, kernel unknown" in " ".join(el.text["traced"].split())


def test_overview_lanes_and_process_summary(demo_page):
    _, page = demo_page
    el = parse(page)
    lanes = {a["data-lane"] for t, a in el.tags if t == "g" and "data-lane" in a}
    assert {"discards", "dma", "memslots", "guest memory discarded", "findings"} <= lanes
    text = " ".join(el.text["overview"].split())
    # 4 MiB discarded in all: two 2 MiB balloon chunks of pid 2200, one of pid 2300 (2 MiB).
    assert "6.0 MiB, peak" in text and "MiB/s" in text
    assert re.search(r"\b0 s\b", text)
    marks = [a for t, a in el.tags if t == "a" and a.get("href", "").startswith("#D")]
    assert marks
    procs = " ".join(el.text["processes"].split())
    assert "qemu-system-x86 (2200)" in procs and "4.0 MiB" in procs and "2.0 MiB" in procs


def test_address_space_picture_draws_the_discard_inside_the_mapping(demo_page):
    _, page = demo_page
    html = page.read_text()
    d1 = re.findall(r'<div class="finding" id="(D1-\w+)"', html)
    assert d1
    for fid in d1:
        card = html[html.index(f'<div class="finding" id="{fid}"'):]
        card = card[:card.index('<svg class="timeline"')]
        rects = {cls: [(float(x), float(w)) for x, w in re.findall(
            rf'<rect class="r-{cls}" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', card)] for cls in ("slot", "map", "hit")}
        assert rects["slot"] and rects["map"] and len(rects["hit"]) == 1
        (hx, hw), = rects["hit"]
        assert any(mx <= hx and hx + hw <= mx + mw + 0.2 for mx, mw in rects["map"])
        assert "broken axis" in card  # a 2 MiB discard in a 1 GiB mapping: orders of magnitude apart


def test_timeline_ends_each_mapping_at_its_own_unmap(tmp_path):
    """Two mappings in one finding's evidence: B is unmapped first. The old pairing in Python ended
    A's bar at B's unmap; the dma_mappings view pairs each map with the unmap of its own range."""
    base = {"pid": 77, "comm": "qemu", "api": "vfio_type1", "fd": 20, "ret": 0}
    events = [
        {"kind": "memslot", "ts_ns": 100, "pid": 77, "comm": "qemu", "ioctl": "region", "vm_fd": 9, "as_id": 0,
         "slot": 0, "flags": 0, "gpa": "0x0", "size": "0x40000000", "hva": "0x7f0000000000", "ret": 0},
        {"kind": "dma", "ts_ns": 1_000, **base, "op": "map", "vaddr": "0x7f0000100000", "iova": "0x100000",
         "size": "0x100000", "flags": 3},
        {"kind": "dma", "ts_ns": 2_000, **base, "op": "map", "vaddr": "0x7f0000300000", "iova": "0x300000",
         "size": "0x100000", "flags": 3},
        {"kind": "dma", "ts_ns": 3_000, **base, "op": "unmap", "iova": "0x300000", "size": "0x100000", "flags": 0},
        {"kind": "discard", "ts_ns": 4_000, "pid": 77, "comm": "qemu", "syscall": "madvise",
         "hva_start": "0x7f0000100000", "size": "0x1000", "advice": 4, "ret": 0},
        {"kind": "dma", "ts_ns": 9_000, **base, "op": "unmap", "iova": "0x100000", "size": "0x100000", "flags": 0},
    ]
    from vmemtrace.cli import app
    from typer.testing import CliRunner
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(app, ["import", "jsonl", str(write_jsonl(tmp_path / "t.jsonl", events)), "--run", str(run_dir)])
    assert res.exit_code == 0, res.stdout
    run = open_run(run_dir)
    dma = run.read_family("dma").to_pylist()
    a_map, b_map, b_unmap, a_unmap = (next(e["event_id"] for e in dma if e["ts_ns"] == t) for t in (1_000, 2_000, 3_000, 9_000))
    disc = run.read_family("discards").column("event_id")[0].as_py()
    finding = {"finding_id": "D1-test", "detector": "D1", "kind": "stale_mapping", "severity": "high", "pid": 77,
               "comm": "qemu", "ts_start_ns": 1_000, "ts_end_ns": 4_000, "gpa_start": 0x100000, "gpa_end": 0x101000,
               "hva_start": 0x7F0000100000, "hva_end": 0x7F0000101000, "iova_start": 0x100000, "iova_end": 0x101000,
               "event_ids": [a_map, b_map, b_unmap, disc], "related": [], "message": "test"}
    page = write_report(run, pa.Table.from_pylist([finding], FINDING_SCHEMA), [], tmp_path / "report")
    spans = {int(a["data-start-event"]): a for t, a in parse(page).tags if t == "rect" and "data-start-event" in a}
    assert spans[a_map]["data-end-event"] == str(a_unmap)
    assert spans[b_map]["data-end-event"] == str(b_unmap)
    # B's bar stops at its unmap (3 us); A's runs past it to the right edge (its unmap is at 9 us).
    assert float(spans[a_map]["x"]) + float(spans[a_map]["width"]) > \
        float(spans[b_map]["x"]) + float(spans[b_map]["width"]) + 50


def synthetic_findings(n: int, event_ids: list[int], t0: int, t1: int) -> pa.Table:
    """n findings shaped like D1's output on a balloon under a mapping: each with 20 evidence events."""
    rng = np.random.default_rng(3)
    sev = np.array(["critical", "high", "medium", "info"])[rng.integers(0, 4, n)]
    ts = np.sort(rng.integers(t0, t1, n))
    gpa = rng.integers(0, 1 << 30, n).astype(np.uint64) & ~np.uint64(0xFFF)
    ids = np.array(event_ids, np.int64)[rng.integers(0, len(event_ids), n * 20)]
    return pa.table({
        "finding_id": pa.array([f"D1-{i:012x}" for i in range(n)]), "detector": pa.repeat(pa.scalar("D1"), n),
        "kind": pa.repeat(pa.scalar("discard_under_mapping"), n), "severity": pa.array(sev),
        "pid": pa.array(np.full(n, 2200, np.int32)), "comm": pa.repeat(pa.scalar(EVIL), n),
        "ts_start_ns": pa.array(ts), "ts_end_ns": pa.array(ts + 1000), "gpa_start": pa.array(gpa),
        "gpa_end": pa.array(gpa + np.uint64(4096)), "hva_start": pa.array(gpa + np.uint64(0x7F3A00000000)),
        "hva_end": pa.array(gpa + np.uint64(0x7F3A00001000)), "iova_start": pa.array(gpa),
        "iova_end": pa.array(gpa + np.uint64(4096)),
        "event_ids": pa.ListArray.from_arrays(pa.array(np.arange(0, n * 20 + 1, 20, dtype=np.int32)), pa.array(ids)),
        "related": pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())),
        "message": pa.repeat(pa.scalar("A balloon page was discarded under a live DMA mapping."), n),
    }, schema=FINDING_SCHEMA)


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("big")
    from typer.testing import CliRunner
    from vmemtrace.cli import app
    assert CliRunner().invoke(app, ["import", "jsonl", str(DEMO), "--run", str(tmp / "run")]).exit_code == 0
    run = open_run(tmp / "run")
    ids = [e for f in run.row_counts() for e in run.read_family(f).column("event_id").to_pylist()]
    findings = synthetic_findings(300_000, ids, 1_000_000, 12_000_000)
    return findings, write_report(run, findings, [], tmp / "report")


def test_page_of_300k_findings_stays_under_the_cap_and_says_what_it_left_out(big_report):
    findings, page = big_report
    assert page.stat().st_size < PAGE_CAP
    el = parse(page)
    left = " ".join(el.text["left-out"].split())
    assert f"{300_000 - MAX_TABLE_ROWS:,} of 300,000 findings from the table" in left
    assert f"{300_000 - MAX_CARDS:,} findings without a card" in left
    assert sum(1 for t, a in el.tags if t == "tr" and "finding-row" in (a.get("class") or "")) == MAX_TABLE_ROWS
    cards = [a["data-severity"] for t, a in el.tags if t == "div" and "finding" in (a.get("class") or "").split()]
    assert len(cards) == MAX_CARDS and set(cards) == {"critical"}  # worst first
    full = pq.read_table(page.parent / "findings.parquet")
    assert full.num_rows == 300_000 and full.equals(findings)
    with open(page.parent / "findings.csv") as f:
        assert sum(1 for _ in f) == 300_001


def test_page_of_300k_findings_opens_in_chromium(big_report, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    _, page = big_report
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert "300,000" in browser.find_element(By.ID, "left-out").text
    assert browser.find_element(By.ID, "verdict").text.split("\n")[0].startswith("critical")


def test_report_files_have_no_group_or_world_write(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", DEMO, "--run", run).exit_code == 0
    old = os.umask(0)
    try:
        res = cli("report", run, "--out", tmp_path / "out")
    finally:
        os.umask(old)
    assert res.exit_code == 0
    out = tmp_path / "out"
    paths = [out, *out.iterdir()]
    assert len(paths) >= 7
    for p in paths:
        assert p.stat().st_mode & 0o022 == 0, p


def test_real_balloon_run_in_chromium(tmp_path, cli, browser):  # noqa: F811
    """The real balloon scenario (QEMU 7.2, Debian guest under TCG, QMP balloon 256 MiB then back):
    its overview shows the balloon lane, with the balloon's actual size where the run has QEMU's
    virtio_balloon_set_config lines (runs imported before they were read have the target only)."""
    from selenium.webdriver.common.by import By

    shutil.copytree(FIXTURES / "real" / "balloon" / "run", tmp_path / "run")
    run = open_run(tmp_path / "run")
    res = cli("report", tmp_path / "run")
    assert res.exit_code == 0
    page = Path(res.stdout.strip())
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    verdict = browser.find_element(By.ID, "verdict").text
    assert verdict.splitlines()[0].startswith("info")
    assert "not applicable: the run has no dma" in verdict  # D1: no VFIO device here, not an error
    _, statuses = load_findings(run)
    for st in statuses:
        if st.get("outcome") == "no relevant events":  # D3: QEMU rows, but no hints or reports
            assert f"{st['id']} {st['title']}: ran: no relevant events" in verdict
    assert "error" not in verdict
    assert "/usr/bin/qemu-system-x86_64" in verdict and "7.2." in verdict   # the binary the collector traced
    lane = browser.find_element(By.CSS_SELECTOR, 'g[data-lane="balloon size"]')
    target = lane.find_element(By.CSS_SELECTOR, 'polyline[data-series="balloon target"]')
    ys = [float(p.split(",")[1]) for p in target.get_attribute("points").split()]
    assert len(set(ys)) == 2  # 256 MiB in the balloon, then 0 again: the two QMP targets
    qemu = run.read_family("qemu")
    con_has_actual = pc.sum(pc.equal(qemu["event"], "balloon_set_config")).as_py()
    actual = lane.find_elements(By.CSS_SELECTOR, 'polyline[data-series="balloon actual"]')
    assert bool(actual) == bool(con_has_actual)
    if not con_has_actual:
        assert "actual: not in the run" in lane.text
    assert "MiB/s" in browser.find_element(By.ID, "overview").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report-balloon.png"))


def test_real_kvm_boot_memslot_gaps_end_when_the_same_slot_returns(tmp_path, cli):
    """D4 on the real KVM boot run: QEMU deletes slots and re-adds them, several slots at once.
    Each gap bar ends at the next memslot call giving the same slot memory, not at whichever
    memslot event of the evidence comes next."""
    shutil.copytree(FIXTURES / "real" / "kvm-boot" / "run", tmp_path / "run")
    res = cli("report", tmp_path / "run")
    assert res.exit_code == 0
    slots = open_run(tmp_path / "run").read_family("memslots").to_pylist()
    gaps = [a for t, a in parse(Path(res.stdout.strip())).tags
            if t == "rect" and "s-gap" in (a.get("class") or "")]
    assert len(gaps) >= 4
    by_id = {s["event_id"]: s for s in slots}
    for g in gaps:
        d = by_id[int(g["data-start-event"])]
        later = [s for s in slots if (s["pid"], s["vm_fd"], s["as_id"], s["slot"]) == (d["pid"], d["vm_fd"], d["as_id"], d["slot"])
                 and s["ts_ns"] > d["ts_ns"] and s["size"] and not s["ret"]]
        expected = min(later, key=lambda s: s["ts_ns"])["event_id"] if later else None
        assert g["data-end-event"] == (str(expected) if expected is not None else "")


def test_overview_of_a_run_of_days_has_an_hour_axis(tmp_path, cli):
    day = 86_400 * 10**9
    events = [{"kind": "discard", "ts_ns": 1_000 + i * day // 2, "pid": 5, "comm": "qemu", "syscall": "madvise",
               "hva_start": hex(0x7F0000000000 + i * 4096), "size": "0x1000", "advice": 4, "ret": 0}
              for i in range(7)]  # every 12 h for 3 days
    run = tmp_path / "run"
    assert cli("import", "jsonl", write_jsonl(tmp_path / "days.jsonl", events), "--run", run).exit_code == 0
    res = cli("report", run)
    assert res.exit_code == 0
    html = Path(res.stdout.strip()).read_text()
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', html)
    assert ticks[0] == "0 s" and all(t.endswith(" h") for t in ticks[1:]) and "72 h" in ticks
    assert "(72 h) in 21.6 min bins" in html
