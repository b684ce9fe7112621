/* accesses: guest memory accesses the host kernel exposes through tracepoints: KVM page faults,
 * SPTE requests/installs/changes (with the pfn), dirty-ring pushes and MMIO. */
#include "accesses.h"

#define SPTE_PFN_MASK 0x000ffffffffff000ULL
#define SPTE_MMU_PRESENT (1ULL << 11)  /* KVM's software "shadow present" bit */
#define PFERR_WRITE (1ULL << 1)

BPF_RINGBUF_OUTPUT(accesses_ring, VMT_RING_PAGES);

static __always_inline void accesses_emit(struct access_rec *r)
{
    if (accesses_ring.ringbuf_output(r, sizeof(*r), 0))
        vmt_count_lost(RING_accesses, 1);
}

static __always_inline int access_init(struct access_rec *r, u32 via)
{
    VMT_FILL_ENVELOPE(r);
    if (!vmt_traced(r->pid))
        return 0;
    r->via = via;
    r->gpa = ACCESS_NONE_U64;
    r->pfn = ACCESS_NONE_U64;
    r->page_offset = ACCESS_NONE_U64;
    r->vcpu = -1;
    r->slot = 0xffffffff;
    r->write = 2;
    r->as_id = 0xff;
    return 1;
}

#ifdef HAVE_KVM_KVM_PAGE_FAULT
TRACEPOINT_PROBE(kvm, kvm_page_fault)
{
    struct access_rec r = {};
    if (!access_init(&r, 0))
        return 0;
    r.gpa = args->fault_address;
    r.error_code = args->error_code;
    r.write = (args->error_code & PFERR_WRITE) ? 1 : 0;
    r.vcpu = args->vcpu_id;
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVMMMU_KVM_MMU_SPTE_REQUESTED
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_spte_requested)
{
    struct access_rec r = {};
    if (!access_init(&r, 1))
        return 0;
    r.gpa = args->gfn << 12;
    r.pfn = args->pfn;
    r.level = args->level;
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVMMMU_KVM_MMU_SET_SPTE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_spte)
{
    struct access_rec r = {};
    if (!access_init(&r, 2))
        return 0;
    r.gpa = args->gfn << 12;
    r.pfn = (args->spte & SPTE_PFN_MASK) >> 12;
    r.level = args->level;
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVMMMU_KVM_TDP_MMU_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
    struct access_rec r = {};
    if (!access_init(&r, 3))
        return 0;
    r.gpa = args->gfn << 12;
    if (args->new_spte & SPTE_MMU_PRESENT)
        r.pfn = (args->new_spte & SPTE_PFN_MASK) >> 12;
    r.level = args->level;
    r.as_id = args->as_id;
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVM_KVM_DIRTY_RING_PUSH
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_push)
{
    struct access_rec r = {};
    if (!access_init(&r, 4))
        return 0;
    r.slot = args->slot;
    r.as_id = args->slot >> 16;
    r.page_offset = args->offset;
    r.write = 1;
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVM_KVM_MMIO
TRACEPOINT_PROBE(kvm, kvm_mmio)
{
    struct access_rec r = {};
    if (!access_init(&r, 5))
        return 0;
    r.gpa = args->gpa;
    r.write = args->type == 2;  /* KVM_TRACE_MMIO_WRITE */
    accesses_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_KVM_KVM_USERSPACE_EXIT
/* No address, but it proves the vCPU ran: detectors need to know when a VM's vCPUs started. */
TRACEPOINT_PROBE(kvm, kvm_userspace_exit)
{
    struct access_rec r = {};
    if (!access_init(&r, 6))
        return 0;
    r.error_code = args->reason;
    accesses_emit(&r);
    return 0;
}
#endif
