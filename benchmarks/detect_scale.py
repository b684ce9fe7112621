"""Detection cost at scale: each detector, the whole `detect`, and a full scan of the same run.

Builds (once per size, under --dir, window by window so 100M events fit) a run of one of two shapes:
- mixed: a ballooning VM with an assigned device: memslots with churn, 64 small DMA mappings (half
  unmapped midway), madvise discards (0.01% under a mapping) each with the MMU-notifier
  invalidation it raises, vCPU faults with pfns, QEMU hint rounds;
- balloon: the same, with one DMA mapping over all guest RAM, so every discard is under it.
Then, interleaved over --repeats rounds, each in a fresh process: a full scan (every column of
every family read once, in DuckDB), the whole `detect` (run_detectors: modules, detectors,
related links), and each detector alone (its modules, then its query under DuckDB's profiler).
Prints a table per size (wall time min/median/max, CPU time, peak RSS, rows read, findings, the
join operators DuckDB ran; a NESTED_LOOP_JOIN or BLOCKWISE_NL_JOIN on event-sized inputs is what
to look for), the load average around each size, the growth per doubling of events between sizes
(each detector's modules + query, the whole detect, the scan; linear is 2.0x) and JSON (--json
FILE to keep it).

    .venv/bin/python benchmarks/detect_scale.py [--events 1000000 10000000 100000000]
        [--shape balloon] [--repeats 3 3 1] [--dir /tmp/vmemtrace-scale] [--json out.json]

--repeats takes one count for every size or one per size (a 100M round takes minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.runstore import RunWriter, open_run  # noqa: E402
from queries.runner import (_run_one, connect, include_modules, load_detectors,  # noqa: E402
                            memory_settings, run_detectors)

PID, TID_IO, TID_VCPU = 1000, 1001, 1010
HVA0, GPA0 = 0x7F0000000000, 0x100000000
SLOTS, SLOT_SIZE = 16, 256 << 20
PAGE = 4096


def envelope(ts, tid, comm, source):
    n = len(ts)
    return {"ts_ns": ts, "pid": np.full(n, PID, np.int32), "tid": np.full(n, tid, np.int32),
            "comm": pa.repeat(pa.scalar(comm), n), "source": pa.repeat(pa.scalar(source), n)}


def build(run: Path, events: int, rng: np.random.Generator, shape: str = "mixed") -> None:
    n_discard = events * 4 // 10
    n_access = events - 2 * n_discard
    span = 600 * 10**9
    with RunWriter(run, source="synthetic", kind="importer", chunk_rows=1_000_000) as w:
        # Memslots: created at start; every 5 s one slot is deleted and re-created in two pieces.
        rows = []
        for s in range(SLOTS):
            rows.append((1000 + s, s, 1, GPA0 + s * SLOT_SIZE, SLOT_SIZE, HVA0 + s * SLOT_SIZE))
        t = 10**9
        while t < span:
            s = int(rng.integers(SLOTS))
            g, h = GPA0 + s * SLOT_SIZE, HVA0 + s * SLOT_SIZE
            rows += [(t, s, 1, g, 0, h), (t + 50_000, s, 1, g, SLOT_SIZE // 2, h),
                     (t + 90_000, 100 + s, 1, g + SLOT_SIZE // 2, SLOT_SIZE // 2, h + SLOT_SIZE // 2),
                     (t + 2 * 10**9, 100 + s, 1, g + SLOT_SIZE // 2, 0, h + SLOT_SIZE // 2),
                     (t + 2 * 10**9 + 10, s, 1, g, 0, h), (t + 2 * 10**9 + 60_000, s, 1, g, SLOT_SIZE, h)]
            t += 5 * 10**9
        ts, slot, flags, gpa, size, hva = map(np.array, zip(*rows))
        w.write("memslots", {**envelope(ts.astype(np.int64), PID, "qemu", "synthetic"),
                             "ioctl": pa.repeat(pa.scalar("region"), len(ts)), "vm_fd": np.full(len(ts), 9, np.int32),
                             "as_id": np.zeros(len(ts), np.uint16), "slot": slot.astype(np.uint16),
                             "flags": flags.astype(np.uint32), "gpa": gpa.astype(np.uint64),
                             "size": size.astype(np.uint64), "hva": hva.astype(np.uint64), "ret": np.zeros(len(ts), np.int64)})

        # DMA, mixed: 64 mappings of 2 MiB in the first slot, half unmapped at 300 s; balloon: one
        # mapping of all guest RAM, never unmapped (a balloon ignoring the inhibit discards under
        # it all run long). iommu:map for each.
        n_map, map_size = (64, 2 << 20) if shape == "mixed" else (1, SLOTS * SLOT_SIZE)
        vaddr = HVA0 + np.arange(n_map, dtype=np.uint64) * map_size
        mts = np.full(n_map, 500, np.int64)
        w.write("dma", {**envelope(mts, PID, "qemu", "synthetic"), "api": pa.repeat(pa.scalar("vfio_type1"), n_map),
                        "op": pa.repeat(pa.scalar("map"), n_map), "fd": np.full(n_map, 20, np.int32),
                        "vaddr": vaddr, "iova": vaddr - HVA0 + GPA0, "size": np.full(n_map, map_size, np.uint64),
                        "flags": np.full(n_map, 3, np.uint32), "ret": np.zeros(n_map, np.int64)})
        w.write("dma", {**envelope(mts + 1, PID, "qemu", "synthetic"), "api": pa.repeat(pa.scalar("iommu"), n_map),
                        "op": pa.repeat(pa.scalar("map"), n_map), "iova": vaddr - HVA0 + GPA0,
                        "paddr": np.arange(n_map, dtype=np.uint64) * map_size + (1 << 32),
                        "size": np.full(n_map, map_size, np.uint64)})
        half = n_map // 2
        if half:
            w.write("dma", {**envelope(np.full(half, 300 * 10**9, np.int64), PID, "qemu", "synthetic"),
                            "api": pa.repeat(pa.scalar("vfio_type1"), half), "op": pa.repeat(pa.scalar("unmap"), half),
                            "fd": np.full(half, 20, np.int32), "iova": (vaddr - HVA0 + GPA0)[:half],
                            "size": np.full(half, map_size, np.uint64), "flags": np.zeros(half, np.uint32),
                            "ret": np.zeros(half, np.int64)})

        # Generated window by window, so that memory stays bounded whatever --events is: a
        # 100M-event run is written as ~20 windows of ~5M events.
        windows = max(1, events // 5_000_000)
        for k in range(windows):
            lo, hi = 10**9 + k * (span - 10**9) // windows, 10**9 + (k + 1) * (span - 10**9) // windows
            nd = n_discard // windows + (n_discard % windows if k == windows - 1 else 0)
            na = n_access // windows + (n_access % windows if k == windows - 1 else 0)

            # Balloon: discards of random guest pages (mixed: 0.01% under the DMA mappings;
            # balloon: all of them), each raising one invalidation inside its syscall.
            ts = np.sort(rng.integers(lo, hi, nd)).astype(np.int64)
            if shape == "balloon":
                page = rng.integers(0, SLOTS * SLOT_SIZE // PAGE, nd).astype(np.uint64)
            else:
                page = rng.integers(n_map * 512, SLOTS * SLOT_SIZE // PAGE, nd).astype(np.uint64)
                hit = rng.random(nd) < 1e-4
                page[hit] = rng.integers(0, n_map * 512, int(hit.sum())).astype(np.uint64)
            hva = HVA0 + page * PAGE
            w.write("discards", {**envelope(ts, TID_IO, "qemu", "synthetic"),
                                 "syscall": pa.repeat(pa.scalar("madvise"), nd),
                                 "hva_start": hva, "size": np.full(nd, PAGE, np.uint64),
                                 "advice": np.full(nd, 4, np.int32), "ret": np.zeros(nd, np.int64),
                                 "end_ns": ts + 2000})
            w.write("mmu_notifier", {**envelope(ts + 1000, TID_IO, "qemu", "synthetic"),
                                     "event": pa.repeat(pa.scalar("unmap_hva_range"), nd),
                                     "hva_start": hva, "hva_end": hva + PAGE})
            del ts, page, hva

            # vCPU faults with pfns at random GPAs.
            ts = np.sort(rng.integers(lo, hi, na)).astype(np.int64)
            gpa = GPA0 + rng.integers(0, SLOTS * SLOT_SIZE // PAGE, na).astype(np.uint64) * PAGE
            w.write("guest_accesses", {**envelope(ts, TID_VCPU, "CPU 0/KVM", "synthetic"),
                                       "via": pa.repeat(pa.scalar("spte_requested"), na), "gpa": gpa,
                                       "write": rng.random(na) < 0.5,
                                       "pfn": rng.integers(1 << 20, 1 << 30, na).astype(np.uint64)})
            del ts, gpa
            w.flush()

        # Migration with free page hinting: a bitmap sync every second, hints in between.
        sync = np.arange(10**9, span, 10**9, dtype=np.int64)
        n_sync = len(sync)
        w.write("qemu", {**envelope(np.concatenate([sync, sync + 50_000_000]), PID, "qemu", "synthetic"),
                         "event": pa.array(["bitmap_sync_start"] * n_sync + ["bitmap_sync_end"] * n_sync)})
        n_hint = 20_000
        hts = np.sort(rng.integers(10**9, span, n_hint)).astype(np.int64)
        w.write("qemu", {**envelope(hts, TID_IO, "qemu", "synthetic"), "event": pa.repeat(pa.scalar("free_page_hint"), n_hint),
                         "hva": HVA0 + rng.integers(0, SLOTS * SLOT_SIZE // PAGE, n_hint).astype(np.uint64) * PAGE,
                         "size": np.full(n_hint, 64 * PAGE, np.uint64)})




def child(run_path: Path, what: str) -> dict:
    """One measurement, in its own process so that its peak RSS is its own: `scan` (every column
    of every family read once), `detect` (the whole of run_detectors: modules, detectors, related
    links) or a detector id (its modules, then its query, profiled)."""
    run = open_run(run_path)
    if what == "scan":
        con = duckdb.connect()
        run.create_views(con)
        t0 = time.perf_counter()
        rows = 0
        for fam, n in run.row_counts().items():
            if n:
                # A hash of every column, so no column is skipped and nothing leaves DuckDB.
                con.execute(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {fam}").fetchall()
                rows += n
        return {"seconds": time.perf_counter() - t0, "rows_read": rows}
    if what == "detect":
        t0 = time.perf_counter()
        result = run_detectors(run)
        return {"seconds": time.perf_counter() - t0, "findings": result.findings.num_rows,
                "per_detector": {s.id: s.seconds for s in result.statuses}}
    det = next(d for d in load_detectors() if d.id == what)
    con = connect(run, include=())
    t0 = time.perf_counter()
    include_modules(con, det.uses)
    t1 = time.perf_counter()
    profile = Path(tempfile.mkdtemp()) / "profile.json"
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute("SET profiling_output = ?", [str(profile)])
    out = _run_one(con, det)
    t2 = time.perf_counter()
    con.execute("PRAGMA disable_profiling")
    prof = json.loads(profile.read_text())
    ops = []

    def walk(node):
        ops.append(node.get("type") or node.get("operator_type"))
        for c in node.get("children", []):
            walk(c)
    for node in prof.get("operator", prof.get("children", [])):
        walk(node)
    return {"modules_seconds": t1 - t0, "seconds": t2 - t1, "findings": out.num_rows,
            "rows_read": prof["query"]["total_rows_scanned"],
            "joins": sorted({o for o in ops if o and "JOIN" in o})}


def measure(run_path: Path, what: str) -> dict:
    """Runs child() in a fresh interpreter; adds its wall time, CPU time and peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", what, "--run", str(run_path)],
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{what} on {run_path} failed (status {status})")
    res = json.loads(out)
    res.update(wall=time.perf_counter() - t0, cpu=usage.ru_utime + usage.ru_stime,
               peak_mib=usage.ru_maxrss / 1024)
    return res


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def bench(run_path: Path, repeats: int) -> dict:
    """Interleaved rounds: scan, whole detect, then each detector alone, `repeats` times."""
    ids = [d.id for d in load_detectors()]
    samples: dict[str, list[dict]] = {k: [] for k in ["scan", "detect", *ids]}
    for _ in range(repeats):
        for what in samples:
            samples[what].append(measure(run_path, what))
    out = {}
    for what, runs in samples.items():
        row = {"seconds": stats([r["seconds"] for r in runs]), "cpu": stats([r["cpu"] for r in runs]),
               "peak_mib": stats([r["peak_mib"] for r in runs])}
        for key in ("rows_read", "findings", "joins"):
            if key in runs[0]:
                row[key] = runs[0][key]
        if "modules_seconds" in runs[0]:
            row["modules_seconds"] = stats([r["modules_seconds"] for r in runs])
        out[what] = row
    out["ratio_detect_to_scan"] = out["detect"]["seconds"]["median"] / out["scan"]["seconds"]["median"]
    return out


