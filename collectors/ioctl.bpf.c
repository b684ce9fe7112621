/* One pair of handlers on the ioctl syscall, dispatching to every collector that decodes ioctls
 * (a tracepoint can have only one TRACEPOINT_PROBE per program). collectors/program.py defines
 * VMT_IOCTL_COLLECTORS(X) as X(name) for each of them; each defines name_ioctl_enter(fd, cmd, arg),
 * which returns at once for an ioctl number it does not decode, and name_ioctl_exit(ret). */
#define VMT_IOCTL_ENTER(name) name##_ioctl_enter(fd, cmd, arg);
#define VMT_IOCTL_EXIT(name) name##_ioctl_exit(ret);

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
    if (!vmt_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;
    u32 fd = args->fd, cmd = args->cmd;
    u64 arg = args->arg;
    VMT_IOCTL_COLLECTORS(VMT_IOCTL_ENTER)
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
    if (!vmt_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;
    long ret = args->ret;
    VMT_IOCTL_COLLECTORS(VMT_IOCTL_EXIT)
    return 0;
}
