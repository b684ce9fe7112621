"""The HTML report: its pictures checked for content, and the page rendered in headless Chromium.

The browser test saves a screenshot to build/test-artifacts/report.png.
"""

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reports.headless_chromium import headless_chromium
from tests.conftest import FIXTURES, require, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"
EVIL = "<script>alert(1)</script>"


class _Timelines(HTMLParser):
    """Per finding div: the timeline's marks (data-event-id, data-ts, cx) in document order."""

    def __init__(self):
        super().__init__()
        self.current = None
        self.marks: dict[str, list[dict]] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "finding" in (a.get("class") or "").split():
            self.current = a["id"]
            self.marks[self.current] = []
        elif tag == "circle" and "mark" in (a.get("class") or "").split() and self.current:
            self.marks[self.current].append({"id": int(a["data-event-id"]), "ts": int(a["data-ts"]),
                                             "x": float(a["cx"])})


@pytest.fixture
def report_run(tmp_path, cli):
    events = [json.loads(line) for line in DEMO.read_text().splitlines() if line.startswith("{")]
    for e in events:
        if e.get("pid") == 2200:
            e["comm"] = EVIL
    run = tmp_path / "run"
    cli("import", "jsonl", write_jsonl(tmp_path / "evil.jsonl", events), "--run", run)
    res = cli("report", run)
    assert res.exit_code == 0
    return run, Path(res.stdout.strip())


def test_timelines_have_one_mark_per_evidence_event_in_time_order(report_run):
    run, page = report_run
    findings = {f["finding_id"]: f for f in pq.read_table(run / "findings" / "findings.parquet").to_pylist()}
    parser = _Timelines()
    parser.feed(page.read_text())
    assert set(parser.marks) == set(findings)
    for fid, marks in parser.marks.items():
        assert sorted(m["id"] for m in marks) == sorted(findings[fid]["event_ids"]), fid
        by_time = sorted(marks, key=lambda m: (m["ts"], m["id"]))
        xs = [m["x"] for m in by_time]
        assert xs == sorted(xs), fid                  # x grows with time
        assert xs[0] < xs[-1] or len(set(m["ts"] for m in marks)) == 1


def test_csv_and_json_outputs(report_run, cli):
    run, page = report_run
    for name in ("findings.csv", "detectors.csv", "events.csv", "sessions.csv"):
        assert (page.parent / name).read_text().strip(), name
    res = cli("report", run, "--format", "json")
    data = json.loads(res.stdout)
    assert {f["finding_id"] for f in data["findings"]} == \
        {f["finding_id"] for f in pq.read_table(run / "findings" / "findings.parquet").to_pylist()}
    assert all(f["evidence"] for f in data["findings"] if f["detector"] != "I")
    assert cli("report", run, "--format", "pdf").exit_code == 2


def test_comparison_of_two_runs(tmp_path, cli):
    lines = [json.loads(line) for line in DEMO.read_text().splitlines() if line.startswith("{")]
    # The second balloon discard under the mapping, and the invalidation it raised, do not happen.
    fixed = [e for e in lines if e.get("hva_start") != "0x7f3a20000000"]
    cli("import", "jsonl", DEMO, "--run", tmp_path / "before")
    cli("import", "jsonl", write_jsonl(tmp_path / "after.jsonl", fixed), "--run", tmp_path / "after")
    res = cli("report", tmp_path / "before", tmp_path / "after", "--out", tmp_path / "cmp")
    assert res.exit_code == 0
    compare = Path(res.stdout.strip().splitlines()[-1])
    html = compare.read_text()
    assert compare.name == "compare.html"
    # Gone: D1's high finding and D2's finding over two discards; new: D2's finding over the one
    # discard left (its GPA range changed); still there: D1's critical and the lost-events note.
    assert "1 new, 2 gone, 2 still there" in html


@pytest.fixture(scope="module")
def browser():
    require(shutil.which("chromium") is not None, "chromium is not installed (make setup-host)")
    require(shutil.which("chromedriver") is not None, "chromedriver is not installed (make setup-host)")
    driver = headless_chromium(browser_log=True)
    yield driver
    driver.quit()


def test_page_in_headless_chromium(report_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run, page = report_run
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    findings = pq.read_table(run / "findings" / "findings.parquet").to_pylist()
    for f in findings:
        assert browser.find_element(By.ID, f["finding_id"]).is_displayed()
    assert EVIL in browser.find_element(By.ID, "findings").text  # shown as text, never run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))

    Select(browser.find_element(By.ID, "filter-severity")).select_by_visible_text("critical")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.finding-row")
    shown = {r.get_attribute("data-severity") for r in rows if r.is_displayed()}
    assert shown == {"critical"}
    assert sum(r.is_displayed() for r in rows) == sum(f["severity"] == "critical" for f in findings)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
