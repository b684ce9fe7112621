"""Report cost on a balloon that discards under a device mapping: time and size of the page.

Builds (once, under --dir) a run of one QEMU with an assigned device (VFIO type1 mapping of all
guest RAM), its memslots, and a balloon that inflates --events 4 KiB pages with
madvise(MADV_DONTNEED) under the mapping - in 1 MiB runs of contiguous pages, runs in random
order, as the guest's buddy allocator hands them out - with QEMU's balloon target/actual records.
Then, in one go and interleaved over --repeats rounds: a full scan of the run (every column of
every family read into Arrow), `vmemtrace detect` (in a child process under an address-space
limit, so a detector that explodes fails instead of taking the machine down), the report (HTML
page + CSV/Parquet beside it), and the page opened in headless Chromium (load event). Prints a
table (min / median / max, ratio of the medians to the full scan) and the same as JSON.

If detect fails, the detectors' own output without the runner's `related` links is stored as the
run's findings (untimed; said in the output), so the report's figures exist whatever detect does.

    .venv/bin/python benchmarks/report_scale.py [--events 1000000] [--repeats 3] [--dir /tmp/vmemtrace-report]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.constants import value
from pipeline.findings_store import load_findings, save_findings
from pipeline.runstore import RunWriter, open_run
from pipeline.schema import FINDING_SCHEMA
from queries.runner import connect, load_detectors
from reports.headless_chromium import headless_chromium
from reports.html import write_report

ROOT = Path(__file__).resolve().parent.parent

PID, TID_MAIN, TID_BALLOON = 4000, 4000, 4007
HVA0, RAM = 0x7F0000000000, 8 << 30
PAGE = 4096


def envelope(ts, tid):
    n = len(ts)
    return {"ts_ns": np.asarray(ts, np.int64), "pid": np.full(n, PID, np.int32), "tid": np.full(n, tid, np.int32),
            "comm": pa.repeat(pa.scalar("qemu-system-x86"), n), "source": pa.repeat(pa.scalar("synthetic"), n)}


def build(run: Path, pages: int, rng: np.random.Generator) -> None:
    with RunWriter(run, source="synthetic", kind="importer", chunk_rows=1_000_000) as w:
        # Guest RAM in two memslots (below and above the 3 GiB PCI hole), mapped for the device.
        low = 3 << 30
        w.write("memslots", {**envelope([1_000, 2_000], TID_MAIN), "ioctl": pa.array(["region", "region"]),
                             "vm_fd": np.full(2, 11, np.int32), "as_id": np.zeros(2, np.uint16),
                             "slot": np.array([0, 1], np.uint16), "flags": np.zeros(2, np.uint32),
                             "gpa": np.array([0, 4 << 30], np.uint64), "size": np.array([low, RAM - low], np.uint64),
                             "hva": np.array([HVA0, HVA0 + low], np.uint64), "ret": np.zeros(2, np.int64)})
        w.write("dma", {**envelope([10_000, 11_000], TID_MAIN), "api": pa.array(["vfio_type1"] * 2),
                        "op": pa.array(["map"] * 2), "fd": np.full(2, 25, np.int32),
                        "vaddr": np.array([HVA0, HVA0 + low], np.uint64),
                        "iova": np.array([0, 4 << 30], np.uint64), "size": np.array([low, RAM - low], np.uint64),
                        "flags": np.full(2, 3, np.uint32), "ret": np.zeros(2, np.int64)})
        # The balloon: `pages` distinct guest pages discarded in bursts of 256 over ~10 minutes,
        # 20 us apart inside a burst; QEMU's target and the guest's actual size every 50k pages.
        run_pages = 256
        starts = rng.permutation(RAM // PAGE // run_pages)[:-(-pages // run_pages)].astype(np.uint64) * run_pages
        order = (starts[:, None] + np.arange(run_pages, dtype=np.uint64)).ravel()[:pages]
        burst = np.arange(pages) // 256
        ts = (1_000_000_000 + burst * 2_300_000 + (np.arange(pages) % 256) * 20_000).astype(np.int64)
        w.write("discards", {**envelope(ts, TID_BALLOON), "syscall": pa.repeat(pa.scalar("madvise"), pages),
                             "hva_start": HVA0 + order * PAGE, "size": np.full(pages, PAGE, np.uint64),
                             "advice": np.full(pages, value("MADV_DONTNEED"), np.int32),
                             "ret": np.zeros(pages, np.int64), "end_ns": ts + 3_000})
        steps = np.arange(0, pages + 1, 50_000)
        sts = np.concatenate([[500_000_000], ts[np.minimum(steps[1:], pages - 1)]])
        n = len(steps)
        w.write("qemu", {**envelope(np.concatenate([sts[:1], sts + 1_000]), TID_MAIN),
                         "event": pa.array(["balloon_target"] + ["balloon_set_config"] * n),
                         "count": np.concatenate([[pages], steps]).astype(np.int64)})


def detect(run_dir: Path, mem_gib: float) -> tuple[float, str | None]:
    """`vmemtrace detect RUN` in a child limited to mem_gib of address space: (seconds, error)."""
    limit = int(mem_gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vmemtrace", "detect", str(run_dir), "--fail-on", "critical"],
                       cwd=ROOT, preexec_fn=cap, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode in (0, 1):
        return secs, None
    return secs, (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]


def unlinked_findings(run) -> tuple[pa.Table, list[dict]]:
    """Every detector's own output, with ids and without `related` (what detect would store
    before linking findings that share evidence)."""
    con, rows, tables, statuses = connect(run), run.row_counts(), [], []
    for det in load_detectors():
        if det.missing(rows):
            statuses.append({"id": det.id, "title": det.title, "status": "not run", "missing": det.missing(rows),
                             "error": None, "findings": 0, "by_severity": {}})
            continue
        t = con.sql(f"""SELECT '{det.id}-' || row_number() OVER () AS finding_id, '{det.id}' AS detector, *,
                               []::VARCHAR[] AS related FROM ({det.sql})""").to_arrow_table()
        t = t.select(FINDING_SCHEMA.names).cast(FINDING_SCHEMA)
        sev = t.column("severity").to_pylist()
        statuses.append({"id": det.id, "title": det.title, "status": "ran", "missing": [], "error": None,
                         "findings": t.num_rows, "by_severity": {s: sev.count(s) for s in set(sev)}})
        tables.append(t)
    return pa.concat_tables(tables), statuses


def full_scan(run) -> float:
    con = connect(run)
    t0 = time.perf_counter()
    for fam, rows in run.row_counts().items():
        if rows:
            con.sql(f"SELECT * FROM {fam}").to_arrow_table()
    return time.perf_counter() - t0


def page_load(driver, page: Path) -> float:
    driver.get("about:blank")
    driver.get(page.as_uri())  # returns after the load event
    nav = driver.execute_script("const t = performance.getEntriesByType('navigation')[0];"
                                "return [t.loadEventEnd, t.domContentLoadedEventEnd];")
    return nav[0] / 1000


def stats(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="balloon pages discarded")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vmemtrace-report"))
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--detect-mem-gib", type=float, default=12.0, help="address-space limit of detect")
    args = ap.parse_args()
    run_dir = args.dir / f"run-{args.events}"
    if args.rebuild and run_dir.exists():
        shutil.rmtree(run_dir)
    if not run_dir.exists():
        t0 = time.perf_counter()
        build(run_dir, args.events, np.random.default_rng(7))
        print(f"built {run_dir} in {time.perf_counter() - t0:.1f} s")
    run = open_run(run_dir)
    events = sum(run.row_counts().values())
    driver = headless_chromium() if shutil.which("chromium") and shutil.which("chromedriver") else None
    times: dict[str, list[float]] = {"full scan": [], "detect": [], "report": [], "page load (Chromium)": []}
    out = run_dir / "report"
    detect_error = None
    for _ in range(args.repeats):
        times["full scan"].append(full_scan(run))
        secs, detect_error = detect(run_dir, args.detect_mem_gib)
        times["detect"].append(secs)
        if detect_error:
            save_findings(run, *unlinked_findings(run))
        findings, statuses = load_findings(run)
        t0 = time.perf_counter()
        page = write_report(run, findings, statuses, out)
        times["report"].append(time.perf_counter() - t0)
        if driver:
            times["page load (Chromium)"].append(page_load(driver, page))
    if driver:
        driver.quit()
    else:
        del times["page load (Chromium)"]
    scan = statistics.median(times["full scan"])
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    result_json = {
        "benchmark": "report_scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "events": events, "findings": findings.num_rows, "repeats": args.repeats,
        "detect_error": detect_error,
        "seconds": {k: stats(v) for k, v in times.items()},
        "ratio_to_full_scan": {k: statistics.median(v) / scan for k, v in times.items()},
        "page_bytes": sizes["index.html"], "files_bytes": sizes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if detect_error:
        print(f"detect FAILED ({detect_error}); report measured on the detectors' output without related links, stored untimed")
    print(f"{events:,} events, {findings.num_rows:,} findings; page {sizes['index.html'] / 2**20:.2f} MiB")
    print(f"{'stage':<22} {'min s':>8} {'median s':>9} {'max s':>8} {'x full scan':>12}")
    for k, v in times.items():
        s = stats(v)
        print(f"{k:<22} {s['min']:>8.3f} {s['median']:>9.3f} {s['max']:>8.3f} {s['median'] / scan:>12.1f}")
    print(f"peak RSS of this process (report, not detect) {result_json['peak_rss_mib']:.0f} MiB")
    print(json.dumps(result_json, indent=2))


if __name__ == "__main__":
    main()
