#pragma once
#include "record.h"

struct mmu_rec {
    VMT_ENVELOPE;
    u64 start;
    u64 end;        /* exclusive; 0 for test_age_hva */
    u32 event;      /* 0 unmap_hva_range, 1 age_hva, 2 test_age_hva */
    u32 pad;
};
