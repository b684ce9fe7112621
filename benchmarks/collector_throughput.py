"""Collector throughput: madvise(MADV_DONTNEED) floods at rising rates through `vmemtrace collect`.

Prints, per offered rate: calls made, events captured, events lost, capture rate and the
collector's own CPU time (user + system, from the manifest). A C generator issues the calls so
that the generator, not Python, sets the pace. Needs root and the host set-up (make setup-host).

    .venv/bin/python benchmarks/collector_throughput.py [--seconds 5] [--rates 100000,300000,1000000,0]
        [--generators N]

Rate 0 means as fast as the generators can issue them; N generator processes share the rate
(one generator core tops out below 1M calls/s with the probes attached).
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
    ap.add_argument("--generators", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmemtrace-bench-"))
    (tmp / "flood.c").write_text(FLOOD_C)
    subprocess.run(["gcc", "-O2", "-o", str(tmp / "flood"), str(tmp / "flood.c")], check=True)

    print(f"{'offered/s':>10} {'calls':>10} {'captured':>10} {'lost':>9} {'captured/s':>11} "
          f"{'loss %':>7} {'collector CPU s':>16}")
    for rate in map(int, args.rates.split(",")):
        run = tmp / f"run-{rate}"
        n = args.generators
        flood = f"{tmp / 'flood'} {rate // n} {args.seconds}"
        res = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run),
                              "--families", "discards", "--ring-pages", str(args.ring_pages), "--",
                              "/bin/sh", "-c", " & ".join([flood] * n) + "; wait"],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        lines = [line.split() for line in res.stdout.splitlines() if line.startswith("calls ")]
        calls = sum(int(w[1]) for w in lines)
        secs = max(float(w[3]) for w in lines)
        manifest = json.loads((run / "manifest.json").read_text())
        session = manifest["sessions"][0]
        captured = session["rows"].get("discards", 0)
        lost = manifest["lost"].get("discards", 0)
        print(f"{rate or 'max':>10} {calls:>10} {captured:>10} {lost:>9} {captured / secs:>11.0f} "
              f"{100 * lost / max(calls, 1):>7.2f} {session['collector_cpu_seconds']:>16.2f}")


if __name__ == "__main__":
    main()
