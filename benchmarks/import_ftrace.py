"""ftrace import speed and memory, against DuckDB reading the same file into Parquet as raw lines.

    python -m benchmarks.import_ftrace [--lines 1000000 10000000] [--repeats 3] [--dir DIR] [--json OUT]

For each size a trace is generated (the mix of a KVM host trace: exits and entries, EPT-violation
page faults, TDP MMU SPTE changes, MMIO, madvise enter/exit, iommu maps, scheduler events the
importer only counts). Each repeat runs, interleaved, in fresh processes: (1) DuckDB `read_csv` of
the file as one VARCHAR column written to Parquet (the baseline), (2) `import_ftrace` into a new
run. Reported per size: min/median/max seconds, lines/s, the import/baseline ratio of medians,
each process's CPU seconds (user + system, from wait4: on a shared machine the CPU ratio says what
the wall ratio cannot), peak RSS (wait4 ru_maxrss) and the 1-minute load average while measuring.
Targets (issue #10): ratio <= 10, >= 1M lines/s on 2 cores, peak RSS <= 1 GB at 10M lines.

With --before TREE (another checkout of the repository, e.g. `git worktree add /tmp/before main`)
each repeat also imports with that tree's code, interleaved with the rest: a before/after on the
same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One cycle of the generated trace; {t} is the line's time, {g} a varying gfn, {v} a vCPU.
CYCLE = (
    " CPU {v}/KVM-{tid}    [00{v}] d..1. {t}: kvm_exit: vcpu {v} reason EPT_VIOLATION rip 0xffffffff81040f72 "
    "info1 0x0000000000000182 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000",
    " CPU {v}/KVM-{tid}    [00{v}] ..... {t}: kvm_page_fault: vcpu {v} rip 0xffffffff81040f72 address "
    "0x00000000{g:05x}000 error_code 0x182",
    " CPU {v}/KVM-{tid}    [00{v}] ..... {t}: kvm_tdp_mmu_spte_changed: as id 0 gfn {g:x} level 1 old_spte 0 "
    "new_spte 6000001{g:05x}b77",
    " CPU {v}/KVM-{tid}    [00{v}] d..1. {t}: kvm_entry: vcpu {v}, rip 0xffffffff81040f72",
    " CPU {v}/KVM-{tid}    [00{v}] ..... {t}: kvm_mmio: mmio write len 4 gpa 0xfee000b0 val 0x0",
    "  qemu-system-x86-1000    [000] ..... {t}: sys_madvise(start: 7f00{g:05x}000, len_in: 1000, behavior: 4)",
    "  qemu-system-x86-1000    [000] ..... {t}: sys_madvise -> 0x0",
    "  qemu-system-x86-1000    [000] ..... {t}: map: IOMMU: iova=0x00000000{g:05x}000 - 0x00000000{g:05x}fff "
    "paddr=0x0000000{g:05x}000 size=4096",
    "          <idle>-0       [001] d..2. {t}: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 "
    "prev_state=R ==> next_comm=CPU 0/KVM next_pid=1010 next_prio=120",
    " CPU {v}/KVM-{tid}    [00{v}] ..... {t}: kvm_userspace_exit: reason KVM_EXIT_MMIO (6)",
)


def generate(path: Path, lines: int) -> None:
    header = "# tracer: nop\n#\n"
    with open(path, "w") as fh:
        fh.write(header)
        block = []
        for i in range(lines):
            v = (i // len(CYCLE)) % 4
            t = f"{1000 + i // 1000}.{(i % 1000) * 1000:06d}"
            block.append(CYCLE[i % len(CYCLE)].format(v=v, tid=1010 + v, t=t, g=(i * 7) % 0x100000))
            if len(block) == 100_000:
                fh.write("\n".join(block) + "\n")
                block.clear()
        if block:
            fh.write("\n".join(block) + "\n")


BASELINE = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
con.execute(f"COPY (SELECT * FROM read_csv('{sys.argv[1]}', columns={{'line': 'VARCHAR'}}, header=false, "
            f"delim='\\x01', quote='', escape='', auto_detect=false)) TO '{sys.argv[2]}' (FORMAT parquet)")
"""

IMPORT = """
import sys
from pathlib import Path
from pipeline.importers.ftrace import import_ftrace
import_ftrace([Path(sys.argv[1])], Path(sys.argv[2]), trace_clock="mono")
"""


