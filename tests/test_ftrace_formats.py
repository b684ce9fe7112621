"""Generated format cases: each event's TP_printk format, as written in the kernel source for every
layout that changed across versions, rendered with random values the way the kernel prints them,
imported, and compared value by value.

Formats (C printf strings) are copied from include/trace/events/kvm.h, arch/x86/kvm/trace.h,
arch/x86/kvm/mmu/mmutrace.h, include/trace/events/iommu.h and kernel/trace/trace_syscalls.c.
"""

import random
import re

import pytest

from pipeline.constants import KVM_RUN, MADV_DONTNEED, PID_MAX_LIMIT
from pipeline.importers.ftrace import import_ftrace
from pipeline.runstore import open_run

U64 = 2**64 - 1


def c_printf(fmt: str, *args) -> str:
    """C printf as the kernel's vsnprintf prints these conversions (length modifiers dropped)."""
    py = re.sub(r"%(#?0?\d*)(?:ll|l|z|h)?([xudsc])", lambda m: "%" + m[1] + m[2].replace("u", "d"), fmt)
    return py % args


def gfn(r):
    return r.randrange(1 << 40)


def spte(r, present):
    return (r.randrange(1 << 40) << 12) | (0xB77 if present else 0) | (0x800 if present else 0)


# event -> [(kernel versions, format, value generator, expected columns)]
CASES = {
    "kvm_page_fault": [
        ("<6.1", "address %lx error_code %x",
         lambda r: (r.randrange(U64), r.randrange(1 << 32)),
         lambda a: {"via": "page_fault", "gpa": a[0], "error_code": a[1], "write": bool(a[1] & 2)}),
        ("6.1+", "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx",
         lambda r: (r.randrange(512), r.randrange(U64), r.randrange(U64), r.randrange(U64)),
         lambda a: {"via": "page_fault", "vcpu": a[0], "gpa": a[2], "error_code": a[3], "write": bool(a[3] & 2)}),
    ],
    "kvm_mmio": [
        ("all", "mmio %s len %u gpa 0x%llx val 0x%llx",
         lambda r: (r.choice(["read", "write", "unsatisfied-read"]), r.choice([1, 2, 4, 8]), r.randrange(U64),
                    r.randrange(U64)),
         lambda a: {"via": "mmio", "gpa": a[2], "write": a[0] == "write"}),
    ],
    "kvm_unmap_hva_range": [
        ("all", "mmu notifier unmap range: %#016lx -- %#016lx",
         lambda r: (r.randrange(1, 1 << 47), r.randrange(1, 1 << 47)),
         lambda a: {"event": "unmap_hva_range", "hva_start": a[0], "hva_end": a[1]}),
    ],
    "kvm_age_hva": [
        ("all", "mmu notifier age hva: %#016lx -- %#016lx",
         lambda r: (r.randrange(1, 1 << 47), r.randrange(1, 1 << 47)),
         lambda a: {"event": "age_hva", "hva_start": a[0], "hva_end": a[1]}),
    ],
    "kvm_test_age_hva": [
        ("all", "mmu notifier test age hva: %#016lx", lambda r: (r.randrange(1, 1 << 47),),
         lambda a: {"event": "test_age_hva", "hva_start": a[0]}),
    ],
    "kvm_userspace_exit": [
        ("all", "reason %s (%d)", lambda r: (r.choice(["KVM_EXIT_IO", "KVM_EXIT_MMIO", "restart", "error"]),
                                            r.randrange(-4, 40)),
         lambda a: {"via": "userspace_exit", "error_code": a[1] % 2**64}),
    ],
    "kvm_dirty_ring_push": [
        ("5.11+", "ring %d: dirty 0x%x reset 0x%x slot %u offset 0x%llx (used %u)",
         lambda r: (r.randrange(8), r.randrange(1 << 32), r.randrange(1 << 32), r.randrange(1 << 18),
                    r.randrange(1 << 40), r.randrange(4096)),
         lambda a: {"via": "dirty_ring_push", "as_id": a[3] >> 16, "slot": a[3] & 0xFFFF, "page_offset": a[4],
                    "write": True}),
    ],
    "kvm_mmu_spte_requested": [
        ("5.1+", "gfn %llx pfn %llx level %d", lambda r: (gfn(r), gfn(r), r.randrange(1, 5)),
         lambda a: {"via": "spte_requested", "gpa": a[0] << 12, "pfn": a[1], "level": a[2]}),
    ],
    "kvm_tdp_mmu_spte_changed": [
        ("5.10+", "as id %d gfn %llx level %d old_spte %llx new_spte %llx",
         lambda r: (r.randrange(2), gfn(r), r.randrange(1, 5), spte(r, True), spte(r, r.random() < 0.5)),
         lambda a: {"via": "spte_changed", "as_id": a[0], "gpa": a[1] << 12, "level": a[2],
                    "pfn": (a[4] & 0x000FFFFFFFFFF000) >> 12 if a[4] & 0x800 else None}),
    ],
    "kvm_mmu_set_spte": [
        ("all", "gfn %llx spte %llx (%s%s%s%s) level %d at %llx",
         lambda r: (gfn(r), spte(r, True), "r", r.choice(["w", ""]), r.choice(["x", ""]), r.choice(["u", ""]),
                    r.randrange(1, 5), r.randrange(U64)),
         lambda a: {"via": "spte_set", "gpa": a[0] << 12, "pfn": (a[1] & 0x000FFFFFFFFFF000) >> 12, "level": a[6],
                    "write": a[3] == "w"}),
    ],
    "kvm_mmu_prepare_zap_page": [
        ("5.x+", "sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s%c",
         lambda r: (r.randrange(99), gfn(r), r.randrange(1, 5), r.choice([4, 8]), r.randrange(4), r.choice(["", " direct"]),
                    "wux", r.choice(["", " cr4_pae"]), r.choice(["", "!"]), r.choice(["", "!"]), r.randrange(9),
                    r.choice(["sync", "unsync"]), " "),
         lambda a: {"via": "spte_zap", "gpa": a[1] << 12, "level": a[2]}),
        ("4.x", "sp gen %lx gfn %llx l%u%s q%u%s %s%s %snxe root %u %s%c",
         lambda r: (r.randrange(99), gfn(r), r.randrange(1, 5), r.choice(["", " 4byte"]), r.randrange(4),
                    r.choice(["", " direct"]), "wux", "", "", r.randrange(9), "sync", " "),
         lambda a: {"via": "spte_zap", "gpa": a[1] << 12, "level": a[2]}),
    ],
    "map": [
        ("5.x+", "IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu",
         lambda r: (r.randrange(U64), r.randrange(U64), r.randrange(U64), r.randrange(U64)),
         lambda a: {"api": "iommu", "op": "map", "iova": a[0], "paddr": a[2], "size": a[3]}),
        ("<5.x", "IOMMU: iova=0x%016llx paddr=0x%016llx size=%zu",
         lambda r: (r.randrange(U64), r.randrange(U64), r.randrange(U64)),
         lambda a: {"api": "iommu", "op": "map", "iova": a[0], "paddr": a[1], "size": a[2]}),
    ],
    "unmap": [
        ("5.x+", "IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu",
         lambda r: (r.randrange(U64), r.randrange(U64), r.randrange(U64), r.randrange(U64)),
         lambda a: {"api": "iommu", "op": "unmap", "iova": a[0], "size": a[2], "unmapped": a[3]}),
        ("<5.x", "IOMMU: iova=0x%016llx size=%zu unmapped_size=%zu",
         lambda r: (r.randrange(U64), r.randrange(U64), r.randrange(U64)),
         lambda a: {"api": "iommu", "op": "unmap", "iova": a[0], "size": a[1], "unmapped": a[2]}),
    ],
}
FAMILY = {"map": "dma", "unmap": "dma", "kvm_unmap_hva_range": "mmu_notifier", "kvm_age_hva": "mmu_notifier",
          "kvm_test_age_hva": "mmu_notifier"}
