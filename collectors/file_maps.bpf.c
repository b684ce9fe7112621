/* file_maps: mmap of files and munmap, so that a hole punched in a file (fallocate) can be placed
 * at the host-virtual addresses that map it. Anonymous mmaps are dropped in the kernel (no file,
 * nothing to punch); munmaps cannot be told apart there and are all kept. Mappings that exist
 * before the trace come from /proc/PID/maps (collectors/file_maps.py). */
#include "file_maps.h"

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
    if (args->flags & MAP_ANONYMOUS)
        return 0;
    struct file_map_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.event = FILE_MAP_MMAP;
    r.addr = args->addr;
    r.len = args->len;
    r.offset = args->off;
    r.flags = args->flags;
    r.prot = args->prot;
    r.fd = args->fd;
    file_maps_hold(&r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
    file_maps_finish(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
    struct file_map_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.event = FILE_MAP_MUNMAP;
    r.addr = args->addr;
    r.len = args->len;
    r.fd = -1;
    file_maps_hold(&r);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_munmap)
{
    file_maps_finish(args->ret);
    return 0;
}
