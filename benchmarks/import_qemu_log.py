"""QEMU trace log import: speed and memory against DuckDB reading the same file, in one run.

For each size (lines), a synthetic `-msg timestamp=on` log is generated once under --dir with the
catalogue's events in realistic proportions (vCPU exits and KVM_RUN enters, balloon pages, memslot
updates, VFIO listener maps, RAM discards, PCI config writes) and one unknown event in eight.
Each repeat then runs, interleaved and each in a fresh process:

- scan:   DuckDB reads the file as raw lines (read_csv, one VARCHAR column) and writes them to
          Parquet: the floor any importer is measured against;
- import: `import_qemu_log` into a new run.

Reported per size: min / median / max wall seconds of both, the ratio import / scan (medians;
target <= 10), import lines per second (target >= 1,000,000 on 2 cores), the import's peak
RSS (target <= 1 GB at 10M lines), and CPU seconds of both (user + system, from wait4): on a
shared, loaded machine the CPU ratio says what the wall ratio cannot. A table on stdout, the same as JSON with --json FILE.

    .venv/bin/python benchmarks/import_qemu_log.py [--sizes 1000000,10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LINES = (
    "kvm_run_exit cpu_index {c}, reason 2",
    "kvm_vcpu_ioctl cpu_index {c}, type 0xae80, arg (nil)",
    "virtio_balloon_handle_output section name: pc.ram gpa: 0x{g:x}",
    "kvm_set_user_memory AddrSpace#0 Slot#{c} flags=0x0 gpa=0x{g:x} size=0x200000 ua=0x7f3b17a00000 ret=0",
    "vfio_listener_region_add_ram region_add [ram] 0x{g:x} - 0x{e:x} [0x7f3b17b00000]",
    "ram_block_discard_range pc.ram@0x7f8aefe00000 + 0x1000: madvise: 1 fallocate: 0 ret: 0",
    "virtio_queue_notify vdev 0x55d0c8a3e2a0 n 0 vq 0x55d0c8a3e2b0",
    "pci_cfg_write virtio-net-pci 00:03.0 @0x4 <- 0x507",
)

SCAN = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(
    "COPY (SELECT * FROM read_csv(?, columns={'line': 'VARCHAR'}, delim=chr(1), quote='', escape='', "
    "header=false, auto_detect=false)) TO '" + sys.argv[2] + "' (FORMAT parquet)", [sys.argv[1]])
"""
IMPORT = """
import sys
from pathlib import Path
from pipeline.importers.qemu_log import import_qemu_log
import_qemu_log([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def generate(path: Path, lines: int) -> None:
    """The log, written in blocks; thread ids and GPAs vary, times advance 1 us a line."""
    if path.exists() and path.stat().st_size > 0:
        return
    tmp = path.with_suffix(".tmp")
    base = 1795262400
    with open(tmp, "w", buffering=1 << 22) as f:
        block = []
        for i in range(lines):
            g = (i * 4096) & 0xFFFFFFFFFF
            block.append(f"{4000 + i % 4}@{base + i // 1_000_000}.{i % 1_000_000:06d}:"
                         + LINES[i % len(LINES)].format(c=i % 4, g=g, e=g + 4095) + "\n")
            if len(block) == 100_000:
                f.write("".join(block))
                block.clear()
        f.write("".join(block))
    tmp.rename(path)


def timed(code: str, *args: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of a fresh Python process running `code`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark step failed: {code.strip().splitlines()[-1]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated line counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vmemtrace-bench-qemu-log"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    results = []
    for lines in (int(s) for s in args.sizes.split(",")):
        log = args.dir / f"qemu-{lines}.log"
        generate(log, lines)
        scan, imp, rss, scan_cpu, imp_cpu, load = [], [], [], [], [], []
        for _ in range(args.repeats):   # interleaved: both see the same machine load
            load.append(os.getloadavg()[0])
            out = args.dir / "scan.parquet"
            out.unlink(missing_ok=True)
            wall, cpu, _ = timed(SCAN, str(log), str(out))
            scan.append(wall)
            scan_cpu.append(cpu)
            run = args.dir / "run"
            shutil.rmtree(run, ignore_errors=True)
            wall, cpu, peak = timed(IMPORT, str(log), str(run))
            imp.append(wall)
            imp_cpu.append(cpu)
            rss.append(peak)
        shutil.rmtree(args.dir / "run", ignore_errors=True)
        results.append({
            "lines": lines, "bytes": log.stat().st_size, "repeats": args.repeats, "cpus": os.cpu_count(),
            "scan_s": {"min": min(scan), "median": statistics.median(scan), "max": max(scan)},
            "import_s": {"min": min(imp), "median": statistics.median(imp), "max": max(imp)},
            "ratio": statistics.median(imp) / statistics.median(scan),
            "scan_cpu_s": statistics.median(scan_cpu), "import_cpu_s": statistics.median(imp_cpu),
            "cpu_ratio": statistics.median(imp_cpu) / statistics.median(scan_cpu),
            "lines_per_s": lines / statistics.median(imp),
            "lines_per_cpu_s": lines / statistics.median(imp_cpu),
            "peak_rss_mb": max(rss),
            "load_avg_1m": {"min": min(load), "max": max(load)},
        })
    print(f"{'lines':>10} {'scan s (min/med/max)':>24} {'import s (min/med/max)':>26} {'ratio':>6} "
          f"{'lines/s':>10} {'peak RSS MB':>11} {'CPU s scan/import':>18} {'CPU ratio':>9} {'load':>9}")
    for r in results:
        s, i = r["scan_s"], r["import_s"]
        print(f"{r['lines']:>10} {s['min']:>7.2f}/{s['median']:>7.2f}/{s['max']:>7.2f} "
              f"{i['min']:>8.2f}/{i['median']:>8.2f}/{i['max']:>8.2f} {r['ratio']:>6.1f} "
              f"{r['lines_per_s']:>10.0f} {r['peak_rss_mb']:>11.0f} {r['scan_cpu_s']:>8.1f}/{r['import_cpu_s']:>9.1f} "
              f"{r['cpu_ratio']:>9.1f} {r['load_avg_1m']['min']:4.1f}-{r['load_avg_1m']['max']:<4.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