PER_FORMAT = 40


@pytest.mark.parametrize("event", sorted(CASES))
def test_every_layout_of_every_event(event, tmp_path):
    r = random.Random(event)
    lines, want = [], []
    n = 0
    for _versions, fmt, values, expect in CASES[event]:
        for _ in range(PER_FORMAT):
            n += 1
            a = values(r)
            ts = f"{100 + n}.{r.randrange(10**6):06d}"
            lines.append(f"{'CPU 3/KVM':>16}-{7000 + n:<7} [{r.randrange(64):03d}] {r.choice(['', '....', 'd..1.'])} "
                         f"{ts}: {event}: {c_printf(fmt, *a)}")
            want.append({"ts_ns": int(ts.replace(".", "")) * 1000, "tid": 7000 + n, **expect(a)})
    (tmp_path / "trace.txt").write_text("\n".join(lines) + "\n")
    import_ftrace([tmp_path / "trace.txt"], tmp_path / "run")
    got = open_run(tmp_path / "run").read_family(FAMILY.get(event, "guest_accesses")).sort_by("tid").to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if "vcpu" not in w and FAMILY.get(event, "guest_accesses") == "guest_accesses":
            w["vcpu"] = 3  # from QEMU's thread name
        assert {k: g[k] for k in w} == w, (event, w)


