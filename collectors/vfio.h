#pragma once
#include "record.h"

struct vfio_rec {
    VMT_ENVELOPE;
    s64 ret;
    u32 cmd;          /* ioctl number */
    s32 fd;           /* container, group or iommufd fd */
    u32 flags;        /* request flags */
    u32 ioas_id;      /* iommufd */
    u64 vaddr;        /* MAP_DMA vaddr, IOAS_MAP user_va */
    u64 iova;
    u64 size;         /* requested bytes */
    u64 out;          /* at exit: bytes unmapped (UNMAP_DMA, IOAS_UNMAP) or IOVA chosen (IOAS_MAP) */
    u64 arg;          /* user pointer of the ioctl's struct, read again at exit */
    s32 container_fd; /* GROUP_SET_CONTAINER */
    u32 pad;
};

struct iommu_rec {
    VMT_ENVELOPE;
    u64 iova;
    u64 paddr;
    u64 size;
    u64 unmapped;
    u32 op;           /* 0 map, 1 unmap */
    u32 pad;
};
