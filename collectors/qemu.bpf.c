/* qemu: uprobes on functions the QEMU binary exports (discard inhibitor, RAM block discards,
 * free page hints, migration's bitmap-sync notifications, global dirty logging). One record per
 * call, emitted on return with the return value. collectors/qemu.py attaches qemu_enter_N to
 * FUNCTIONS[N] and qemu_return to every return. */
#include "qemu.h"

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
    qemu_hold(&r);
    return 0;
}

int qemu_return(struct pt_regs *ctx)
{
    qemu_finish(PT_REGS_RC(ctx));
    return 0;
}

#define QEMU_ENTER(n) int qemu_enter_##n(struct pt_regs *ctx) { return qemu_enter(ctx, n); }
QEMU_ENTER(0) QEMU_ENTER(1) QEMU_ENTER(2) QEMU_ENTER(3) QEMU_ENTER(4) QEMU_ENTER(5)
QEMU_ENTER(6) QEMU_ENTER(7) QEMU_ENTER(8) QEMU_ENTER(9) QEMU_ENTER(10) QEMU_ENTER(11)
QEMU_ENTER(12) QEMU_ENTER(13) QEMU_ENTER(14) QEMU_ENTER(15)
