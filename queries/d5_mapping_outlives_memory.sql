-- id: D5
-- title: Device mapping outlives guest memory
-- severities: high
-- needs: dma; memslots | dirty_log
-- uses: memslots, pins
-- relevant: dma_mappings; memslot_ends | dirty_log
-- proves: `high` (memory_removed_under_mapping): a memslot was deleted or moved while a DMA
--   mapping of the same process stayed live over it - linked by vaddr inside the slot's HVA range,
--   or by IOVA == GPA - and the memory did not all come back at the same HVA->GPA translation
--   (in one slot or several) before the mapping ended: the device can still write memory the guest no longer sees there. Window:
--   from the DMA map to its unmap (or the memslot change if it never ended); evidence: the map,
--   the memslot change, the unmap. `high` (unmap_without_dirty_bitmap): a VFIO type1 UNMAP_DMA
--   while device dirty tracking was on for the container (VFIO_IOMMU_DIRTY_PAGES start, no stop
--   yet) without VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: the dirty pages of that range are lost to
--   migration ("lost in the ether"); evidence: the start and the unmap.
WITH gone AS (
    SELECT t.*, t.valid_to AS gone_ns, t.ended_by AS gone_id, t.ended_how AS how
    FROM memslot_ends t
    WHERE t.as_id = 0 AND t.ended_how IN ('deleted', 'moved')
), hit AS (
    SELECT g.pid, g.slot, g.how, g.gone_ns, g.gone_id, g.gpa_start AS s_gpa, g.hva_start AS s_hva,
           m.event_id AS map_id, m.mapped_ns, m.unmapped_ns, m.unmap_event_id, m.api, m.comm,
           m.vaddr_start, m.iova_start,
           -- Prefer the exact link (the pinned host pages are the slot's); else IOVA == GPA.
           m.vaddr_start < g.hva_end AND g.hva_start < m.vaddr_end AS by_vaddr,
           CASE WHEN m.vaddr_start < g.hva_end AND g.hva_start < m.vaddr_end
                THEN greatest(m.vaddr_start, g.hva_start)
                ELSE g.hva_start + (greatest(m.iova_start, g.gpa_start) - g.gpa_start) END AS h0,
           CASE WHEN m.vaddr_start < g.hva_end AND g.hva_start < m.vaddr_end
                THEN least(m.vaddr_end, g.hva_end)
                ELSE g.hva_start + (least(m.iova_end, g.gpa_end) - g.gpa_start) END AS h1
    FROM gone g
    JOIN dma_mappings m
      -- io_uring buffers have no IOVA: only the vaddr link applies to them.
      ON m.pid = g.pid AND m.mapped_ns < g.gone_ns AND (m.unmapped_ns IS NULL OR m.unmapped_ns > g.gone_ns)
     AND ((m.vaddr_start < g.hva_end AND g.hva_start < m.vaddr_end)
          OR (m.iova_start < g.gpa_end AND g.gpa_start < m.iova_end))
), removed AS (
    SELECT 'memory_removed_under_mapping' AS kind, 'high' AS severity, h.pid, h.comm,
           h.mapped_ns AS ts_start_ns, coalesce(h.unmapped_ns, h.gone_ns) AS ts_end_ns,
           h.s_gpa + (h.h0 - h.s_hva) AS gpa_start, h.s_gpa + (h.h1 - h.s_hva) AS gpa_end,
           h.h0 AS hva_start, h.h1 AS hva_end,
           CASE WHEN h.by_vaddr THEN h.iova_start + (h.h0 - h.vaddr_start) ELSE h.s_gpa + (h.h0 - h.s_hva) END
               AS iova_start,
           CASE WHEN h.by_vaddr THEN h.iova_start + (h.h1 - h.vaddr_start) ELSE h.s_gpa + (h.h1 - h.s_hva) END
               AS iova_end,
           list_sort([h.map_id, h.gone_id] || CASE WHEN h.unmap_event_id IS NULL THEN [] ELSE [h.unmap_event_id] END)
               AS event_ids,
           printf('Memslot %d of %s (pid %d) was %s (event %d) while %s DMA mapping (event %d) still covered GPA 0x%x-0x%x%s: the device can write memory the guest no longer sees there; unmap DMA before removing or moving guest RAM.',
                  h.slot, h.comm, h.pid, h.how, h.gone_id, h.api, h.map_id,
                  h.s_gpa + (h.h0 - h.s_hva), h.s_gpa + (h.h1 - h.s_hva),
                  CASE WHEN h.unmapped_ns IS NULL THEN ' until the end of the run'
                       ELSE ' for ' || elapsed(h.unmapped_ns - h.gone_ns) || ' more' END) AS message
    FROM hit h
    WHERE coalesce((
        -- Bytes of the overlap that came back at the same GPA before the mapping ended (a split
        -- re-adds it as several slots); distinct ranges so a piece re-added twice counts once.
        SELECT sum(c1 - c0) FROM (
            SELECT DISTINCT greatest(p.hva_start, h.h0) AS c0, least(p.hva_end, h.h1) AS c1
            FROM memslot_timeline p
            WHERE p.pid = h.pid AND p.as_id = 0 AND p.valid_from > h.gone_ns
              AND (h.unmapped_ns IS NULL OR p.valid_from <= h.unmapped_ns)
              AND p.hva_start < h.h1 AND h.h0 < p.hva_end
              AND p.hva_start::HUGEINT - p.gpa_start::HUGEINT = h.s_hva::HUGEINT - h.s_gpa::HUGEINT)), 0)
        < h.h1 - h.h0
), tracking AS (
    SELECT s.pid, s.fd, s.event_id AS start_id, s.ts_ns AS start_ns,
           (SELECT min(x.ts_ns) FROM dirty_log x
            WHERE x.pid = s.pid AND x.fd IS NOT DISTINCT FROM s.fd AND x.op = 'vfio_dirty_stop'
              AND coalesce(x.ret, 0) = 0 AND x.ts_ns > s.ts_ns) AS stop_ns
    FROM dirty_log s
    WHERE s.op = 'vfio_dirty_start' AND coalesce(s.ret, 0) = 0
), unmapped AS (
    SELECT 'unmap_without_dirty_bitmap' AS kind, 'high' AS severity, u.pid, u.comm,
           t.start_ns AS ts_start_ns, u.ts_ns AS ts_end_ns,
           CASE WHEN NOT has_flag(u.flags, VFIO_DMA_UNMAP_FLAG_ALL()) THEN u.iova END AS iova_start,
           CASE WHEN NOT has_flag(u.flags, VFIO_DMA_UNMAP_FLAG_ALL()) THEN u.iova + u.size END AS iova_end,
           [t.start_id, u.event_id] AS event_ids,
           printf('%s (pid %d) unmapped %s on container fd %d while device dirty tracking was on (event %d) without VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: pages the device dirtied there are lost to migration.',
                  u.comm, u.pid,
                  CASE WHEN has_flag(u.flags, VFIO_DMA_UNMAP_FLAG_ALL()) THEN 'every mapping'
                       ELSE printf('IOVA 0x%x-0x%x', u.iova, u.iova + u.size) END,
                  u.fd, t.start_id) AS message
    FROM dma u
    JOIN tracking t
      ON u.pid = t.pid AND u.fd IS NOT DISTINCT FROM t.fd AND u.ts_ns > t.start_ns
     AND (t.stop_ns IS NULL OR u.ts_ns < t.stop_ns)
    WHERE u.api = 'vfio_type1' AND u.op = 'unmap' AND coalesce(u.ret, 0) = 0
      AND NOT has_flag(u.flags, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP())
    QUALIFY row_number() OVER (PARTITION BY u.event_id ORDER BY t.start_ns DESC) = 1
)
SELECT * FROM removed
UNION ALL BY NAME
SELECT * FROM unmapped
