#pragma once
#include "record.h"

enum { DISCARD_MADVISE = 0, DISCARD_PROCESS_MADVISE = 1, DISCARD_FALLOCATE = 2 };

struct discard_rec {
    VMT_ENVELOPE;
    u64 start;      /* madvise, process_madvise: HVA; fallocate: file offset */
    u64 len;        /* bytes */
    s64 ret;
    s32 advice;     /* madvise behaviour, or fallocate mode */
    s32 fd;         /* fallocate fd, process_madvise pidfd; -1 for madvise */
    u32 syscall;    /* DISCARD_* */
    u32 iov_total;  /* process_madvise: iovecs in the call (one record each, up to 8) */
};
