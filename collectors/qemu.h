#pragma once
#include "record.h"

struct qemu_rec {
    VMT_ENVELOPE;
    u64 arg0;       /* first three integer arguments of the probed function */
    u64 arg1;
    u64 arg2;
    s64 ret;        /* return value (rax); meaningless for void functions */
    u32 fn;         /* index into collectors/qemu.py FUNCTIONS */
    u32 pad;
};
