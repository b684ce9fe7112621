"""Collector of device DMA mappings: VFIO type1 and iommufd ioctls, iommu:map/unmap tracepoints."""

import numpy as np
import pyarrow as pa

from collectors.base import IOCTL_TRACEPOINTS, Collector, Ring, constant, envelope_columns, labels, nullable, record_dtype
from pipeline.constants import (IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP, VFIO_GROUP_SET_CONTAINER,
                                VFIO_GROUP_UNSET_CONTAINER, VFIO_IOMMU_DIRTY_PAGES,
                                VFIO_IOMMU_DIRTY_PAGES_FLAG_START, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
                                VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA)

DTYPE = record_dtype([("ret", "<i8"), ("cmd", "<u4"), ("fd", "<i4"), ("flags", "<u4"), ("ioas_id", "<u4"),
                      ("vaddr", "<u8"), ("iova", "<u8"), ("size", "<u8"), ("out", "<u8"), ("arg", "<u8"),
                      ("container_fd", "<i4"), ("pad", "<u4")])
IOMMU_DTYPE = record_dtype([("iova", "<u8"), ("paddr", "<u8"), ("size", "<u8"), ("unmapped", "<u8"),
                            ("op", "<u4"), ("pad", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    cmd = rec["cmd"]
    out = {}
    ok = rec["ret"] == 0

    dma = np.isin(cmd, [VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP])
    if dma.any():
        d, dok = rec[dma], ok[dma]
        c = d["cmd"]
        iommufd = (c == IOMMU_IOAS_MAP) | (c == IOMMU_IOAS_UNMAP)
        is_map = (c == VFIO_IOMMU_MAP_DMA) | (c == IOMMU_IOAS_MAP)
        # IOAS_MAP without FIXED_IOVA lets the kernel choose the IOVA and write it back.
        iova = np.where((c == IOMMU_IOAS_MAP) & dok, d["out"], d["iova"])
        cols = envelope_columns(d, source)
        cols.update(
            api=labels(("vfio_type1", "iommufd"), iommufd),
            op=labels(("unmap", "map"), is_map),
            fd=pa.array(d["fd"]),
            ioas_id=nullable(d["ioas_id"], ~iommufd),
            vaddr=nullable(d["vaddr"], ~is_map),
            iova=pa.array(iova),
            size=pa.array(d["size"]),
            flags=nullable(d["flags"], c == IOMMU_IOAS_UNMAP),
            unmapped=nullable(d["out"], is_map | ~dok),
            ret=pa.array(d["ret"]),
        )
        out["dma"] = pa.table(cols)

    groups = (cmd == VFIO_GROUP_SET_CONTAINER) | (cmd == VFIO_GROUP_UNSET_CONTAINER)
    if groups.any():
        g = rec[groups]
        attach = g["cmd"] == VFIO_GROUP_SET_CONTAINER
        cols = envelope_columns(g, source)
        cols.update(op=labels(("detach", "attach"), attach), group_fd=pa.array(g["fd"]),
                    container_fd=nullable(g["container_fd"], ~attach), ret=pa.array(g["ret"]))
        out["vfio_groups"] = pa.table(cols)

    dirty = cmd == VFIO_IOMMU_DIRTY_PAGES
    if dirty.any():
        v = rec[dirty]
        f = v["flags"]
        code = np.select([f & VFIO_IOMMU_DIRTY_PAGES_FLAG_START != 0, f & VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP != 0],
                         [0, 1], 2)
        get = code == 2
        cols = envelope_columns(v, source)
        cols.update(op=labels(("vfio_dirty_start", "vfio_dirty_stop", "vfio_dirty_get_bitmap"), code),
                    fd=pa.array(v["fd"]), iova=nullable(v["iova"], ~get), size=nullable(v["size"], ~get),
                    ret=pa.array(v["ret"]))
        out["dirty_log"] = pa.table(cols)
    return out


def decode_iommu(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    unmap = rec["op"] == 1
    cols = envelope_columns(rec, source, with_end=False)
    cols.update(api=constant("iommu", len(rec)), op=labels(("map", "unmap"), rec["op"]),
                iova=pa.array(rec["iova"]), size=pa.array(rec["size"]),
                paddr=nullable(rec["paddr"], unmap), unmapped=nullable(rec["unmapped"], ~unmap))
    return {"dma": pa.table(cols)}


COLLECTOR = Collector(
    name="vfio", families=("dma", "vfio_groups", "dirty_log"), source="vfio.bpf.c",
    uses_ioctl=True, requires=IOCTL_TRACEPOINTS, tracepoints=("iommu:map", "iommu:unmap"),
    # A guest's MAP_DMA calls are few, but the IOMMU maps each physically contiguous chunk:
    # a 16 GiB guest of scattered 4 KiB pages is millions of iommu:map in one burst.
    rings=(Ring("vfio", DTYPE, decode, "vfio.h", "vfio_rec", pages=256, inflight=True),
           Ring("iommu", IOMMU_DTYPE, decode_iommu, "vfio.h", "iommu_rec", pages=8192)),
)
