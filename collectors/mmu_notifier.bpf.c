/* mmu_notifier: KVM's MMU-notifier callbacks (kvm:kvm_unmap_hva_range, kvm_age_hva,
 * kvm_test_age_hva). They fire in the task that changed the mm: for a madvise, the caller. */
#include "mmu_notifier.h"

static __always_inline int mmu_emit(u32 event, u64 start, u64 end)
{
    struct mmu_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.event = event;
    r.start = start;
    r.end = end;
    mmu_notifier_emit(&r);
    return 0;
}

#ifdef HAVE_KVM_KVM_UNMAP_HVA_RANGE
TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range) { return mmu_emit(0, args->start, args->end); }
#endif
#ifdef HAVE_KVM_KVM_AGE_HVA
TRACEPOINT_PROBE(kvm, kvm_age_hva) { return mmu_emit(1, args->start, args->end); }
#endif
#ifdef HAVE_KVM_KVM_TEST_AGE_HVA
TRACEPOINT_PROBE(kvm, kvm_test_age_hva) { return mmu_emit(2, args->hva, 0); }
#endif
