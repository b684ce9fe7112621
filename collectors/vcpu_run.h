#pragma once
#include "record.h"

struct vcpu_run_rec {
    VMT_ENVELOPE;    /* ts_ns: KVM_RUN entry; end_ns: its return to user space */
    s64 ret;
    s32 vcpu_fd;
    u32 pad;
};
