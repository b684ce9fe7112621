"""Collector throughput, side by side: vmemtrace vs bpftrace vs perf record vs trace-cmd record.

One C generator issues madvise(MADV_DONTNEED) calls at a paced rate (or as fast as it can) and
reports its own elapsed and CPU time; each tool traces the same calls (entry and exit, with ts,
pid, tid, comm, start, length, advice and return value) with its DEFAULT settings:
  vmemtrace  `vmemtrace collect --families discards -- GEN`: decoded into Parquet
  bpftrace   a two-probe script printf-ing the same fields to a file (-o, -c GEN)
  perf       `perf record` of raw_syscalls:sys_enter/sys_exit filtered to madvise (id 28): perf
             6.1 records nothing from syscalls:sys_enter_madvise on this kernel (perf stat counts 0)
  trace-cmd  `trace-cmd record -F GEN` (the kernel may refuse: "Can't enable ftrace")
and `none` runs the generator untraced. Runs are interleaved (every repeat goes through every
rate and tool, tool order rotated per repeat), 3+ repeats; the table gives min/median/max.

Per tool: the highest offered rate with zero loss in every repeat, the loss at twice that rate,
the workload's slowdown at 100k/s (extra workload CPU per elapsed second, against `none`) and at
full speed (elapsed time of the burst against `none`), the tool's CPU seconds (its process tree
minus the workload) and peak RSS plus the kernel buffers it holds. For vmemtrace also the drain
rate: events per collector CPU second after the compile (decode and Parquet included).

First, the same drain without BPF ("offline"): EVENTS discards records laid out as in a BPF ring
(a memfd), decoded and stored by the session's own code in a fresh process, --repeats times: CPU
ns per event and bytes of Parquet per event, steadier than the live figure on a shared machine.
--profile prints where that CPU time goes (cProfile on CPU time); --offline-batch N publishes N
records between two drains (the live drain's batch size under a flood, to see per-batch costs).

    .venv/bin/python benchmarks/collector_throughput.py [--repeats 3] [--seconds 2]
        [--rates 100000,200000,400000,800000,1600000,3200000] [--burst 3000000]
        [--tools none,vmemtrace,bpftrace,perf,trace-cmd] [--json OUT.json]
        [--offline 3000000] [--offline-batch 0] [--profile]
    (--tools "" runs only the offline drain, which needs no root)

Needs root and the host set-up (make setup-host); installs bpftrace / linux-perf / trace-cmd with
apt-get when one is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYS_MADVISE = 28  # x86-64
GENERATOR_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
/* madvise(MADV_DONTNEED) COUNT times at RATE calls/s (0: as fast as possible). Paced in 1 ms
 * steps with sleeps between, so the CPU time it reports is the cost of its calls. */
int main(int argc, char **argv) {
    long rate = atol(argv[1]), count = atol(argv[2]), n = 0;
    char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double t0 = now();
    while (n < count) {
        long target = count;
        if (rate) {
            target = (long)((now() - t0) * rate) + rate / 1000;
            if (target > count) target = count;
            if (n >= target) { struct timespec s = {0, 200000}; nanosleep(&s, 0); continue; }
        }
        while (n < target) { madvise(p, 4096, MADV_DONTNEED); n++; }
    }
    double el = now() - t0;
    struct rusage u; getrusage(RUSAGE_SELF, &u);
    printf("calls %ld seconds %.6f cpu %.6f\n", n, el,
           u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6);
    return 0;
}
"""
BPFTRACE = """
tracepoint:syscalls:sys_enter_madvise /pid == cpid && (args->behavior == 4 || args->behavior == 8 ||
                                                        args->behavior == 9 || args->behavior == 24)/
{ @ts[tid] = nsecs; @st[tid] = args->start; @ln[tid] = args->len_in; @bh[tid] = args->behavior; }
tracepoint:syscalls:sys_exit_madvise /@ts[tid]/
{ printf("%llu %llu %d %d %s %llx %llu %d %d\\n", @ts[tid], nsecs, pid, tid, comm, @st[tid], @ln[tid],
         @bh[tid], args->ret);
  delete(@ts[tid]); delete(@st[tid]); delete(@ln[tid]); delete(@bh[tid]); }
"""
PACKAGES = {"bpftrace": "bpftrace", "perf": "linux-perf", "trace-cmd": "trace-cmd"}
EVENT_LINE = re.compile(rb"^\d+ \d+ \d+ \d+ .* [0-9a-f]+ \d+ -?\d+ -?\d+$", re.M)


