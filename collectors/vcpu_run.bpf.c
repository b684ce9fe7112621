/* vcpu_run: each KVM_RUN ioctl of a vCPU thread, from entry to return, through ioctl.bpf.c. Only
 * KVM_RUN is held: the filter runs in the kernel, so the other ioctls of a busy VMM cost one compare.
 * It tells a detector whether a vCPU could touch guest memory at a given instant. */
#include "vcpu_run.h"

static __always_inline void vcpu_run_ioctl_enter(u32 fd, u32 cmd, u64 arg)
{
    if (cmd != KVM_RUN)
        return;
    struct vcpu_run_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    r.vcpu_fd = fd;
    vcpu_run_hold(&r);
}

static __always_inline void vcpu_run_ioctl_exit(long ret)
{
    vcpu_run_finish(ret);
}
