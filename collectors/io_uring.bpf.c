/* io_uring: registered buffers, which the kernel pins with FOLL_LONGTERM exactly as VFIO's MAP_DMA
 * does (REFERENCE.md 5.9). io_uring_register(fd, opcode, arg, nr_args) is held at entry; at exit
 * the iovec array (still in user memory) becomes one record per buffer:
 *   IORING_REGISTER_BUFFERS          arg = struct iovec[nr_args], indexes 0..nr_args-1
 *   IORING_REGISTER_BUFFERS2         arg = struct io_uring_rsrc_register {nr, flags, resv2, data}
 *   IORING_REGISTER_BUFFERS_UPDATE   arg = struct io_uring_rsrc_update2 {offset, resv, data, tags, nr}:
 *                                    each index from offset on is unpinned, then pinned again
 *                                    unless its iov_base is NULL (a cleared slot)
 *   IORING_UNREGISTER_BUFFERS        every buffer of the ring is unpinned: one record
 * Buffers beyond IO_URING_MAX_IOV in one call are counted lost. */
#include "io_uring.h"

#define IO_URING_MAX_IOV 1024

struct vmt_iou_iovec { u64 base, len; };
struct vmt_iou_rsrc_register { u32 nr, flags; u64 resv2, data, tags; };
struct vmt_iou_rsrc_update2 { u32 offset, resv; u64 data, tags; u32 nr, resv2; };

TRACEPOINT_PROBE(syscalls, sys_enter_io_uring_register)
{
    u32 opcode = args->opcode & ~IORING_REGISTER_USE_REGISTERED_RING;
    if (opcode != IORING_REGISTER_BUFFERS && opcode != IORING_REGISTER_BUFFERS2 &&
        opcode != IORING_REGISTER_BUFFERS_UPDATE && opcode != IORING_UNREGISTER_BUFFERS)
        return 0;
    struct io_uring_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.opcode = opcode;
    r.fd = args->fd;
    r.arg = (u64)args->arg;
    r.nr = args->nr_args;
    io_uring_hold(&r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_io_uring_register)
{
    struct io_uring_rec *held = io_uring_exit(args->ret);
    if (!held)
        return 0;
    struct io_uring_rec r = *held;
    io_uring_release(r.tid);
    if (r.opcode == IORING_UNREGISTER_BUFFERS) {
        r.index = IO_URING_NO_INDEX;
        r.unmap = 1;
        io_uring_emit(&r);
        return 0;
    }
    u64 vec = r.arg;
    u32 n = r.nr, first = 0;
    if (r.opcode == IORING_REGISTER_BUFFERS2) {
        struct vmt_iou_rsrc_register u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)r.arg);
        vec = u.data;
        n = u.nr;
    } else if (r.opcode == IORING_REGISTER_BUFFERS_UPDATE) {
        struct vmt_iou_rsrc_update2 u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)r.arg);
        vec = u.data;
        n = u.nr;
        first = u.offset;
    }
    r.iov_total = n;
    if (n > IO_URING_MAX_IOV)
        vmt_count_lost(RING_io_uring, n - IO_URING_MAX_IOV);
    int update = r.opcode == IORING_REGISTER_BUFFERS_UPDATE;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < IO_URING_MAX_IOV; i++) {
        if (i >= n)
            break;
        struct vmt_iou_iovec iov = {};
        bpf_probe_read_user(&iov, sizeof(iov), (void *)(vec + i * sizeof(iov)));
        r.index = first + i;
        r.vaddr = iov.base;
        r.len = iov.len;
        if (update) {
            r.unmap = 1;
            io_uring_emit(&r);
            if (!iov.base)
                continue;
        }
        r.unmap = 0;
        io_uring_emit(&r);
    }
    return 0;
}
