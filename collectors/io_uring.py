"""Collector of io_uring registered buffers: long-term pins of user memory, as `dma` rows (api io_uring).

A map row is one pinned buffer (vaddr = iov_base, size = iov_len, buf_index, fd = the ring);
an unmap row ends the pin of one index (a BUFFERS_UPDATE replacing it) or, with buf_index null,
of every buffer of the ring (IORING_UNREGISTER_BUFFERS). There is no IOVA: the kernel reads the
pages directly.
"""

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, constant, envelope_columns, labels, nullable, record_dtype

NO_INDEX = 0xFFFFFFFF

DTYPE = record_dtype([("ret", "<i8"), ("arg", "<u8"), ("vaddr", "<u8"), ("len", "<u8"), ("opcode", "<u4"),
                      ("fd", "<i4"), ("nr", "<u4"), ("index", "<u4"), ("unmap", "<u4"), ("iov_total", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    unmap = rec["unmap"] == 1
    cols = envelope_columns(rec, source)
    cols.update(
        api=constant("io_uring", len(rec)),
        op=labels(("map", "unmap"), unmap),
        fd=pa.array(rec["fd"]),
        vaddr=nullable(rec["vaddr"], unmap),
        size=nullable(rec["len"], unmap),
        buf_index=nullable(rec["index"], rec["index"] == NO_INDEX),
        ret=pa.array(rec["ret"]),
    )
    return {"dma": pa.table(cols)}


COLLECTOR = Collector(
    name="io_uring", families=("dma",), source="io_uring.bpf.c",
    requires=("syscalls:sys_enter_io_uring_register", "syscalls:sys_exit_io_uring_register"),
    # Registrations are rare; one call may name up to 1024 buffers (records), hence a few pages.
    rings=(Ring("io_uring", DTYPE, decode, "io_uring.h", "io_uring_rec", pages=256, inflight=True),),
)
