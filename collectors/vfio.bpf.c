/* vfio: VFIO type1 and iommufd ioctls decoded from user memory (REFERENCE.md section 1.2-1.3),
 * called from ioctl.bpf.c, plus the kernel's iommu:map / iommu:unmap tracepoints, which carry
 * the physical address given to the device. VFIO ioctls are _IO() numbers: the struct length
 * travels in argsz, so cmd is matched exactly. */
#include "vfio.h"

#define VFIO_GROUP_SET_CONTAINER   0x3B68
#define VFIO_GROUP_UNSET_CONTAINER 0x3B69
#define VFIO_IOMMU_MAP_DMA         0x3B71
#define VFIO_IOMMU_UNMAP_DMA       0x3B72
#define VFIO_IOMMU_DIRTY_PAGES     0x3B75
#define IOMMU_IOAS_MAP             0x3B85
#define IOMMU_IOAS_UNMAP           0x3B86

struct vmt_vfio_dma_map { u32 argsz, flags; u64 vaddr, iova, size; };
struct vmt_vfio_dma_unmap { u32 argsz, flags; u64 iova, size; };
struct vmt_vfio_dirty { u32 argsz, flags; u64 iova, size; };  /* with the _get payload */
struct vmt_ioas_map { u32 size, flags, ioas_id, reserved; u64 user_va, length, iova; };
struct vmt_ioas_unmap { u32 size, ioas_id; u64 iova, length; };

BPF_RINGBUF_OUTPUT(vfio_ring, VMT_RING_PAGES);

static __always_inline void vfio_emit(struct vfio_rec *r)
{
    if (vfio_ring.ringbuf_output(r, sizeof(*r), 0))
        vmt_count_lost(RING_vfio, 1);
}
BPF_HASH(vfio_inflight, u32, struct vfio_rec, 10240);

static __always_inline void vfio_ioctl_enter(u32 fd, u32 cmd, u64 arg)
{
    if (cmd != VFIO_GROUP_SET_CONTAINER && cmd != VFIO_GROUP_UNSET_CONTAINER &&
        cmd != VFIO_IOMMU_MAP_DMA && cmd != VFIO_IOMMU_UNMAP_DMA && cmd != VFIO_IOMMU_DIRTY_PAGES &&
        cmd != IOMMU_IOAS_MAP && cmd != IOMMU_IOAS_UNMAP)
        return;
    struct vfio_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    r.cmd = cmd;
    r.fd = fd;
    r.arg = arg;
    r.container_fd = -1;
    if (cmd == VFIO_GROUP_SET_CONTAINER) {
        bpf_probe_read_user(&r.container_fd, sizeof(r.container_fd), (void *)arg);
    } else if (cmd == VFIO_IOMMU_MAP_DMA) {
        struct vmt_vfio_dma_map u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.flags = u.flags;
        r.vaddr = u.vaddr;
        r.iova = u.iova;
        r.size = u.size;
    } else if (cmd == VFIO_IOMMU_UNMAP_DMA) {
        struct vmt_vfio_dma_unmap u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.flags = u.flags;
        r.iova = u.iova;
        r.size = u.size;
    } else if (cmd == VFIO_IOMMU_DIRTY_PAGES) {
        struct vmt_vfio_dirty u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.flags = u.flags;
        if (u.flags & 4) {  /* GET_BITMAP: the range follows the header */
            r.iova = u.iova;
            r.size = u.size;
        }
    } else if (cmd == IOMMU_IOAS_MAP) {
        struct vmt_ioas_map u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.flags = u.flags;
        r.ioas_id = u.ioas_id;
        r.vaddr = u.user_va;
        r.size = u.length;
        r.iova = u.iova;
    } else if (cmd == IOMMU_IOAS_UNMAP) {
        struct vmt_ioas_unmap u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.ioas_id = u.ioas_id;
        r.iova = u.iova;
        r.size = u.length;
    }
    u32 tid = r.tid;
    if (vfio_inflight.update(&tid, &r))
        vmt_count_lost(RING_vfio, 1);
}

static __always_inline void vfio_ioctl_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct vfio_rec *r = vfio_inflight.lookup(&tid);
    if (!r)
        return;
    r->end_ns = bpf_ktime_get_ns();
    r->ret = ret;
    if (ret == 0) {  /* outputs the kernel wrote back */
        if (r->cmd == VFIO_IOMMU_UNMAP_DMA)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 16));
        else if (r->cmd == IOMMU_IOAS_MAP)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 32));
        else if (r->cmd == IOMMU_IOAS_UNMAP)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 16));
    }
    vfio_emit(r);
    vfio_inflight.delete(&tid);
}

BPF_RINGBUF_OUTPUT(iommu_ring, VMT_RING_PAGES);

static __always_inline void iommu_emit(struct iommu_rec *r)
{
    if (iommu_ring.ringbuf_output(r, sizeof(*r), 0))
        vmt_count_lost(RING_iommu, 1);
}

#ifdef HAVE_IOMMU_MAP
TRACEPOINT_PROBE(iommu, map)
{
    struct iommu_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.iova = args->iova;
    r.paddr = args->paddr;
    r.size = args->size;
    iommu_emit(&r);
    return 0;
}
#endif

#ifdef HAVE_IOMMU_UNMAP
TRACEPOINT_PROBE(iommu, unmap)
{
    struct iommu_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.iova = args->iova;
    r.size = args->size;
    r.unmapped = args->unmapped_size;
    r.op = 1;
    iommu_emit(&r);
    return 0;
}
#endif
