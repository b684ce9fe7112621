"""Collector of host discards: madvise, process_madvise, fallocate(PUNCH_HOLE)."""

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, columns, envelope_columns, labels, nullable, record_dtype

SYSCALLS = ("madvise", "process_madvise", "fallocate")
FALLOCATE = 2

DTYPE = record_dtype([("start", "<u8"), ("len", "<u8"), ("ret", "<i8"), ("advice", "<i4"),
                      ("fd", "<i4"), ("syscall", "<u4"), ("iov_total", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    c = columns(rec)
    sc = c["syscall"]
    fa = sc == FALLOCATE
    cols = envelope_columns(c, source)
    cols.update(
        syscall=labels(SYSCALLS, sc),
        hva_start=nullable(c["start"], fa),
        size=pa.array(c["len"]),
        advice=nullable(c["advice"], fa),
        fd=nullable(c["fd"], sc == 0),
        offset=nullable(c["start"], ~fa),
        mode=nullable(c["advice"], ~fa),
        ret=pa.array(c["ret"]),
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
