/* vfio: VFIO type1 and iommufd ioctls decoded from user memory (REFERENCE.md section 1.2-1.3),
 * called from ioctl.bpf.c, plus the kernel's iommu:map / iommu:unmap tracepoints, which carry
 * the physical address given to the device. VFIO ioctls are _IO() numbers: the struct length
 * travels in argsz, so cmd is matched exactly. */
#include "vfio.h"


struct vmt_vfio_dma_map { u32 argsz, flags; u64 vaddr, iova, size; };
struct vmt_vfio_dma_unmap { u32 argsz, flags; u64 iova, size; };
struct vmt_vfio_dirty { u32 argsz, flags; u64 iova, size; };  /* with the _get payload */
struct vmt_ioas_map { u32 size, flags, ioas_id, reserved; u64 user_va, length, iova; };
struct vmt_ioas_unmap { u32 size, ioas_id; u64 iova, length; };

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
        if (u.flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) {  /* the range follows the header */
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
    vfio_hold(&r);
}

static __always_inline void vfio_ioctl_exit(long ret)
{
    struct vfio_rec *r = vfio_exit(ret);
    if (!r)
        return;
    if (ret == 0) {  /* outputs the kernel wrote back */
        if (r->cmd == VFIO_IOMMU_UNMAP_DMA)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 16));
        else if (r->cmd == IOMMU_IOAS_MAP)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 32));
        else if (r->cmd == IOMMU_IOAS_UNMAP)
            bpf_probe_read_user(&r->out, sizeof(r->out), (void *)(r->arg + 16));
    }
    vfio_emit(r);
    vfio_release(r->tid);
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
