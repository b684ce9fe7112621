#pragma once
#include "record.h"

enum { FILE_MAP_MMAP = 0, FILE_MAP_MUNMAP = 1 };

struct file_map_rec {
    VMT_ENVELOPE;
    s64 ret;         /* mmap: the address mapped, or -errno */
    u64 addr;        /* address asked for (mmap hint, munmap start) */
    u64 len;
    u64 offset;      /* mmap file offset */
    u32 flags;       /* mmap flags */
    u32 prot;
    s32 fd;
    u32 event;       /* FILE_MAP_* */
};
