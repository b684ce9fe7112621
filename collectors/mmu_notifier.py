"""Collector of KVM MMU-notifier invalidations and aging."""

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, columns, envelope_columns, labels, nullable, record_dtype

EVENTS = ("unmap_hva_range", "age_hva", "test_age_hva")
DTYPE = record_dtype([("start", "<u8"), ("end", "<u8"), ("event", "<u4"), ("pad", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    c = columns(rec)
    cols = envelope_columns(c, source, with_end=False)
    cols.update(event=labels(EVENTS, c["event"]), hva_start=pa.array(c["start"]),
                hva_end=nullable(c["end"], c["event"] == 2))
    return {"mmu_notifier": pa.table(cols)}


COLLECTOR = Collector(
    name="mmu_notifier", families=("mmu_notifier",), source="mmu_notifier.bpf.c",
    tracepoints=("kvm:kvm_unmap_hva_range", "kvm:kvm_age_hva", "kvm:kvm_test_age_hva"),
    # Each discard of guest RAM is one kvm_unmap_hva_range: this ring floods with the discards one.
    rings=(Ring("mmu_notifier", DTYPE, decode, "mmu_notifier.h", "mmu_rec", pages=16384),),
)