def run_measured(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, float, int]:
    """(result, CPU seconds of the process and the children it waited for, peak RSS KiB of the
    largest of them), from wait4: the tool's own figures, not a high-water mark of earlier runs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, **kw)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        res = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return res, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def generator_output(text: bytes) -> dict:
    m = re.search(rb"calls (\d+) seconds ([\d.]+) cpu ([\d.]+)", text)
    if not m:
        raise RuntimeError(f"the generator printed no summary: {text[-400:]!r}")
    return {"calls": int(m[1]), "seconds": float(m[2]), "workload_cpu": float(m[3])}


def trial(tool: str, gen: Path, rate: int, count: int, work: Path) -> dict:
    argv = [str(gen), str(rate), str(count)]
    out = work / f"{tool}-{rate}-{time.monotonic_ns()}"
    row: dict = {"tool": tool, "rate": rate}
    if tool == "none":
        res, cpu, rss = run_measured(argv)
        g = generator_output(res.stdout)
        return {**row, **g, "captured": g["calls"], "tool_cpu": 0.0, "tool_rss_kib": 0, "kernel_buffer_bytes": 0}
    if tool == "vmemtrace":
        res, cpu, rss = run_measured([sys.executable, "-m", "vmemtrace", "collect", "--run", str(out),
                                      "--families", "discards", "--", *argv], cwd=ROOT)
        g = generator_output(res.stdout)
        session = json.loads((out / "manifest.json").read_text())["sessions"][0]
        captured = session["rows"].get("discards", 0)
        row.update(g, captured=captured, drain_cpu=session["collector_cpu_seconds"],
                   kernel_buffer_bytes=sum(session.get("ring_bytes", {}).values()))
        shutil.rmtree(out, ignore_errors=True)
    elif tool == "bpftrace":
        res, cpu, rss = run_measured(["bpftrace", "-o", str(out), "-c", " ".join(argv), "-e", BPFTRACE])
        g = generator_output(res.stdout)
        data = out.read_bytes()
        # Its default: BPFTRACE_PERF_RB_PAGES=64 pages per CPU.
        row.update(g, captured=len(EVENT_LINE.findall(data)), kernel_buffer_bytes=64 * 4096 * os.cpu_count())
        out.unlink()
    elif tool == "perf":
        filt = f"id == {SYS_MADVISE}"
        res, cpu, rss = run_measured(["perf", "record", "-q", "-o", str(out), "-e", "raw_syscalls:sys_enter",
                                      "--filter", filt, "-e", "raw_syscalls:sys_exit", "--filter", filt, "--", *argv])
        g = generator_output(res.stdout)
        stats = subprocess.run(["perf", "report", "-i", str(out), "--stats"], capture_output=True, text=True).stdout
        samples = [int(x) for x in re.findall(r"^\s*SAMPLE events:\s+(\d+)", stats, re.M)]
        # A call is captured when both its entry and exit samples were kept: at least half the samples.
        row.update(g, captured=min(g["calls"], (samples[0] if samples else 0) // 2),
                   kernel_buffer_bytes=(128 + 1) * 4096 * os.cpu_count())  # perf's default -m for root
        out.unlink(missing_ok=True)
    elif tool == "trace-cmd":
        res, cpu, rss = run_measured(["trace-cmd", "record", "-o", str(out), "-e", "syscalls:sys_enter_madvise",
                                      "-e", "syscalls:sys_exit_madvise", "-F", *argv])
        if b"calls " not in res.stdout:
            reason = (res.stderr.decode(errors="replace").strip().splitlines() or ["no output"])
            return {**row, "refused": " / ".join(line.strip() for line in reason[-2:])}
        g = generator_output(res.stdout)
        report = subprocess.run(["trace-cmd", "report", "-i", str(out)], capture_output=True).stdout
        row.update(g, captured=report.count(b"sys_exit_madvise"), kernel_buffer_bytes=None)
        out.unlink(missing_ok=True)
    else:
        raise ValueError(tool)
    row.update(tool_cpu=max(cpu - row["workload_cpu"], 0.0), tool_rss_kib=rss)
    return row


def offline_drain(events: int, batch: int, profile: bool) -> dict:
    """The collector's drain (collectors/session.py) fed from memory: `events` discards records laid
    out as in a BPF ring buffer (a memfd read by the same RingReader), published `batch` at a time
    (0: all at once), decoded and stored by the session's own code into a run. CPU time of the
    process (getrusage) from the first drain to the closed run; the compile and the first Arrow
    call are start-up, as in `collect`. Runs in a child process of its own (see main)."""
    import cProfile
    import io
    import mmap
    import pstats
    import resource

    import numpy as np

    from collectors import discards
    from collectors.ringbuf import HDR_SIZE, RingReader
    from collectors.session import Collection
    from pipeline.runstore import RunWriter

    ring = discards.COLLECTOR.rings[0]
    stride = (HDR_SIZE + ring.dtype.itemsize + 7) & ~7
    page = mmap.PAGESIZE
    data_size = 1 << (events * stride - 1).bit_length()
    fd = os.memfd_create("ring")
    os.ftruncate(fd, 2 * page + 2 * data_size)  # the reader maps the data twice, as the kernel does; untouched
    area = mmap.mmap(fd, 2 * page + data_size)
    slots = np.frombuffer(area, np.dtype({"names": ["len", "rec"], "formats": ["<u4", ring.dtype],
                                          "offsets": [0, HDR_SIZE], "itemsize": stride}), events, 2 * page)
    # What the generator's calls look like: one thread, one page, ~300 ns apart.
    rec = slots["rec"]
    rec["ts_ns"] = 10**12 + np.cumsum(np.random.default_rng(1).integers(200, 400, events, dtype=np.uint64))
    rec["end_ns"] = rec["ts_ns"] + 150
    rec["pid"] = rec["tid"] = 4242
    rec["comm"] = b"gen"
    rec["start"], rec["len"], rec["advice"], rec["fd"] = 0x7F0000000000, 4096, 4, -1
    slots["len"] = ring.dtype.itemsize
    producer = np.frombuffer(area, "<u8", 1, page)
    del slots, rec
    reader = RingReader(fd, data_size, ring.dtype)
    work = Path(tempfile.mkdtemp(prefix="vmemtrace-offline-"))
    collection = Collection(work / "run", families=["discards"])
    writer = RunWriter(work / "run", source="bpf", kind="collector", chunk_rows=collection.chunk_rows)
    ring.decode(np.zeros(0, ring.dtype), "bpf:discards")

    def drain():
        step = batch or events
        for published in range(step, events + step, step):
            producer[0] = min(published, events) * stride
            collection._drain_ring(ring, discards.COLLECTOR, reader, writer)
        writer.close()

    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    profiler = cProfile.Profile(time.process_time) if profile else None
    if profiler:
        profiler.runcall(drain)
    else:
        drain()
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    chunks = list((work / "run" / "discards").glob("*.parquet"))
    size = sum(c.stat().st_size for c in chunks)
    out = {"events": collection.stats.events.get("discards", 0), "batch": batch, "cpu_s": cpu, "wall_s": wall,
           "ns_per_event": cpu / events * 1e9, "events_per_cpu_s": events / cpu, "chunks": len(chunks),
           "chunk_bytes": size, "chunk_bytes_per_event": size / events, "load_avg": os.getloadavg()[0]}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        out["profile"] = text.getvalue()
    reader.close()
    shutil.rmtree(work)
    return out  # the ring's memory goes with the process


def offline(events: int, batch: int, repeats: int, profile: bool) -> dict:
    """offline_drain in fresh processes, `repeats` times: {trials, summary of ns/event and events/CPU s}.
    With `profile`, one more drain under cProfile first, printed and not counted."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--offline-worker", str(events), str(batch)]
    if profile:
        res = subprocess.run(cmd + ["--profile"], cwd=ROOT, capture_output=True, text=True, check=True)
        print(json.loads(res.stdout)["profile"], file=sys.stderr)
    trials = []
    for _ in range(repeats):
        trial = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        print(json.dumps({"offline": trial}), file=sys.stderr, flush=True)
        trials.append(trial)
    stats = lambda key: {"min": min(t[key] for t in trials), "median": statistics.median(t[key] for t in trials),
                         "max": max(t[key] for t in trials)}
    return {"events": events, "batch": batch, "trials": trials, "ns_per_event": stats("ns_per_event"),
            "events_per_cpu_s": stats("events_per_cpu_s"), "chunk_bytes_per_event": stats("chunk_bytes_per_event")}