@pytest.mark.parametrize("arg_format", ["%s: %lx", "%s: 0x%lx", "%s: 0x%08lx"])
def test_syscall_formats(arg_format, tmp_path):
    """print_syscall_enter prints each argument '%s: %lx' (older kernels: 0x%08lx, newer 0x%lx) and
    print_syscall_exit '%s -> 0x%lx' with the return register as unsigned."""
    r = random.Random(arg_format)
    lines, want = [], []
    for i in range(60):
        start, length = r.randrange(1 << 47), r.randrange(1, 1 << 32)
        ret = r.choice([0, 2**64 - 22, 2**64 - 12])
        args = ", ".join(c_printf(arg_format, k, v) for k, v in (("start", start), ("len_in", length),
                                                                  ("behavior", MADV_DONTNEED)))
        tid = 100 + i % 7
        lines.append(f"{'qemu-system-x86':>16}-{tid:<7} [001] ..... 5.{2 * i:06d}: sys_madvise({args})")
        lines.append(f"{'qemu-system-x86':>16}-{tid:<7} [001] ..... 5.{2 * i + 1:06d}: sys_madvise -> 0x{ret:x}")
        want.append((start, length, ret - 2**64 if ret >= 2**63 else ret, 5_000_000_000 + (2 * i + 1) * 1000))
        fd = r.randrange(3, 1024)
        lines.append(f"{'CPU 2/KVM':>16}-{tid + 50:<7} [001] ..... 6.{i:06d}: sys_ioctl("
                     + ", ".join(c_printf(arg_format, k, v) for k, v in (("fd", fd), ("cmd", KVM_RUN), ("arg", 0)))
                     + ")")
    (tmp_path / "trace.txt").write_text("\n".join(lines) + "\n")
    import_ftrace([tmp_path / "trace.txt"], tmp_path / "run")
    run = open_run(tmp_path / "run")
    got = run.read_family("discards").sort_by("ts_ns").to_pylist()
    assert [(g["hva_start"], g["size"], g["ret"], g["end_ns"]) for g in got] == want
    runs = run.read_family("vcpu_runs").to_pylist()
    assert len(runs) == 60 and {g["vcpu"] for g in runs} == {2} and all(g["ret"] is None for g in runs)
    assert all(g["tid"] < PID_MAX_LIMIT for g in runs)