def print_table(events: int, shape: str, res: dict) -> None:
    print(f"\n{shape}, {events:,} events (median of the rounds; min-max in brackets)")
    print(f"{'what':<8} {'seconds':>22} {'modules s':>10} {'CPU s':>7} {'peak MiB':>9} {'rows read':>12} "
          f"{'findings':>9}  joins")
    for what, r in res.items():
        if not isinstance(r, dict) or "seconds" not in r:
            continue
        s = r["seconds"]
        mod = f"{r['modules_seconds']['median']:.2f}" if "modules_seconds" in r else ""
        print(f"{what:<8} {s['median']:>8.2f} [{s['min']:.2f}-{s['max']:.2f}] {mod:>10} "
              f"{r['cpu']['median']:>7.2f} {r['peak_mib']['median']:>9.0f} {r.get('rows_read', ''):>12} "
              f"{r.get('findings', ''):>9}  {', '.join(j.replace('_JOIN', '') for j in r.get('joins', []))}")
    print(f"detect / full scan: {res['ratio_detect_to_scan']:.1f}x; {res['repeats']} round(s); load average "
          f"{res['load_average']['before'][0]:.1f} before, {res['load_average']['after'][0]:.1f} after")


def growth(runs: dict) -> dict:
    """Per pair of consecutive sizes, how much each measurement's median wall time grows per
    doubling of events: (t_big / t_small) ** (1 / log2(n_big / n_small)); linear is 2.0. A
    detector counts its modules and its query."""
    sizes = sorted(runs, key=int)
    out = {}
    for small, big in zip(sizes, sizes[1:]):
        doublings = math.log2(int(big) / int(small))

        def total(r):
            return r["seconds"]["median"] + (r["modules_seconds"]["median"] if "modules_seconds" in r else 0)
        out[f"{small}->{big}"] = {
            what: (total(runs[big][what]) / total(runs[small][what])) ** (1 / doublings)
            for what, r in runs[small].items()
            if isinstance(r, dict) and "seconds" in r and total(r) > 0}
    return out


