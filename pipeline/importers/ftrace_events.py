"""What each ftrace event's text says: its argument layouts as templates and a vectorised builder.

The templates follow the events' TP_printk formats in the kernel source, one per layout that
changed across versions (noted per event). A builder gets the typed fields of the matching lines
as Arrow arrays and returns the family's columns; nothing here runs per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.constants import PFERR_WRITE_MASK, SPTE_BASE_ADDR_MASK, SPTE_MMU_PRESENT_MASK
from pipeline.importers.ftrace_template import Template

Fields = dict[str, pa.Array]
Columns = dict[str, pa.Array | str | int | bool]


@dataclass(frozen=True)
class EventSpec:
    family: str
    layouts: tuple[Template, ...]
    build: Callable[[Fields], Columns]


def spec(family: str, layouts: tuple[str, ...], build: Callable[[Fields], Columns]) -> EventSpec:
    return EventSpec(family, tuple(Template(t) for t in layouts), build)


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.uint64())


def _gpa(gfn: pa.Array) -> pa.Array:
    return pc.shift_left(gfn, _u64(12))


def _pfn(spte: pa.Array) -> pa.Array:
    return pc.shift_right(pc.bit_wise_and(spte, _u64(SPTE_BASE_ADDR_MASK)), _u64(12))


def _pfn_if_present(spte: pa.Array) -> pa.Array:
    """The page an SPTE maps, or null when it is not shadow-present (a zap: 0, REMOVED_SPTE 0x5a0)."""
    present = pc.not_equal(pc.bit_wise_and(spte, _u64(SPTE_MMU_PRESENT_MASK)), 0)
    return pc.if_else(present, _pfn(spte), pa.scalar(None, pa.uint64()))


def _page_fault(f: Fields) -> Columns:
    return {"via": "page_fault", "vcpu": f["vcpu"], "gpa": f["addr"], "error_code": f["err"],
            # bit 1 is "write" both in the #PF error code and in VMX's EPT-violation qualification
            "write": pc.not_equal(pc.bit_wise_and(f["err"], _u64(PFERR_WRITE_MASK)), 0)}


def _dirty_ring_push(f: Fields) -> Columns:
    return {"via": "dirty_ring_push", "slot": pc.bit_wise_and(f["slot"], _u64(0xFFFF)),  # as_id << 16 | slot
            "as_id": pc.shift_right(f["slot"], _u64(16)), "page_offset": f["off"], "write": True}


EVENTS: dict[str, EventSpec] = {
    # include/trace/events/kvm.h
    "kvm_unmap_hva_range": spec("mmu_notifier", ("mmu notifier unmap range: {start:x} -- {end:x}",),
                                lambda f: {"event": "unmap_hva_range", "hva_start": f["start"], "hva_end": f["end"]}),
    "kvm_age_hva": spec("mmu_notifier", ("mmu notifier age hva: {start:x} -- {end:x}",),
                        lambda f: {"event": "age_hva", "hva_start": f["start"], "hva_end": f["end"]}),
    "kvm_test_age_hva": spec("mmu_notifier", ("mmu notifier test age hva: {start:x}",),
                             lambda f: {"event": "test_age_hva", "hva_start": f["start"]}),
    "kvm_mmio": spec("guest_accesses", ("mmio {type:s=read|write|unsatisfied-read} len {len:d} gpa {gpa:x} val {val:x}",),
                     lambda f: {"via": "mmio", "gpa": f["gpa"], "write": pc.equal(f["type"], "write")}),
    "kvm_userspace_exit": spec("guest_accesses", ("reason {name:s} ({reason:i})",),
                               lambda f: {"via": "userspace_exit",
                                          "error_code": pc.cast(f["reason"], pa.uint64(), safe=False)}),
    "kvm_dirty_ring_push": spec("guest_accesses",
                                ("ring {ring:d}: dirty {dirty:x} reset {reset:x} slot {slot:d} offset {off:x} "
                                 "(used {used:d})",
                                 "ring {ring:d}: dirty {dirty:x} reset {reset:x} slot {slot:d} offset {off:x}"),
                                _dirty_ring_push),
    # arch/x86/kvm/trace.h: 'vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx' since 6.1,
    # 'address %lx error_code %x' before
    "kvm_page_fault": spec("guest_accesses", ("vcpu {vcpu:d} rip {rip:x} address {addr:x} error_code {err:x}",
                                              "address {addr:x} error_code {err:x}"), _page_fault),
    # arch/x86/kvm/mmu/mmutrace.h
    "kvm_mmu_spte_requested": spec("guest_accesses", ("gfn {gfn:x} pfn {pfn:x} level {level:d}",),
                                   lambda f: {"via": "spte_requested", "gpa": _gpa(f["gfn"]), "pfn": f["pfn"],
                                              "level": f["level"]}),
    "kvm_tdp_mmu_spte_changed": spec(
        "guest_accesses", ("as id {as_id:d} gfn {gfn:x} level {level:d} old_spte {old:x} new_spte {new:x}",),
        lambda f: {"via": "spte_changed", "as_id": f["as_id"], "gpa": _gpa(f["gfn"]), "level": f["level"],
                   "pfn": _pfn_if_present(f["new"])}),
    # 'gfn %llx spte %llx (%s%s%s%s) level %d at %llx': always a present SPTE (MMIO SPTEs are not set here)
    "kvm_mmu_set_spte": spec("guest_accesses", ("gfn {gfn:x} spte {spte:x} ({perm:s}) level {level:d} at {at:x}",),
                             lambda f: {"via": "spte_set", "gpa": _gpa(f["gfn"]), "level": f["level"],
                                        "pfn": _pfn(f["spte"]), "write": pc.match_substring(f["perm"], "w")}),
    # KVM_MMU_PAGE_PRINTK: 'sp gen %u gfn %llx l%u %u-byte q%u ...' (5.x+), 'sp gen %lx gfn %llx l%u%s q%u ...'
    # (4.x), 'sp gfn %llx l%u%s ...' (3.x)
    "kvm_mmu_prepare_zap_page": spec("guest_accesses", ("sp gen {gen:x} gfn {gfn:x} l{level:d} ...",
                                                        "sp gfn {gfn:x} l{level:d} ..."),
                                     lambda f: {"via": "spte_zap", "gpa": _gpa(f["gfn"]), "level": f["level"]}),
    # include/trace/events/iommu.h: 'IOMMU: iova=0x%016llx - 0x%016llx paddr=...' since 5.x, no end before
    "map": spec("dma", ("IOMMU: iova={iova:x} - {end:x} paddr={paddr:x} size={size:d}",
                        "IOMMU: iova={iova:x} paddr={paddr:x} size={size:d}"),
                lambda f: {"api": "iommu", "op": "map", "iova": f["iova"], "paddr": f["paddr"], "size": f["size"]}),
    "unmap": spec("dma", ("IOMMU: iova={iova:x} - {end:x} size={size:d} unmapped_size={un:d}",
                          "IOMMU: iova={iova:x} size={size:d} unmapped_size={un:d}"),
                  lambda f: {"api": "iommu", "op": "unmap", "iova": f["iova"], "size": f["size"],
                             "unmapped": f["un"]}),
}

# kvm_exit: 'vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code
# 0x%08x' (5.13+), 'vcpu %u reason %s rip 0x%lx info %llx %llx' and 'reason %s rip 0x%lx info %llx %llx'
# before (VMX's second info there is the interrupt info). SVM reasons can be two words ('PF excp').
# Only read to tell a #PF intercept (VMX EXCEPTION_NMI with vector 14, SVM 'PF excp') from the rest.
_EXIT_HEADS = ("vcpu {vcpu:d} reason {reason:s}", "reason {reason:s}",
               "vcpu {vcpu:d} reason {reason:s} {reason2:s}", "reason {reason:s} {reason2:s}")
_EXIT_TAILS = ("rip {rip:x} info1 {info1:x} info2 {info2:x} intr_info {intr:x} error_code {ec:x}",
               "rip {rip:x} info {info1:x} {intr:x}")
KVM_EXIT = tuple(Template(f"{head} {tail}") for head in _EXIT_HEADS for tail in _EXIT_TAILS)

# syscall tracepoints: 'sys_NAME(arg: HEX, ...)' and 'sys_NAME -> 0xRET'; hex with or without 0x
SYSCALL_ARGS = {
    "madvise": Template("start: {start:x}, len_in: {len:x}, behavior: {advice:x}"),
    "fallocate": Template("fd: {fd:x}, mode: {mode:x}, offset: {offset:x}, len: {len:x}"),
    "ioctl": Template("fd: {fd:x}, cmd: {cmd:x}, arg: {arg:x}"),
}
SYSCALL_RET = Template("{ret:x}")
