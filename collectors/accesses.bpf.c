/* accesses: guest memory accesses the host kernel exposes through tracepoints: KVM page faults,
 * SPTE requests/installs/changes (with the pfn), dirty-ring pushes and MMIO; and KVM's zaps, which
 * are invalidations (via spte_zap, like a change to a non-present SPTE: no pfn). */
#include "accesses.h"


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
    r.write = (args->error_code & PFERR_WRITE_MASK) ? 1 : 0;
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
    r.pfn = (args->spte & SPTE_BASE_ADDR_MASK) >> 12;
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
    if (args->new_spte & SPTE_MMU_PRESENT_MASK)
        r.pfn = (args->new_spte & SPTE_BASE_ADDR_MASK) >> 12;
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
    r.write = args->type == KVM_TRACE_MMIO_WRITE;
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

#ifdef HAVE_KVMMMU_KVM_MMU_PREPARE_ZAP_PAGE
/* KVM tearing down a shadow page (memslot delete, MMU-notifier invalidation): an invalidation,
 * never a guest access. gfn is the page's base; its role's low bits give the level. */
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
    struct access_rec r = {};
    if (!access_init(&r, 7))
        return 0;
    r.gpa = args->gfn << 12;
    r.level = args->role & KVM_MMU_PAGE_ROLE_LEVEL_MASK;
    accesses_emit(&r);
    return 0;
}
#endif
