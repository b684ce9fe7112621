/* discards: madvise / process_madvise behaviours that drop page contents, and
 * fallocate(FALLOC_FL_PUNCH_HOLE). One record per call (per iovec for process_madvise),
 * emitted at syscall exit with the return value. */
#include "discards.h"

#define PROCESS_MADVISE_MAX_IOV 8

struct vmt_iovec { u64 base; u64 len; };

static __always_inline int is_discard_advice(int b)
{
    return b == MADV_DONTNEED || b == MADV_FREE || b == MADV_REMOVE || b == MADV_DONTNEED_LOCKED;
}

static __always_inline void discard_enter(u32 syscall, u64 start, u64 len, s32 advice, s32 fd)
{
    /* Filter first: with --pid / --comm, every other process's madvise (glibc's free() issues
     * them) then costs one map lookup, not a clock read and a comm copy as well. */
    if (!vmt_traced(bpf_get_current_pid_tgid() >> 32))
        return;
    struct discard_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    r.syscall = syscall;
    r.start = start;
    r.len = len;
    r.advice = advice;
    r.fd = fd;
    discards_hold(&r);
}

TRACEPOINT_PROBE(syscalls, sys_enter_madvise)
{
    int b = args->behavior;
    if (is_discard_advice(b))
        discard_enter(DISCARD_MADVISE, args->start, args->len_in, b, -1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_madvise)
{
    discards_finish(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fallocate)
{
    if (args->mode & FALLOC_FL_PUNCH_HOLE)
        discard_enter(DISCARD_FALLOCATE, args->offset, args->len, args->mode, args->fd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fallocate)
{
    discards_finish(args->ret);
    return 0;
}

/* In flight, start holds the iovec array pointer and len the iovec count; at exit each iovec
 * (still in user memory) becomes one record. */
TRACEPOINT_PROBE(syscalls, sys_enter_process_madvise)
{
    int b = args->behavior;
    if (is_discard_advice(b))
        discard_enter(DISCARD_PROCESS_MADVISE, (u64)args->vec, args->vlen, b, args->pidfd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_process_madvise)
{
    struct discard_rec *r = discards_exit(args->ret);
    if (!r)
        return 0;
    struct discard_rec out = *r;
    discards_release(out.tid);
    u64 vec = out.start, n = out.len;
    out.iov_total = n;
    if (n > PROCESS_MADVISE_MAX_IOV)
        vmt_count_lost(RING_discards, n - PROCESS_MADVISE_MAX_IOV);
#pragma unroll
    for (int i = 0; i < PROCESS_MADVISE_MAX_IOV; i++) {
        if (i >= n)
            break;
        struct vmt_iovec iov = {};
        bpf_probe_read_user(&iov, sizeof(iov), (void *)(vec + i * sizeof(iov)));
        out.start = iov.base;
        out.len = iov.len;
        discards_emit(&out);
    }
    return 0;
}
