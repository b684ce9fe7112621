"""What each ftrace event's text says, as one anchored RE2 pattern per event and a vectorised builder.

The patterns follow the events' TP_printk formats in the kernel source, for every layout that
changed across versions (noted per event). A builder gets the pattern's named groups as Arrow
string arrays (one element per matching line) and returns the family's columns; nothing here
runs per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.constants import SPTE_MMU_PRESENT_MASK, SPTE_PFN_MASK
from pipeline.importers.ftrace_lines import dec_u64, hex_u64

Groups = dict[str, pa.Array]
Columns = dict[str, pa.Array | str | int | bool]


def hx(name: str) -> str:
    """A hex number as the kernel prints it (%lx, %llx, 0x%016llx, %#lx), leading zeros dropped."""
    return rf"(?:0x)?0*(?P<{name}>[0-9a-fA-F]{{1,16}})"


def dec(name: str) -> str:
    return rf"(?P<{name}>\d{{1,20}})"


@dataclass(frozen=True)
class EventSpec:
    family: str
    pattern: str
    build: Callable[[Groups], Columns]


def _gfn_gpa(g: Groups, name: str = "gfn") -> pa.Array:
    return pc.shift_left(hex_u64(g[name]), pa.scalar(12, pa.uint64()))


def _pfn_if_present(spte: pa.Array) -> pa.Array:
    """The page an SPTE maps, or null when the SPTE is not shadow-present (a zap: 0, REMOVED_SPTE 0x5a0)."""
    present = pc.not_equal(pc.bit_wise_and(spte, pa.scalar(SPTE_MMU_PRESENT_MASK, pa.uint64())), 0)
    pfn = pc.shift_right(pc.bit_wise_and(spte, pa.scalar(SPTE_PFN_MASK, pa.uint64())), pa.scalar(12, pa.uint64()))
    return pc.if_else(present, pfn, pa.scalar(None, pa.uint64()))


def _page_fault(g: Groups) -> Columns:
    err = hex_u64(g["err"])
    return {"via": "page_fault", "vcpu": dec_u64(g["vcpu"]), "gpa": hex_u64(g["addr"]), "error_code": err,
            # bit 1 is "write" both in the #PF error code and in VMX's EPT-violation qualification
            "write": pc.not_equal(pc.bit_wise_and(err, pa.scalar(2, pa.uint64())), 0)}


def _spte_changed(g: Groups) -> Columns:
    return {"via": "spte_changed", "as_id": dec_u64(g["as_id"]), "gpa": _gfn_gpa(g), "level": dec_u64(g["level"]),
            "pfn": _pfn_if_present(hex_u64(g["new"]))}


def _spte_set(g: Groups) -> Columns:
    # kvm_mmu_set_spte always installs a present SPTE (MMIO SPTEs are not set through it)
    spte = hex_u64(g["spte"])
    pfn = pc.shift_right(pc.bit_wise_and(spte, pa.scalar(SPTE_PFN_MASK, pa.uint64())), pa.scalar(12, pa.uint64()))
    return {"via": "spte_set", "gpa": _gfn_gpa(g), "level": dec_u64(g["level"]), "pfn": pfn,
            "write": pc.equal(g["w"], "w")}


def _dirty_ring_push(g: Groups) -> Columns:
    slot = dec_u64(g["slot"])  # as_id << 16 | slot
    return {"via": "dirty_ring_push", "slot": pc.bit_wise_and(slot, pa.scalar(0xFFFF, pa.uint64())),
            "as_id": pc.shift_right(slot, pa.scalar(16, pa.uint64())), "page_offset": hex_u64(g["off"]),
            "write": True}


EVENTS: dict[str, EventSpec] = {
    # include/trace/events/kvm.h
    "kvm_unmap_hva_range": EventSpec(
        "mmu_notifier", rf"^mmu notifier unmap range: {hx('start')} -- {hx('end')}$",
        lambda g: {"event": "unmap_hva_range", "hva_start": hex_u64(g["start"]), "hva_end": hex_u64(g["end"])}),
    "kvm_age_hva": EventSpec(
        "mmu_notifier", rf"^mmu notifier age hva: {hx('start')} -- {hx('end')}$",
        lambda g: {"event": "age_hva", "hva_start": hex_u64(g["start"]), "hva_end": hex_u64(g["end"])}),
    "kvm_test_age_hva": EventSpec(
        "mmu_notifier", rf"^mmu notifier test age hva: {hx('start')}$",
        lambda g: {"event": "test_age_hva", "hva_start": hex_u64(g["start"])}),
    "kvm_mmio": EventSpec(
        "guest_accesses", rf"^mmio (?P<type>unsatisfied-read|read|write) len \d+ gpa {hx('gpa')} val .*$",
        lambda g: {"via": "mmio", "gpa": hex_u64(g["gpa"]), "write": pc.equal(g["type"], "write")}),
    "kvm_userspace_exit": EventSpec(
        "guest_accesses", r"^reason \S+ \((?P<reason>-?\d{1,10})\)$",
        lambda g: {"via": "userspace_exit", "error_code": pc.cast(pc.cast(g["reason"], pa.int64()), pa.uint64(),
                                                                   safe=False)}),
    "kvm_dirty_ring_push": EventSpec(
        "guest_accesses", rf"^ring \d+: dirty {hx('d')} reset {hx('r')} slot {dec('slot')} offset {hx('off')}"
                          r"(?: \(used \d+\))?$", _dirty_ring_push),
    # arch/x86/kvm/trace.h: 'address %lx error_code %x' before 6.1, then 'vcpu %u rip 0x%lx address
    # 0x%016llx error_code 0x%llx'
    "kvm_page_fault": EventSpec(
        "guest_accesses", rf"^(?:vcpu {dec('vcpu')} rip {hx('rip')} )?address {hx('addr')} error_code {hx('err')}$",
        _page_fault),
    # arch/x86/kvm/mmu/mmutrace.h
    "kvm_mmu_spte_requested": EventSpec(
        "guest_accesses", rf"^gfn {hx('gfn')} pfn {hx('pfn')} level {dec('level')}$",
        lambda g: {"via": "spte_requested", "gpa": _gfn_gpa(g), "pfn": hex_u64(g["pfn"]),
                   "level": dec_u64(g["level"])}),
    "kvm_tdp_mmu_spte_changed": EventSpec(
        "guest_accesses", rf"^as id {dec('as_id')} gfn {hx('gfn')} level {dec('level')} old_spte {hx('old')} "
                          rf"new_spte {hx('new')}$", _spte_changed),
    "kvm_mmu_set_spte": EventSpec(
        "guest_accesses", rf"^gfn {hx('gfn')} spte {hx('spte')} \((?P<r>r?)(?P<w>w?)(?P<x>x?)(?P<u>u?)\) "
                          rf"level {dec('level')} at {hx('at')}$", _spte_set),
    # KVM_MMU_PAGE_PRINTK: 'sp gen %u gfn %llx l%u %u-byte q%u...' (5.x+), 'sp gen %lx gfn %llx l%u%s q%u...'
    # (4.x), 'sp gfn %llx %u%s q%u...' (3.x): the level's 'l' and the generation are optional
    "kvm_mmu_prepare_zap_page": EventSpec(
        "guest_accesses", rf"^sp (?:gen {hx('gen')} )?gfn {hx('gfn')} l?{dec('level')}(?:-byte|\b).*$",
        lambda g: {"via": "spte_zap", "gpa": _gfn_gpa(g), "level": dec_u64(g["level"])}),
    # include/trace/events/iommu.h: 'iova=0x%016llx - 0x%016llx paddr=...' since 5.x; no end before
    "map": EventSpec(
        "dma", rf"^IOMMU: iova={hx('iova')}(?: - {hx('end')})? paddr={hx('paddr')} size={dec('size')}$",
        lambda g: {"api": "iommu", "op": "map", "iova": hex_u64(g["iova"]), "paddr": hex_u64(g["paddr"]),
                   "size": dec_u64(g["size"])}),
    "unmap": EventSpec(
        "dma", rf"^IOMMU: iova={hx('iova')}(?: - {hx('end')})? size={dec('size')} unmapped_size={dec('un')}$",
        lambda g: {"api": "iommu", "op": "unmap", "iova": hex_u64(g["iova"]), "size": dec_u64(g["size"]),
                   "unmapped": dec_u64(g["un"])}),
}

# kvm_exit: 'vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code
# 0x%08x' (5.13+), 'reason %s rip 0x%lx info %llx %llx' before (VMX's info2 there is the interrupt info).
# Only read to tell a #PF intercept (VMX EXCEPTION_NMI with vector 14, SVM 'PF excp') from the rest.
KVM_EXIT = (rf"^(?:vcpu {dec('vcpu')} )?reason (?P<reason>.+?) rip {hx('rip')} "
            rf"(?:info1 {hx('i1')} info2 {hx('i2')} intr_info {hx('intr')} error_code {hx('ec')}"
            rf"|info {hx('oi1')} {hx('oi2')})$")

# syscall tracepoints: 'sys_NAME(arg: HEX, ...)' and 'sys_NAME -> 0xRET'; hex with or without 0x
SYSCALL_ARGS = {
    "madvise": rf"^start: {hx('start')}, len_in: {hx('len')}, behavior: {hx('advice')}$",
    "fallocate": rf"^fd: {hx('fd')}, mode: {hx('mode')}, offset: {hx('offset')}, len: {hx('len')}$",
    "ioctl": rf"^fd: {hx('fd')}, cmd: {hx('cmd')}, arg: {hx('arg')}$",
}
SYSCALL_RET = rf"^{hx('ret')}$"
