-- module: pins
-- uses: base
-- Long-term pins of host memory for a device, from every source, and when each ended.

-- _pin_calls: successful map/unmap calls that start or end a pin. VADDR-only updates
-- (VFIO_DMA_MAP/UNMAP_FLAG_VADDR, QEMU live update) change the host address of an existing
-- mapping, not its life, and are left out; so are the kernel's iommu:map rows (api iommu: a
-- physical address, no vaddr). One pin seen by two sources counts once: QEMU's own log view
-- (qemu_vfio, qemu_iommufd) stands in for the kernel-side ioctl (vfio_type1, iommufd) only in a
-- process where the ioctl was not traced at all.
CREATE OR REPLACE TEMP VIEW _pin_calls AS
WITH calls AS (
    SELECT * FROM dma WHERE api <> 'iommu' AND coalesce(ret, 0) = 0
), kernel_side AS (
    SELECT DISTINCT pid, api FROM calls WHERE api IN ('vfio_type1', 'iommufd')
)
SELECT c.*
FROM calls c
LEFT JOIN kernel_side k
  ON k.pid = c.pid AND k.api = CASE c.api WHEN 'qemu_vfio' THEN 'vfio_type1'
                                          WHEN 'qemu_iommufd' THEN 'iommufd' END
WHERE k.pid IS NULL
  AND NOT (c.api = 'vfio_type1' AND has_flag(c.flags, VFIO_DMA_MAP_FLAG_VADDR()));

-- dma_mappings (materialised): one row per long-term pin, with its end.
-- Sources (dma.api): vfio_type1 MAP_DMA, iommufd IOAS_MAP, QEMU's log view of them (qemu_vfio:
-- vfio_listener_region_add_ram, qemu_iommufd, vhost_vdpa: vhost_vdpa_dma_map), io_uring registered
-- buffers (the kernel pins them with FOLL_LONGTERM as VFIO does; no IOVA, a buffer index).
-- A mapping ends at the first later unmap of the same process, interface, container (fd, IOAS):
--   VFIO/iommufd/QEMU views: an unmap whose IOVA range overlaps it, or VFIO_DMA_UNMAP_FLAG_ALL
--     (these interfaces only ever unmap whole mappings);
--   io_uring: an unmap of its buffer index on the same ring fd, or one with a NULL buf_index
--     (IORING_UNREGISTER_BUFFERS ends every buffer of the ring).
-- Process exit also ends every pin; the trace has no exit events, so a pin of a process that
-- exited stays live to the end of the run here.
-- Columns:
--   pid, comm, api, fd, ioas_id, buf_index  who pinned, through which interface and container
--   event_id, mapped_ns                     the map event
--   unmap_event_id, unmapped_ns             the unmap that ended it; NULL = still mapped at the end
--   vaddr_start, vaddr_end                  host-virtual range pinned, half-open
--   iova_start, iova_end                    I/O virtual range the device uses (NULL for io_uring)
--   flags                                   VFIO_DMA_MAP_FLAG_* / IOMMU_IOAS_MAP_* of the map
CREATE OR REPLACE TEMP TABLE dma_mappings AS
WITH maps AS (
    SELECT * FROM _pin_calls
    WHERE op = 'map' AND vaddr IS NOT NULL AND size IS NOT NULL
      AND (iova IS NOT NULL OR api = 'io_uring')
), unmaps AS (
    SELECT * FROM _pin_calls WHERE op = 'unmap'
), ends AS (
    SELECT m.event_id,
           min(u.ts_ns) AS unmapped_ns,
           arg_min(u.event_id, (u.ts_ns, u.event_id)) AS unmap_event_id
    FROM maps m
    JOIN unmaps u
      ON u.pid = m.pid AND u.api = m.api
     AND u.fd IS NOT DISTINCT FROM m.fd AND u.ioas_id IS NOT DISTINCT FROM m.ioas_id
     AND u.ts_ns > m.ts_ns
     AND CASE WHEN m.api = 'io_uring' THEN u.buf_index IS NULL OR u.buf_index = m.buf_index
              WHEN m.api = 'vfio_type1' AND has_flag(u.flags, VFIO_DMA_UNMAP_FLAG_ALL()) THEN true
              ELSE ranges_overlap(u.iova, u.iova + u.size, m.iova, m.iova + m.size) END
    GROUP BY m.event_id
)
SELECT m.pid, m.comm, m.api, m.fd, m.ioas_id, m.buf_index,
       m.event_id, m.ts_ns AS mapped_ns, e.unmap_event_id, e.unmapped_ns,
       m.vaddr AS vaddr_start, m.vaddr + m.size AS vaddr_end,
       m.iova AS iova_start, m.iova + m.size AS iova_end,
       m.flags
FROM maps m
LEFT JOIN ends e USING (event_id);

-- _pinned_ranges (materialised): the union of the HVA ranges any pin ever covered, in any
-- process, as disjoint sorted ranges. A cheap first filter: an event that touches none of them
-- can never be under a live pin, so detectors drop it before their per-event work (pairing,
-- translation) instead of after.
CREATE OR REPLACE TEMP TABLE _pinned_ranges AS
WITH ranges AS (
    SELECT DISTINCT vaddr_start AS lo, vaddr_end AS hi FROM dma_mappings WHERE vaddr_end > vaddr_start
), marked AS (
    SELECT lo, hi, max(hi) OVER (ORDER BY lo, hi ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM ranges
), islands AS (
    -- A range that starts beyond every earlier end starts a new disjoint range.
    SELECT lo, hi, sum(CASE WHEN reach IS NULL OR lo > reach THEN 1 ELSE 0 END)
                       OVER (ORDER BY lo, hi ROWS UNBOUNDED PRECEDING) AS island
    FROM marked
)
SELECT min(lo) AS lo, max(hi) AS hi FROM islands GROUP BY island;

-- _pinned_buckets (materialised): each of those ranges once per 2 MiB of HVA it touches, and
-- once more under bucket -1, where rows wider than a bucket look.
CREATE OR REPLACE MACRO _pin_bucket(a) AS (a >> 21)::BIGINT;
CREATE OR REPLACE TEMP TABLE _pinned_buckets AS
SELECT lo, hi, unnest(range(_pin_bucket(lo), _pin_bucket(hi - 1) + 1)) AS bucket FROM _pinned_ranges
UNION ALL
SELECT lo, hi, -1 FROM _pinned_ranges;

-- ever_pinned(tbl): the rows of tbl (columns hva_start, hva_end) whose range overlaps HVA that
-- some pin covered at some time (any process; ranges_overlap, so an empty range inside one
-- counts): a superset of the rows under a live pin of their own process. A row within one
-- 2 MiB bucket (nearly every discard and invalidation) meets only the ranges of its bucket, by
-- a hash join; the few others (bucket -1) meet every range. One pass over tbl.
CREATE OR REPLACE MACRO ever_pinned(tbl) AS TABLE
SELECT t.*
FROM query_table(tbl) t
SEMI JOIN _pinned_buckets p
  ON p.bucket = CASE WHEN t.hva_end > t.hva_start
                          AND t.hva_end <= ((_pin_bucket(t.hva_start) + 1)::HUGEINT << 21)
                     THEN _pin_bucket(t.hva_start) ELSE -1 END
 AND ranges_overlap(t.hva_start, t.hva_end, p.lo, p.hi);
