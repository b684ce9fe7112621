"""Cost of the run store's write gate (schema.check_rows) against writing the same rows as a chunk.

For batch sizes a collector drain and an importer produce, times in one go (interleaved, --repeats
rounds): (1) check_rows on a discards table, (2) the Parquet chunk write of that table (the
baseline: the work every write does anyway). Prints a table and JSON: min / median / max ms
and the gate's cost as a ratio of the chunk write.

    .venv/bin/python benchmarks/write_gate.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.runstore import conform, write_chunk
from pipeline.schema import FAMILY_BY_NAME, check_rows

SIZES = (1_000, 32_768, 262_144)


def discards(n: int) -> pa.Table:
    r = np.arange(n)
    return pa.table({
        "ts_ns": pa.array(r, pa.int64()), "pid": np.ones(n, np.int32), "tid": np.ones(n, np.int32),
        "comm": pa.repeat(pa.scalar("qemu"), n), "source": pa.repeat(pa.scalar("bpf:discards"), n),
        "syscall": pa.repeat(pa.scalar("madvise"), n), "hva_start": r.astype(np.uint64) * 4096,
        "size": np.full(n, 4096, np.uint64), "advice": np.full(n, 4, np.int32),
        "ret": np.zeros(n, np.int64), "end_ns": pa.array(r + 1, pa.int64())})


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    fam = FAMILY_BY_NAME["discards"]
    out = []
    with tempfile.TemporaryDirectory() as d:
        chunk = Path(d) / "part.parquet"
        for n in SIZES:
            table = discards(n)
            # As the run store writes it: every column of the family, ids assigned.
            stored = conform(fam, table.append_column("event_id", pa.array(np.arange(1, n + 1)))).cast(fam.schema)
            reps = max(1, 200_000 // n)
            gate, write = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                gate.append(timed(lambda: check_rows(fam, table), reps))
                write.append(timed(lambda: write_chunk(chunk, stored, fam.schema), reps))
            out.append({"rows": n, "gate_ms": [min(gate), statistics.median(gate), max(gate)],
                        "chunk_write_ms": [min(write), statistics.median(write), max(write)],
                        "gate_over_write": statistics.median(gate) / statistics.median(write)})
    print(f"{'rows':>8} {'gate ms (min/med/max)':>26} {'chunk write ms (min/med/max)':>32} {'ratio':>6}")
    for r in out:
        g, w = r["gate_ms"], r["chunk_write_ms"]
        print(f"{r['rows']:>8} {g[0]:8.2f}/{g[1]:7.2f}/{g[2]:7.2f} {w[0]:10.2f}/{w[1]:9.2f}/{w[2]:9.2f}"
              f" {r['gate_over_write']:6.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
