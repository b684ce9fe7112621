"""Collector throughput: madvise(MADV_DONTNEED) floods at rising rates through `vmemtrace collect`.

Prints, per offered rate: calls made, events captured, events lost, capture rate and the
collector's own CPU time (user + system, from the manifest). A C generator issues the calls so
that the generator, not Python, sets the pace. Needs root and the host set-up (make setup-host).

    .venv/bin/python benchmarks/collector_throughput.py [--seconds 5] [--rates 100000,300000,1000000,0]

Rate 0 means as fast as one core can issue them.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOD_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    long rate = atol(argv[1]); double secs = atof(argv[2]);
    char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double t0 = now(), el; long n = 0;
    while ((el = now() - t0) < secs) {
        long target = rate ? (long)(el * rate) : n + 4096;
        while (n < target) { madvise(p, 4096, MADV_DONTNEED); n++; }
    }
    printf("calls %ld seconds %.3f\n", n, now() - t0);
    return 0;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="100000,300000,1000000,0")
    ap.add_argument("--ring-pages", type=int, default=4096)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmemtrace-bench-"))
    (tmp / "flood.c").write_text(FLOOD_C)
    subprocess.run(["gcc", "-O2", "-o", str(tmp / "flood"), str(tmp / "flood.c")], check=True)

    print(f"{'offered/s':>10} {'calls':>10} {'captured':>10} {'lost':>9} {'captured/s':>11} "
          f"{'loss %':>7} {'collector CPU s':>16}")
    for rate in map(int, args.rates.split(",")):
        run = tmp / f"run-{rate}"
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "collect", "--run", str(run),
                              "--families", "discards", "--ring-pages", str(args.ring_pages), "--",
                              str(tmp / "flood"), str(rate), str(args.seconds)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        calls = int(res.stdout.split()[1])
        secs = float(res.stdout.split()[3])
        manifest = json.loads((run / "manifest.json").read_text())
        session = manifest["sessions"][0]
        captured = session["rows"].get("discards", 0)
        lost = manifest["lost"].get("discards", 0)
        print(f"{rate or 'max':>10} {calls:>10} {captured:>10} {lost:>9} {captured / secs:>11.0f} "
              f"{100 * lost / max(calls, 1):>7.2f} {session['collector_cpu_seconds']:>16.2f}")


if __name__ == "__main__":
    main()
