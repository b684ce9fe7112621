/* One pair of handlers on the ioctl syscall, dispatching to the collectors that decode ioctls
 * (a tracepoint can have only one TRACEPOINT_PROBE per program). */
TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
    if (!vmt_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;
#ifdef VMT_WITH_KVM
    kvm_ioctl_enter(args->fd, args->cmd, args->arg);
#endif
#ifdef VMT_WITH_VFIO
    vfio_ioctl_enter(args->fd, args->cmd, args->arg);
#endif
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
#ifdef VMT_WITH_KVM
    kvm_ioctl_exit(args->ret);
#endif
#ifdef VMT_WITH_VFIO
    vfio_ioctl_exit(args->ret);
#endif
    return 0;
}
