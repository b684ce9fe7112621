"""Named kernel and QEMU constants, defined once.

Collectors get them as `-D` defines for their BPF C (`c_defines()`), the detection layer as
DuckDB macros (`sql_macros()`: `MADV_DONTNEED()` ...), Python imports them from here. Values
are the x86-64 / asm-generic ones (../shared/docs/REFERENCE.md sections 1 and 2).
"""

from __future__ import annotations

CONSTANTS: dict[str, dict[str, int]] = {
    # madvise behaviours that throw page contents away (mman-common.h)
    "madvise": {
        "MADV_DONTNEED": 4,
        "MADV_FREE": 8,
        "MADV_REMOVE": 9,
        "MADV_DONTNEED_LOCKED": 24,
    },
    # fallocate mode bits (falloc.h)
    "fallocate": {
        "FALLOC_FL_KEEP_SIZE": 0x01,
        "FALLOC_FL_PUNCH_HOLE": 0x02,
    },
    # KVM memslot flags (kvm.h)
    "kvm_mem": {
        "KVM_MEM_LOG_DIRTY_PAGES": 1 << 0,
        "KVM_MEM_READONLY": 1 << 1,
        "KVM_MEM_GUEST_MEMFD": 1 << 2,
    },
    # KVM ioctl numbers (KVMIO = 0xAE)
    "kvm_ioctl": {
        "KVM_CREATE_VM": 0xAE01,
        "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
        "KVM_CREATE_VCPU": 0xAE41,
        "KVM_RUN": 0xAE80,
        "KVM_SET_REGS": 0x4090AE82,
        "KVM_GET_SREGS": 0x8138AE83,
        "KVM_SET_SREGS": 0x4138AE84,
        "KVM_GET_DIRTY_LOG": 0x4010AE42,
        "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
        "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
        "KVM_CLEAR_DIRTY_LOG": 0xC018AEC0,
        "KVM_RESET_DIRTY_RINGS": 0x0000AEC7,
    },
    # VFIO type1 and iommufd ioctl numbers (';' = 0x3B)
    "vfio_ioctl": {
        "VFIO_GROUP_SET_CONTAINER": 0x3B68,
        "VFIO_GROUP_UNSET_CONTAINER": 0x3B69,
        "VFIO_IOMMU_MAP_DMA": 0x3B71,
        "VFIO_IOMMU_UNMAP_DMA": 0x3B72,
        "VFIO_IOMMU_DIRTY_PAGES": 0x3B75,
        "IOMMU_IOAS_MAP": 0x3B85,
        "IOMMU_IOAS_UNMAP": 0x3B86,
    },
    # VFIO_IOMMU_MAP_DMA / UNMAP_DMA / DIRTY_PAGES flags
    "vfio_flags": {
        "VFIO_DMA_MAP_FLAG_READ": 1 << 0,
        "VFIO_DMA_MAP_FLAG_WRITE": 1 << 1,
        "VFIO_DMA_MAP_FLAG_VADDR": 1 << 2,
        "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP": 1 << 0,
        "VFIO_DMA_UNMAP_FLAG_ALL": 1 << 1,
        "VFIO_DMA_UNMAP_FLAG_VADDR": 1 << 2,
        "VFIO_IOMMU_DIRTY_PAGES_FLAG_START": 1 << 0,
        "VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP": 1 << 1,
        "VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP": 1 << 2,
    },
    # io_uring_register opcodes that pin (REFERENCE.md 5.9); x86-64 syscall number
    "io_uring": {
        "NR_IO_URING_SETUP": 425,
        "NR_IO_URING_REGISTER": 427,
        "IORING_REGISTER_BUFFERS": 0,
        "IORING_UNREGISTER_BUFFERS": 1,
        "IORING_REGISTER_BUFFERS2": 15,
        "IORING_REGISTER_BUFFERS_UPDATE": 16,
    },
    # PCI config space: the command register and its memory-decoding bit
    "pci": {
        "PCI_COMMAND": 0x04,
        "PCI_COMMAND_MEMORY": 0x02,
    },
    # mmap flags (mman-common.h): a shared mapping's pages live in the file, not the process
    "mmap": {
        "MAP_SHARED": 0x01,
        "MAP_PRIVATE": 0x02,
    },
    "page": {
        "PAGE_SIZE": 4096,
    },
    # mmap flags (mman-common.h / mman.h)
    "mmap": {
        "MAP_SHARED": 0x01,
        "MAP_PRIVATE": 0x02,
        "MAP_ANONYMOUS": 0x20,
    },
    # io_uring_register opcode bit saying the fd is a registered ring index, not a file descriptor
    "io_uring_flags": {
        "IORING_REGISTER_USE_REGISTERED_RING": 1 << 31,
    },
    # x86 KVM: page-fault error code and SPTE bits the kvmmmu tracepoints carry (arch/x86/kvm/mmu/spte.h)
    # kvm_run.exit_reason values (kvm.h)
    "kvm_exit": {
        "KVM_EXIT_IO": 2,
        "KVM_EXIT_HLT": 5,
    },
    "kvm_x86_mmu": {
        "PFERR_WRITE_MASK": 1 << 1,
        "SPTE_MMU_PRESENT_MASK": 1 << 11,
        "SPTE_BASE_ADDR_MASK": 0x000FFFFFFFFFF000,
        "KVM_MMU_PAGE_ROLE_LEVEL_MASK": 0xF,
        "KVM_TRACE_MMIO_WRITE": 2,
    },
    # x86 exception vector of a page fault (#PF)
    "x86": {
        "PF_VECTOR": 14,
    },
    # Largest pid the kernel hands out (PID_MAX_LIMIT on 64-bit, include/linux/threads.h)
    "linux": {
        "PID_MAX_LIMIT": 4 * 1024 * 1024,
    },
}

_ALL = {name: value for group in CONSTANTS.values() for name, value in group.items()}
globals().update(_ALL)


def value(name: str) -> int:
    return _ALL[name]


def c_defines() -> list[str]:
    """`-DNAME=0x...` arguments for the BPF compiler."""
    return [f"-D{name}={value:#x}" for name, value in _ALL.items()]


def sql_macros() -> str:
    """DuckDB macros, one per constant: `MADV_DONTNEED()` is 4 in every query."""
    return "\n".join(f"CREATE OR REPLACE MACRO {name}() AS {value};" for name, value in _ALL.items())
