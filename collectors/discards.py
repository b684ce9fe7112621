"""Collector of host discards: madvise, process_madvise, fallocate(PUNCH_HOLE)."""

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, envelope_columns, labels, nullable, record_dtype

SYSCALLS = ("madvise", "process_madvise", "fallocate")
FALLOCATE = 2

DTYPE = record_dtype([("start", "<u8"), ("len", "<u8"), ("ret", "<i8"), ("advice", "<i4"),
                      ("fd", "<i4"), ("syscall", "<u4"), ("iov_total", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    sc = rec["syscall"]
    fa = sc == FALLOCATE
    cols = envelope_columns(rec, source)
    cols.update(
        syscall=labels(SYSCALLS, sc),
        hva_start=nullable(rec["start"], fa),
        size=pa.array(rec["len"]),
        advice=nullable(rec["advice"], fa),
        fd=nullable(rec["fd"], sc == 0),
        offset=nullable(rec["start"], ~fa),
        mode=nullable(rec["advice"], ~fa),
        ret=pa.array(rec["ret"]),
    )
    return {"discards": pa.table(cols)}


COLLECTOR = Collector(
    name="discards", families=("discards",), source="discards.bpf.c",
    requires=("syscalls:sys_enter_madvise", "syscalls:sys_exit_madvise", "syscalls:sys_enter_fallocate",
              "syscalls:sys_exit_fallocate", "syscalls:sys_enter_process_madvise",
              "syscalls:sys_exit_process_madvise"),
    # The ring that floods: a balloon inflate of tens of GiB is millions of madvise calls, issued
    # faster than one core drains them. Sized from the benchmark (BENCHMARKS.md "Collectors").
    rings=(Ring("discards", DTYPE, decode, "discards.h", "discard_rec", pages=32768, inflight=True),),
)
