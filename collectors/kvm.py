"""Collector of KVM memslot updates and dirty-log harvests (ioctls on the VM fd)."""

import numpy as np
import pyarrow as pa

from collectors.base import IOCTL_TRACEPOINTS, Collector, Ring, envelope_columns, labels, nullable, record_dtype
from pipeline.constants import (KVM_CLEAR_DIRTY_LOG, KVM_GET_DIRTY_LOG, KVM_RESET_DIRTY_RINGS,
                                KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2)

DTYPE = record_dtype([("ret", "<i8"), ("cmd", "<u4"), ("fd", "<i4"), ("slot", "<u4"), ("flags", "<u4"),
                      ("gpa", "<u8"), ("size", "<u8"), ("hva", "<u8"), ("gmem_offset", "<u8"),
                      ("gmem_fd", "<i4"), ("pad", "<u4")])

DIRTY_OPS = {KVM_GET_DIRTY_LOG: "kvm_get_dirty_log", KVM_CLEAR_DIRTY_LOG: "kvm_clear_dirty_log",
             KVM_RESET_DIRTY_RINGS: "kvm_reset_dirty_rings"}


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    cmd = rec["cmd"]
    out = {}
    region = (cmd == KVM_SET_USER_MEMORY_REGION) | (cmd == KVM_SET_USER_MEMORY_REGION2)
    if region.any():
        m = rec[region]
        v2 = m["cmd"] == KVM_SET_USER_MEMORY_REGION2
        cols = envelope_columns(m, source)
        cols.update(
            ioctl=labels(("region", "region2"), v2),
            vm_fd=pa.array(m["fd"]),
            as_id=pa.array((m["slot"] >> 16).astype(np.uint16)),
            slot=pa.array((m["slot"] & 0xFFFF).astype(np.uint16)),
            flags=pa.array(m["flags"]),
            gpa=pa.array(m["gpa"]), size=pa.array(m["size"]), hva=pa.array(m["hva"]),
            gmem_fd=nullable(m["gmem_fd"], ~v2), gmem_offset=nullable(m["gmem_offset"], ~v2),
            ret=pa.array(m["ret"]),
        )
        out["memslots"] = pa.table(cols)
    dirty = ~region
    if dirty.any():
        d = rec[dirty]
        codes = np.searchsorted(np.array(sorted(DIRTY_OPS)), d["cmd"])
        has_slot = d["cmd"] != KVM_RESET_DIRTY_RINGS
        clear = d["cmd"] == KVM_CLEAR_DIRTY_LOG
        cols = envelope_columns(d, source)
        cols.update(
            op=labels(tuple(DIRTY_OPS[k] for k in sorted(DIRTY_OPS)), codes),
            fd=pa.array(d["fd"]),
            as_id=nullable((d["slot"] >> 16).astype(np.uint16), ~has_slot),
            slot=nullable((d["slot"] & 0xFFFF).astype(np.uint16), ~has_slot),
            first_page=nullable(d["gpa"], ~clear),
            num_pages=nullable(d["flags"], ~clear),
            ret=pa.array(d["ret"]),
        )
        out["dirty_log"] = pa.table(cols)
    return out


COLLECTOR = Collector(
    name="kvm", families=("memslots", "dirty_log"), source="kvm.bpf.c",
    uses_ioctl=True, requires=IOCTL_TRACEPOINTS,
    # Memslot updates come in tens; dirty-log harvests one per slot per migration pass.
    rings=(Ring("kvm", DTYPE, decode, "kvm.h", "kvm_rec", pages=256, inflight=True),),
)
