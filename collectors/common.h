/* Shared by every vmemtrace collector: the record envelope, the process filter, loss counting.
 *
 * The loader (collectors/program.py) compiles all enabled collectors as one BPF program and
 * defines: RING_<name> (index of each ring), VMT_NRINGS, every named constant of
 * pipeline/constants.py (MADV_DONTNEED, KVM_RUN, ...: never #define them again in C), VMT_FILTER (only processes in traced_pids), VMT_COMM / VMT_COMM_LEN (add processes whose name
 * starts with it when they exec), and HAVE_<SYSTEM>_<EVENT> for each optional tracepoint this
 * kernel has. Programs read tracepoint fields and user memory only: no kernel structs, because the
 * headers may not match the running kernel.
 */
#ifndef VMT_COMMON_H
#define VMT_COMMON_H

#include <uapi/linux/ptrace.h>
#include "record.h"

/* Events lost per ring: the ring was full, or an in-flight table was. */
BPF_PERCPU_ARRAY(vmt_lost, u64, VMT_NRINGS);

static __always_inline void vmt_count_lost(u32 ring, u64 n)
{
    u64 *c = vmt_lost.lookup(&ring);
    if (c)
        *c += n;
}

/* Entries of each in-flight table: threads inside a traced call at the same time. */
#define VMT_INFLIGHT_ENTRIES 10240

/* Each ring's NAME_emit / NAME_hold / NAME_finish helpers come from ring_template.h. */

/* Processes being traced (tgid -> 1) when VMT_FILTER is set; children join at fork. */
BPF_HASH(traced_pids, u32, u8, 65536);

static __always_inline int vmt_traced(u32 tgid)
{
#ifdef VMT_FILTER
    return traced_pids.lookup(&tgid) != 0;
#else
    return 1;
#endif
}

#define VMT_FILL_ENVELOPE(r) \
    do { \
        u64 __id = bpf_get_current_pid_tgid(); \
        (r)->ts_ns = bpf_ktime_get_ns(); \
        (r)->pid = __id >> 32; \
        (r)->tid = (u32)__id; \
        bpf_get_current_comm((r)->comm, sizeof((r)->comm)); \
    } while (0)

#ifdef VMT_FILTER
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!traced_pids.lookup(&parent))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    traced_pids.update(&child, &one);
    return 0;
}
#endif

#ifdef VMT_COMM
/* A process whose name (after exec) starts with VMT_COMM is traced from its exec on. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    char comm[VMT_COMM_SIZE] = {};
    char want[] = VMT_COMM;
    bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
    for (int i = 0; i < VMT_COMM_LEN && i < VMT_COMM_SIZE; i++)
        if (comm[i] != want[i])
            return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u8 one = 1;
    traced_pids.update(&tgid, &one);
    return 0;
}
#endif

#endif /* VMT_COMMON_H */