def timed(code: str, *args: str, tree: Path = ROOT) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (bytes) of `python -c code args` in a fresh process
    whose imports come from `tree`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=tree)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"benchmark step failed ({status}): {code.strip().splitlines()[-1]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the generated traces")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--before", type=Path, default=None, help="also import with the code of this tree")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ftrace-", dir=args.dir))
    results = []
    try:
        for n in args.lines:
            trace = work / f"trace-{n}.txt"
            generate(trace, n)
            base, imp, base_cpu, imp_cpu, base_rss, imp_rss, load = [], [], [], [], [], [], []
            old, old_cpu, old_rss = [], [], []
            for r in range(args.repeats):
                load.append(os.getloadavg()[0])
                out = work / f"lines-{r}.parquet"
                s, cpu, rss = timed(BASELINE, str(trace), str(out))
                base.append(s)
                base_cpu.append(cpu)
                base_rss.append(rss)
                out.unlink()
                run = work / f"run-{r}"
                s, cpu, rss = timed(IMPORT, str(trace), str(run))
                imp.append(s)
                imp_cpu.append(cpu)
                imp_rss.append(rss)
                shutil.rmtree(run)
                if args.before:
                    s, cpu, rss = timed(IMPORT, str(trace), str(run), tree=args.before.resolve())
                    old.append(s)
                    old_cpu.append(cpu)
                    old_rss.append(rss)
                    shutil.rmtree(run)
            results.append({
                "lines": n, "bytes": trace.stat().st_size, "repeats": args.repeats,
                "duckdb_raw_lines_s": {"min": min(base), "median": statistics.median(base), "max": max(base)},
                "import_s": {"min": min(imp), "median": statistics.median(imp), "max": max(imp)},
                "ratio_median": statistics.median(imp) / statistics.median(base),
                "cpu_s": {"duckdb": statistics.median(base_cpu), "import": statistics.median(imp_cpu)},
                "cpu_ratio_median": statistics.median(imp_cpu) / statistics.median(base_cpu),
                "import_lines_per_s": n / statistics.median(imp),
                "import_lines_per_cpu_s": n / statistics.median(imp_cpu),
                "load_avg_1m": {"min": min(load), "max": max(load)},
                "peak_rss_bytes": {"duckdb": max(base_rss), "import": max(imp_rss)},
            })
            if old:
                results[-1]["before"] = {
                    "tree": str(args.before), "import_s": {"min": min(old), "median": statistics.median(old),
                                                           "max": max(old)},
                    "cpu_s": statistics.median(old_cpu), "peak_rss_bytes": max(old_rss),
                    "ratio_median": statistics.median(old) / statistics.median(base),
                    "cpu_ratio_median": statistics.median(old_cpu) / statistics.median(base_cpu)}
            trace.unlink()
            print(json.dumps(results[-1]), flush=True)  # each size as soon as it is measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'lines':>11} {'duckdb s (min/med/max)':>24} {'import s (min/med/max)':>24} {'ratio':>6} "
          f"{'CPU s duckdb/import':>20} {'CPU ratio':>9} {'lines/s':>10} {'RSS MB':>7} {'load':>9}")
    for r in results:
        b, i, c, ld = r["duckdb_raw_lines_s"], r["import_s"], r["cpu_s"], r["load_avg_1m"]
        print(f"{r['lines']:>11,} {b['min']:7.2f}/{b['median']:7.2f}/{b['max']:7.2f} "
              f"{i['min']:7.2f}/{i['median']:7.2f}/{i['max']:7.2f} {r['ratio_median']:6.1f} "
              f"{c['duckdb']:9.1f}/{c['import']:9.1f} {r['cpu_ratio_median']:9.1f} "
              f"{r['import_lines_per_s']:10,.0f} {r['peak_rss_bytes']['import'] / 2**20:7.0f} "
              f"{ld['min']:4.1f}-{ld['max']:<4.1f}")
        if "before" in r:
            o = r["before"]["import_s"]
            print(f"{'  before':>11} {'':>24} {o['min']:7.2f}/{o['median']:7.2f}/{o['max']:7.2f} "
                  f"{r['before']['ratio_median']:6.1f} {c['duckdb']:9.1f}/{r['before']['cpu_s']:9.1f} "
                  f"{r['before']['cpu_ratio_median']:9.1f} {r['lines'] / o['median']:10,.0f} "
                  f"{r['before']['peak_rss_bytes'] / 2**20:7.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
