/* qemu: uprobes on functions the QEMU binary exports (discard inhibitor, RAM block discards,
 * free page hints, migration's bitmap-sync notifications, global dirty logging). One record per
 * call, emitted on return with the return value. collectors/qemu.py attaches qemu_enter_N to
 * FUNCTIONS[N] and qemu_return to every return. */
#include "qemu.h"

BPF_RINGBUF_OUTPUT(qemu_ring, VMT_RING_PAGES);
BPF_HASH(qemu_inflight, u32, struct qemu_rec, 10240);

static __always_inline void qemu_emit(struct qemu_rec *r)
{
    if (qemu_ring.ringbuf_output(r, sizeof(*r), 0))
        vmt_count_lost(RING_qemu, 1);
}

static __always_inline int qemu_enter(struct pt_regs *ctx, u32 fn)
{
    struct qemu_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.fn = fn;
    r.arg0 = PT_REGS_PARM1(ctx);
    r.arg1 = PT_REGS_PARM2(ctx);
    r.arg2 = PT_REGS_PARM3(ctx);
    u32 tid = r.tid;
    if (qemu_inflight.update(&tid, &r))
        vmt_count_lost(RING_qemu, 1);
    return 0;
}

int qemu_return(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct qemu_rec *r = qemu_inflight.lookup(&tid);
    if (!r)
        return 0;
    r->end_ns = bpf_ktime_get_ns();
    r->ret = PT_REGS_RC(ctx);
    qemu_emit(r);
    qemu_inflight.delete(&tid);
    return 0;
}

#define QEMU_ENTER(n) int qemu_enter_##n(struct pt_regs *ctx) { return qemu_enter(ctx, n); }
QEMU_ENTER(0) QEMU_ENTER(1) QEMU_ENTER(2) QEMU_ENTER(3) QEMU_ENTER(4) QEMU_ENTER(5)
QEMU_ENTER(6) QEMU_ENTER(7) QEMU_ENTER(8) QEMU_ENTER(9) QEMU_ENTER(10) QEMU_ENTER(11)
QEMU_ENTER(12) QEMU_ENTER(13) QEMU_ENTER(14) QEMU_ENTER(15)
