"""Collector of guest accesses the host kernel exposes: faults, SPTEs with pfns, dirty ring, MMIO.

Also KVM's own invalidations (spte_zap, and spte_changed to a non-present SPTE, whose pfn is
null): rows of this family, but not accesses; detectors tell them apart by via and pfn.
"""

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, columns, envelope_columns, labels, nullable, record_dtype

# Order matters: accesses.bpf.c stores the index.
VIA = ("page_fault", "spte_requested", "spte_set", "spte_changed", "dirty_ring_push", "mmio", "userspace_exit",
       "spte_zap")
NONE64 = np.uint64(0xFFFFFFFFFFFFFFFF)

DTYPE = record_dtype([("gpa", "<u8"), ("pfn", "<u8"), ("error_code", "<u8"), ("page_offset", "<u8"),
                      ("via", "<u4"), ("vcpu", "<i4"), ("slot", "<u4"), ("level", "u1"), ("write", "u1"),
                      ("as_id", "u1"), ("pad", "u1")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    c = columns(rec)
    via = c["via"]
    write = c["write"]
    cols = envelope_columns(c, source, with_end=False)
    cols.update(
        via=labels(VIA, via),
        vcpu=nullable(c["vcpu"], c["vcpu"] < 0),
        gpa=nullable(c["gpa"], c["gpa"] == NONE64),
        write=nullable(write == 1, write == 2),
        pfn=nullable(c["pfn"], c["pfn"] == NONE64),
        as_id=nullable(c["as_id"].astype(np.uint16), c["as_id"] == 0xFF),
        slot=nullable((c["slot"] & 0xFFFF).astype(np.uint16), c["slot"] == 0xFFFFFFFF),
        level=nullable(c["level"], c["level"] == 0),
        error_code=nullable(c["error_code"], (via != 0) & (via != 6)),
        page_offset=nullable(c["page_offset"], c["page_offset"] == NONE64),
    )
    return {"guest_accesses": pa.table(cols)}


COLLECTOR = Collector(
    name="accesses", families=("guest_accesses",), source="accesses.bpf.c",
    tracepoints=("kvm:kvm_page_fault", "kvmmmu:kvm_mmu_spte_requested", "kvmmmu:kvm_mmu_set_spte",
                 "kvmmmu:kvm_tdp_mmu_spte_changed", "kvm:kvm_dirty_ring_push", "kvm:kvm_mmio",
                 "kvm:kvm_userspace_exit", "kvmmmu:kvm_mmu_prepare_zap_page"),
    # SPTE changes and zaps come in bursts of a memslot's size (a zap of 1 GiB is 262,144 4 KiB SPTEs).
    rings=(Ring("accesses", DTYPE, decode, "accesses.h", "access_rec", pages=16384),),
)
