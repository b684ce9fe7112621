#pragma once
#include "record.h"

struct kvm_rec {
    VMT_ENVELOPE;
    s64 ret;
    u32 cmd;         /* ioctl number */
    s32 fd;          /* VM fd */
    u32 slot;        /* as_id << 16 | slot id */
    u32 flags;       /* memslot flags; KVM_CLEAR_DIRTY_LOG: num_pages */
    u64 gpa;         /* guest_phys_addr; KVM_CLEAR_DIRTY_LOG: first_page */
    u64 size;        /* memory_size */
    u64 hva;         /* userspace_addr */
    u64 gmem_offset; /* REGION2 */
    s32 gmem_fd;     /* REGION2; -1 otherwise */
    u32 pad;
};
