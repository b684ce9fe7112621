#pragma once
#include "record.h"

#define IO_URING_NO_INDEX 0xffffffff

struct io_uring_rec {
    VMT_ENVELOPE;
    s64 ret;
    u64 arg;        /* user pointer of the call's argument, read at exit */
    u64 vaddr;      /* iov_base of this buffer */
    u64 len;        /* iov_len of this buffer */
    u32 opcode;     /* IORING_(UN)REGISTER_BUFFERS* (without IORING_REGISTER_USE_REGISTERED_RING) */
    s32 fd;         /* ring fd (a registered-ring index when opcode had USE_REGISTERED_RING) */
    u32 nr;         /* nr_args as given */
    u32 index;      /* registered-buffer index; IO_URING_NO_INDEX: every buffer (unregister) */
    u32 unmap;      /* 1: the pin of `index` ends (unregister, or an update replacing it) */
    u32 iov_total;  /* buffers the call names (one record each up to IO_URING_MAX_IOV) */
};
