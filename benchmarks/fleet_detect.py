"""Fleet detection on a local Ray cluster against a sequential loop, in one run.

Builds (under --dir) N runs: copies of the bundled real runs, each given its own host name, and
synthetic runs of several sizes. Then, alternating the order over --repeats rounds, detects them all
(1) one after another in this process with the same per-run function the Ray tasks run, and
(2) with `fleet_detect` on a local Ray cluster of this machine's cores; and times `fleet summary`
over the lake. Prints a table and JSON: runs/s, speed-up, peak RSS of the driver and of the
busiest Ray worker.

    .venv/bin/python benchmarks/fleet_detect.py [--runs 1000] [--repeats 3] [--dir /tmp/vmemtrace-fleet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.runstore import RunWriter
from vmemtrace.fleet.detect import detect_run, discover, fleet_detect
from vmemtrace.fleet.summary import summary

REAL = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real"
SYNTHETIC_SIZES = (10_000, 50_000, 200_000)


def synthetic(run: Path, events: int, rng: np.random.Generator) -> None:
    """A VM that discards pages under memslots and faults them back: discards, invalidations, accesses."""
    n = events // 3
    ts = np.sort(rng.integers(10**9, 60 * 10**9, n)).astype(np.int64)
    hva = (0x7F0000000000 + rng.integers(0, 1 << 18, n) * 4096).astype(np.uint64)

    def env(k, tid):
        return {"ts_ns": ts[:k], "pid": np.full(k, 4242, np.int32), "tid": np.full(k, tid, np.int32),
                "comm": pa.repeat(pa.scalar("qemu-system-x86"), k), "source": pa.repeat(pa.scalar("synthetic"), k)}

    with RunWriter(run, source="synthetic", kind="importer") as w:
        w.write("memslots", {**env(1, 4242), "ts_ns": np.array([0], np.int64), "ioctl": ["region"],
                             "vm_fd": np.array([9], np.int32), "as_id": np.array([0], np.uint16),
                             "slot": np.array([0], np.uint16), "flags": np.array([0], np.uint32),
                             "gpa": np.array([0], np.uint64), "size": np.array([1 << 30], np.uint64),
                             "hva": np.array([0x7F0000000000], np.uint64), "ret": np.array([0], np.int64)})
        w.write("discards", {**env(n, 4243), "syscall": pa.repeat(pa.scalar("madvise"), n), "hva_start": hva,
                             "size": np.full(n, 4096, np.uint64), "advice": np.full(n, 4, np.int32),
                             "ret": np.zeros(n, np.int64), "end_ns": ts + 1000})
        w.write("mmu_notifier", {**env(n, 4243), "ts_ns": ts + 500,
                                 "event": pa.repeat(pa.scalar("unmap_hva_range"), n),
                                 "hva_start": hva, "hva_end": hva + np.uint64(4096)})
        w.write("guest_accesses", {**env(n, 4250), "ts_ns": ts + 10**6,
                                   "via": pa.repeat(pa.scalar("page_fault"), n),
                                   "gpa": hva - np.uint64(0x7F0000000000), "write": np.ones(n, bool)})


def build(root: Path, runs: int) -> None:
    rng = np.random.default_rng(7)
    real = [p for p in sorted(REAL.glob("*/run")) if p.parent.name != "balloon"]
    n_synth = max(1, runs // 20)
    n_balloon = max(1, runs // 20)
    for i in range(runs - n_synth - n_balloon):
        src = real[i % len(real)]
        dst = root / f"host{i % 40:02d}" / f"{src.parent.name}-{i:04d}"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("findings", "report"))
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["host"]["hostname"] = f"host{i % 40:02d}"
        (dst / "manifest.json").write_text(json.dumps(manifest))
    for i in range(n_balloon):
        dst = root / "balloon" / f"balloon-{i:04d}"
        shutil.copytree(REAL / "balloon" / "run", dst, ignore=shutil.ignore_patterns("findings", "report"))
    for i in range(n_synth):
        synthetic(root / "synthetic" / f"synthetic-{i:04d}", SYNTHETIC_SIZES[i % len(SYNTHETIC_SIZES)], rng)


def sequential(sources, lake: Path) -> float:
    t0 = time.perf_counter()
    for s in sources:
        detect_run(s, str(lake))
    return time.perf_counter() - t0


def with_ray(sources, lake: Path) -> float:
    t0 = time.perf_counter()
    fleet_detect(sources, lake)
    return time.perf_counter() - t0


def worker_peak_rss_mib() -> float:
    """Largest peak RSS among this machine's Ray worker processes (from /proc, while they live)."""
    best = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if "ray::" in text.split("\n", 1)[0] or "ray::" in (status.parent / "cmdline").read_bytes().decode(errors="replace"):
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
    return best / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vmemtrace-fleet"))
    args = ap.parse_args()
    runs_dir = args.dir / f"runs-{args.runs}"
    if not runs_dir.exists():
        build(runs_dir, args.runs)
    sources = discover([str(runs_dir)])
    assert len(sources) == args.runs, (len(sources), args.runs)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    times = {"sequential": [], "ray": []}
    summary_s = []
    worker_rss = 0.0
    for r in range(args.repeats):
        order = ("sequential", "ray") if r % 2 == 0 else ("ray", "sequential")
        for kind in order:
            lake = args.dir / f"lake-{kind}"
            shutil.rmtree(lake, ignore_errors=True)
            times[kind].append((sequential if kind == "sequential" else with_ray)(sources, lake))
            if kind == "ray":
                worker_rss = max(worker_rss, worker_peak_rss_mib())
                t0 = time.perf_counter()
                summary(lake)
                summary_s.append(time.perf_counter() - t0)

    def stats(xs):
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}

    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs, "repeats": args.repeats, "ray_cpus": cpus,
        "sequential_s": stats(times["sequential"]), "ray_s": stats(times["ray"]),
        "sequential_runs_per_s": args.runs / statistics.median(times["sequential"]),
        "ray_runs_per_s": args.runs / statistics.median(times["ray"]),
        "speedup_median": statistics.median(times["sequential"]) / statistics.median(times["ray"]),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ray_worker_peak_rss_mib": worker_rss,
        "summary_s": stats(summary_s),
    }
    print(f"{'':<12}{'min s':>9}{'median s':>10}{'max s':>9}{'runs/s':>9}")
    for kind in ("sequential", "ray"):
        st = result[f"{kind}_s"]
        print(f"{kind:<12}{st['min']:>9.1f}{st['median']:>10.1f}{st['max']:>9.1f}{result[f'{kind}_runs_per_s']:>9.1f}")
    print(f"speed-up (median): {result['speedup_median']:.2f}x on {cpus} Ray CPUs; "
          f"fleet summary {result['summary_s']['median']:.2f} s; worker peak RSS {worker_rss:.0f} MiB")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