def summary(rows: list[dict], rates: list[int], tools: list[str]) -> dict:
    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    def lost(r):
        return r["calls"] - r["captured"]

    base_rows = [r for r in rows if r["tool"] == "none"]
    out = {}
    for tool in tools:
        mine = [r for r in rows if r["tool"] == tool]
        if any("refused" in r for r in mine):
            out[tool] = {"refused": next(r["refused"] for r in mine if "refused" in r)}
            continue
        per_rate = {rate: [r for r in mine if r["rate"] == rate] for rate in rates + [0]}
        clean = [rate for rate in rates if per_rate[rate] and all(lost(r) == 0 for r in per_rate[rate])]
        best = max(clean, default=None)
        double = next((rate for rate in rates if best and rate >= 2 * best), None)
        at = lambda rate, f: stats([f(r) for r in per_rate.get(rate, [])])
        untraced = {rate: statistics.median([r["workload_cpu"] for r in base_rows if r["rate"] == rate] or [0])
                    for rate in rates + [0]}
        untraced_s = statistics.median([r["seconds"] for r in base_rows if r["rate"] == 0] or [1])
        s = {
            "zero_loss_rate": best,
            "loss_pct_at_2x": at(double, lambda r: 100 * lost(r) / r["calls"]) if double else None,
            "at_2x_rate": double,
            "loss_pct_by_rate": {rate or "max": at(rate, lambda r: 100 * lost(r) / r["calls"]) for rate in rates + [0]},
            "slowdown_pct_at_100k": at(100_000, lambda r: 100 * (r["workload_cpu"] - untraced[100_000]) / r["seconds"])
            if 100_000 in rates else None,
            "full_speed_calls_per_s": at(0, lambda r: r["calls"] / r["seconds"]),
            "slowdown_x_at_full_speed": at(0, lambda r: r["seconds"] / untraced_s),
            "tool_cpu_s_at_full_speed": at(0, lambda r: r.get("tool_cpu")),
            "tool_rss_mib": at(0, lambda r: r.get("tool_rss_kib", 0) / 1024),
            "kernel_buffer_mib": at(0, lambda r: (r.get("kernel_buffer_bytes") or 0) / 2**20),
        }
        if tool == "vmemtrace":
            s["drained_events_per_collector_cpu_s"] = at(0, lambda r: r["captured"] / max(r["drain_cpu"], 1e-9))
        out[tool] = s
    return out


