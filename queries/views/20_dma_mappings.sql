-- dma_mappings: one row per device DMA mapping made through VFIO type1 or iommufd, with its end.
-- A mapping ends at the first later successful unmap by the same process on the same container
-- (and IOAS) whose IOVA range overlaps it, or at a VFIO_DMA_UNMAP_FLAG_ALL unmap: type1 and
-- iommufd only ever unmap whole mappings. VADDR-only updates (VFIO_DMA_MAP/UNMAP_FLAG_VADDR, used
-- by QEMU live update) change the host address of an existing mapping, not its life, and are
-- left out. The kernel's iommu:map rows (api = 'iommu') carry no vaddr and are not mappings here.
-- Columns:
--   pid, comm, api, fd, ioas_id     who mapped, through which interface and container
--   event_id, mapped_ns             the map event
--   unmap_event_id, unmapped_ns     the unmap that ended it; NULL = still mapped when the run ended
--   vaddr_start, vaddr_end          host-virtual range pinned for the device, half-open
--   iova_start, iova_end            I/O virtual range the device uses, half-open
--   flags                           VFIO_DMA_MAP_FLAG_* / IOMMU_IOAS_MAP_* of the map
CREATE OR REPLACE VIEW dma_mappings AS
WITH maps AS (
    SELECT * FROM dma
    WHERE op = 'map' AND api IN ('vfio_type1', 'iommufd') AND coalesce(ret, 0) = 0
      AND vaddr IS NOT NULL AND iova IS NOT NULL AND size IS NOT NULL
      AND NOT (api = 'vfio_type1' AND coalesce(flags, 0) & 4 <> 0)
), unmaps AS (
    SELECT * FROM dma
    WHERE op = 'unmap' AND api IN ('vfio_type1', 'iommufd') AND coalesce(ret, 0) = 0
      AND NOT (api = 'vfio_type1' AND coalesce(flags, 0) & 4 <> 0)
), ends AS (
    SELECT m.event_id,
           min(u.ts_ns) AS unmapped_ns,
           arg_min(u.event_id, (u.ts_ns, u.event_id)) AS unmap_event_id
    FROM maps m
    JOIN unmaps u
      ON u.pid = m.pid AND u.api = m.api
     AND u.fd IS NOT DISTINCT FROM m.fd AND u.ioas_id IS NOT DISTINCT FROM m.ioas_id
     AND u.ts_ns > m.ts_ns
     AND ((u.api = 'vfio_type1' AND coalesce(u.flags, 0) & 2 <> 0)
          OR (u.iova < m.iova + m.size AND m.iova < u.iova + u.size))
    GROUP BY m.event_id
)
SELECT m.pid, m.comm, m.api, m.fd, m.ioas_id,
       m.event_id, m.ts_ns AS mapped_ns, e.unmap_event_id, e.unmapped_ns,
       m.vaddr AS vaddr_start, m.vaddr + m.size AS vaddr_end,
       m.iova AS iova_start, m.iova + m.size AS iova_end,
       m.flags
FROM maps m
LEFT JOIN ends e USING (event_id);