def print_growth(growth_: dict) -> None:
    for pair, per in growth_.items():
        print(f"\ngrowth per doubling of events, {pair} (linear = 2.00x; 1.3x worse than linear = 2.60x):")
        print("  " + "  ".join(f"{what} {g:.2f}x" for what, g in per.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--shape", choices=["mixed", "balloon"], default="mixed")
    ap.add_argument("--repeats", type=int, nargs="+", default=[3],
                    help="rounds per size: one count for all sizes, or one per --events size")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vmemtrace-scale"))
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.run, args.child)))
        return
    results = {"machine": f"{platform.node()} {os.cpu_count()} cores "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "duckdb": duckdb.__version__,
               "shape": args.shape, "memory_settings": memory_settings(), "runs": {}}
    if len(args.repeats) not in (1, len(args.events)):
        ap.error("--repeats takes one count, or one per --events size")
    repeats = dict(zip(args.events, args.repeats * len(args.events) if len(args.repeats) == 1 else args.repeats))
    for events in args.events:
        run = args.dir / f"{args.shape}-{events}"
        if args.rebuild and run.exists():
            shutil.rmtree(run)
        if not run.exists():
            t0 = time.perf_counter()
            build(run, events, np.random.default_rng(7), args.shape)
            print(f"built {run} in {time.perf_counter() - t0:.1f} s")
        counts = open_run(run).row_counts()
        print(f"events: {sum(counts.values()):,} ({', '.join(f'{k} {v:,}' for k, v in counts.items() if v)})")
        load_before = os.getloadavg()
        res = bench(run, repeats[events])
        res.update(repeats=repeats[events], load_average={"before": load_before, "after": os.getloadavg()})
        results["runs"][str(events)] = res
        print_table(events, args.shape, res)
    results["growth_per_doubling"] = growth(results["runs"])
    print_growth(results["growth_per_doubling"])
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