def fmt(st, spec="{:.1f}") -> str:
    if st is None:
        return "-"
    return "/".join(spec.format(st[k]) for k in ("min", "median", "max"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each paced run")
    ap.add_argument("--rates", default="100000,200000,400000,800000,1600000,3200000")
    ap.add_argument("--burst", type=int, default=3_000_000, help="calls of the full-speed run")
    ap.add_argument("--tools", default="none,vmemtrace,bpftrace,perf,trace-cmd")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--offline", type=int, default=3_000_000, metavar="EVENTS",
                    help="also drain EVENTS records fed from memory (no BPF), --repeats times; 0: skip")
    ap.add_argument("--offline-batch", type=int, default=0,
                    help="records the offline producer publishes between two drains (0: all at once)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile (CPU time) of one offline drain")
    ap.add_argument("--offline-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.offline_worker:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(offline_drain(*args.offline_worker, args.profile)))
        return
    rates = [int(r) for r in args.rates.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    for tool in tools:
        if tool in PACKAGES and shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", PACKAGES[tool]], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    drained = offline(args.offline, args.offline_batch, args.repeats, args.profile) if args.offline else None
    work = Path(tempfile.mkdtemp(prefix="vmemtrace-bench-"))
    (work / "gen.c").write_text(GENERATOR_C)
    gen = work / "gen"
    subprocess.run(["gcc", "-O2", "-o", str(gen), str(work / "gen.c")], check=True)

    rows: list[dict] = []
    traced = [t for t in tools if t != "none"]
    for rep in range(args.repeats if tools else 0):
        order = traced[rep % len(traced):] + traced[:rep % len(traced)] if traced else []  # rotated
        for rate in rates + [0]:
            count = args.burst if rate == 0 else int(rate * args.seconds)
            for tool in (["none"] if "none" in tools else []) + order:
                if tool == "trace-cmd" and any(r["tool"] == tool and "refused" in r for r in rows):
                    continue  # refused once: the kernel will not change its mind
                row = trial(tool, gen, rate, count, work)
                row["repeat"] = rep
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)

    result = {"machine": {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                          "load_avg_at_end": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"repeats": args.repeats, "seconds": args.seconds, "rates": rates, "burst": args.burst},
              "summary": summary(rows, rates, tools), "trials": rows, "offline_drain": drained}
    print(f"collector throughput, {result['date']}, {result['machine']['kernel']}, {os.cpu_count()} CPUs, "
          f"load {result['machine']['load_avg_at_end'][0]:.1f}; min/median/max of {args.repeats} repeats")
    head = ["tool", "zero-loss rate/s", "loss % at 2x", "slowdown % at 100k/s", "full speed calls/s",
            "slowdown x at full speed", "tool CPU s", "tool RSS MiB", "kernel buf MiB"]
    print(" | ".join(head))
    for tool, s in result["summary"].items():
        if "refused" in s:
            print(f"{tool} | refused: {s['refused']}")
            continue
        print(" | ".join([tool, str(s["zero_loss_rate"] or "none"),
                          fmt(s["loss_pct_at_2x"], "{:.2f}") + (f" (at {s['at_2x_rate']})" if s["at_2x_rate"] else ""),
                          fmt(s["slowdown_pct_at_100k"]), fmt(s["full_speed_calls_per_s"], "{:.0f}"),
                          fmt(s["slowdown_x_at_full_speed"], "{:.2f}"), fmt(s["tool_cpu_s_at_full_speed"], "{:.2f}"),
                          fmt(s["tool_rss_mib"], "{:.0f}"), fmt(s["kernel_buffer_mib"], "{:.1f}")]))
    print("loss % by offered rate (median):")
    for tool, s in result["summary"].items():
        if "loss_pct_by_rate" in s:
            print(f"  {tool}: " + ", ".join(f"{k}: {fmt(v, '{:.2f}').split('/')[1] if v else '-'}"
                                           for k, v in s["loss_pct_by_rate"].items()))
    if "vmemtrace" in result["summary"] and "drained_events_per_collector_cpu_s" in result["summary"]["vmemtrace"]:
        print("vmemtrace drained events per collector CPU second (decode + Parquet), full speed: "
              + fmt(result["summary"]["vmemtrace"]["drained_events_per_collector_cpu_s"], "{:.0f}"))
    if drained:
        print(f"offline drain (the same decode + store fed from memory, {drained['events']} events, batch "
              f"{drained['batch'] or 'all'}): ns per event {fmt(drained['ns_per_event'], '{:.0f}')}, events per CPU "
              f"second {fmt(drained['events_per_cpu_s'], '{:.0f}')}, chunk bytes per event "
              f"{fmt(drained['chunk_bytes_per_event'], '{:.2f}')}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
