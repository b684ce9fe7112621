"""Collector of vCPU threads inside KVM_RUN: one `vcpu_runs` row (op run) per KVM_RUN ioctl."""

import numpy as np
import pyarrow as pa

from collectors.base import IOCTL_TRACEPOINTS, Collector, Ring, columns, constant, envelope_columns, record_dtype

DTYPE = record_dtype([("ret", "<i8"), ("vcpu_fd", "<i4"), ("pad", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    c = columns(rec)
    cols = envelope_columns(c, source)
    cols.update(op=constant("run", len(c["ts_ns"])), vcpu_fd=pa.array(c["vcpu_fd"]),
                ret=pa.array(c["ret"]))
    return {"vcpu_runs": pa.table(cols)}


COLLECTOR = Collector(
    name="vcpu_run", families=("vcpu_runs",), source="vcpu_run.bpf.c", uses_ioctl=True,
    requires=IOCTL_TRACEPOINTS,
    # An exit-heavy guest returns to user space ~100k times per second per vCPU.
    rings=(Ring("vcpu_run", DTYPE, decode, "vcpu_run.h", "vcpu_run_rec", pages=4096, inflight=True),),
)
