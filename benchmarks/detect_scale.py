"""Detector cost on a large synthetic run: time per detector and the join operators DuckDB chose.

Builds (once, under --dir) a run shaped like a ballooning VM with an assigned device:
memslots with churn, DMA mappings, madvise discards each with the MMU-notifier invalidation it
raises, vCPU faults with pfns, QEMU hint rounds. Then runs every detector and prints its wall
time, findings and the join operators of its plan; a NESTED_LOOP_JOIN or BLOCKWISE_NL_JOIN on
event-sized inputs is what to look for.

    .venv/bin/python benchmarks/detect_scale.py [--events 10000000] [--dir /tmp/vmemtrace-scale]
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.runstore import RunWriter, open_run
from queries.runner import connect, load_detectors

PID, TID_IO, TID_VCPU = 1000, 1001, 1010
HVA0, GPA0 = 0x7F0000000000, 0x100000000
SLOTS, SLOT_SIZE = 16, 256 << 20
PAGE = 4096


def envelope(ts, tid, comm, source):
    n = len(ts)
    return {"ts_ns": ts, "pid": np.full(n, PID, np.int32), "tid": np.full(n, tid, np.int32),
            "comm": pa.repeat(pa.scalar(comm), n), "source": pa.repeat(pa.scalar(source), n)}


def build(run: Path, events: int, rng: np.random.Generator) -> None:
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

        # DMA: 64 mappings of 2 MiB in the first slot, half unmapped at 300 s; iommu:map for each.
        n_map = 64
        vaddr = HVA0 + np.arange(n_map, dtype=np.uint64) * (2 << 20)
        mts = np.full(n_map, 500, np.int64)
        w.write("dma", {**envelope(mts, PID, "qemu", "synthetic"), "api": pa.repeat(pa.scalar("vfio_type1"), n_map),
                        "op": pa.repeat(pa.scalar("map"), n_map), "fd": np.full(n_map, 20, np.int32),
                        "vaddr": vaddr, "iova": vaddr - HVA0 + GPA0, "size": np.full(n_map, 2 << 20, np.uint64),
                        "flags": np.full(n_map, 3, np.uint32), "ret": np.zeros(n_map, np.int64)})
        w.write("dma", {**envelope(mts + 1, PID, "qemu", "synthetic"), "api": pa.repeat(pa.scalar("iommu"), n_map),
                        "op": pa.repeat(pa.scalar("map"), n_map), "iova": vaddr - HVA0 + GPA0,
                        "paddr": np.arange(n_map, dtype=np.uint64) * (2 << 20) + (1 << 32),
                        "size": np.full(n_map, 2 << 20, np.uint64)})
        half = n_map // 2
        w.write("dma", {**envelope(np.full(half, 300 * 10**9, np.int64), PID, "qemu", "synthetic"),
                        "api": pa.repeat(pa.scalar("vfio_type1"), half), "op": pa.repeat(pa.scalar("unmap"), half),
                        "fd": np.full(half, 20, np.int32), "iova": (vaddr - HVA0 + GPA0)[:half],
                        "size": np.full(half, 2 << 20, np.uint64), "flags": np.zeros(half, np.uint32),
                        "ret": np.zeros(half, np.int64)})

        # Generated window by window, so that memory stays bounded whatever --events is: a
        # 100M-event run is written as ~20 windows of ~5M events.
        windows = max(1, events // 5_000_000)
        for k in range(windows):
            lo, hi = 10**9 + k * (span - 10**9) // windows, 10**9 + (k + 1) * (span - 10**9) // windows
            nd = n_discard // windows + (n_discard % windows if k == windows - 1 else 0)
            na = n_access // windows + (n_access % windows if k == windows - 1 else 0)

            # Balloon: discards of random guest pages (0.01% under the DMA mappings), each raising
            # one invalidation inside its syscall.
            ts = np.sort(rng.integers(lo, hi, nd)).astype(np.int64)
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
            del ts, page, hit, hva

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


def joins(con, sql: str) -> list[str]:
    plan = "\n".join(str(r[1]) for r in con.execute("EXPLAIN " + sql).fetchall())
    return sorted(set(re.findall(r"─ ([A-Za-z ]*Join) ─", plan)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vmemtrace-scale"))
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    run = args.dir / f"run-{args.events}"
    if args.rebuild and run.exists():
        shutil.rmtree(run)
    if not run.exists():
        t0 = time.perf_counter()
        build(run, args.events, np.random.default_rng(7))
        print(f"built {run} in {time.perf_counter() - t0:.1f} s")
    r = open_run(run)
    print(f"events: {sum(r.row_counts().values()):,} ({', '.join(f'{k} {v:,}' for k, v in r.row_counts().items() if v)})")
    con = connect(r)
    print(f"{'detector':<9} {'seconds':>8} {'findings':>9}  joins in the plan")
    for det in load_detectors():
        t0 = time.perf_counter()
        n = con.execute(f"SELECT count(*) FROM ({det.sql})").fetchone()[0]
        secs = time.perf_counter() - t0
        print(f"{det.id:<9} {secs:>8.2f} {n:>9,}  {', '.join(joins(con, det.sql))}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
