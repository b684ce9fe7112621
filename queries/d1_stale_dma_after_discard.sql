-- id: D1
-- title: Stale device mapping after discard
-- severities: critical, high
-- needs: dma; discards | mmu_notifier
-- proves: A process discarded (madvise DONTNEED/FREE/REMOVE/DONTNEED_LOCKED) or had KVM's MMU
--   notifier invalidate host memory that a VFIO/iommufd DMA mapping of the same process still
--   pinned. The device keeps the old host page while the vCPU faults in a new one: device and
--   guest no longer see the same memory at that GPA. `high`: the overlap, reported per memslot
--   piece (the mapping must be live at the discard: mapped before, not yet unmapped). `critical`:
--   a later fault or SPTE on that GPA, while the mapping is still live, shows a pfn other than the
--   one the IOMMU was given (iommu:map) - divergence confirmed, both pfns in the message.
--   Window: from the DMA map to the discard (or to the diverging access). Evidence: the discard
--   or invalidation, the MMU-notifier invalidations the discard itself raised, the DMA map, and
--   for `critical` the iommu:map and the access. GPA comes from the address-space-0 memslot live
--   at the discard; NULL when no memslot backs the HVA.
WITH discard AS (
    SELECT event_id, ts_ns, end_ns, pid, tid, comm,
           hva_start, hva_start + size AS hva_end,
           CASE WHEN syscall = 'fallocate' THEN 'fallocate(PUNCH_HOLE)'
                ELSE syscall || '(' || CASE advice WHEN 4 THEN 'MADV_DONTNEED' WHEN 8 THEN 'MADV_FREE'
                                                   WHEN 9 THEN 'MADV_REMOVE' WHEN 24 THEN 'MADV_DONTNEED_LOCKED'
                                                   ELSE 'advice ' || advice END || ')'
           END AS what
    FROM discards
    WHERE hva_start IS NOT NULL AND coalesce(ret, 0) = 0
      AND (syscall = 'fallocate' OR advice IN (4, 8, 9, 24))
), inval AS (
    SELECT event_id, ts_ns, pid, tid, comm, hva_start, hva_end
    FROM mmu_notifier
    WHERE event = 'unmap_hva_range'
), caused AS (
    -- An invalidation raised inside a discard syscall of the same thread is that discard's effect.
    -- A thread is in one syscall at a time: its latest discard at or before the invalidation.
    SELECT i.event_id AS inval_id, d.event_id AS discard_id, i.hva_start, i.hva_end
    FROM inval i
    ASOF JOIN discard d ON i.pid = d.pid AND i.tid = d.tid AND i.ts_ns >= d.ts_ns
    WHERE i.ts_ns <= d.end_ns AND i.hva_start < d.hva_end AND d.hva_start < i.hva_end
), trig AS (
    SELECT event_id, ts_ns, pid, comm, hva_start, hva_end, what, 'discard_over_live_mapping' AS kind
    FROM discard
    UNION ALL
    SELECT event_id, ts_ns, pid, comm, hva_start, hva_end, 'an MMU-notifier invalidation',
           'invalidation_over_live_mapping'
    FROM inval
    WHERE event_id NOT IN (SELECT inval_id FROM caused)
), hit AS (
    SELECT t.*, m.event_id AS map_id, m.mapped_ns, m.unmapped_ns, m.api,
           m.vaddr_start, m.iova_start,
           greatest(t.hva_start, m.vaddr_start) AS ov_start,
           least(t.hva_end, m.vaddr_end) AS ov_end
    FROM trig t
    JOIN dma_mappings m
      ON m.pid = t.pid AND m.mapped_ns < t.ts_ns AND (m.unmapped_ns IS NULL OR t.ts_ns < m.unmapped_ns)
     AND t.hva_start < m.vaddr_end AND m.vaddr_start < t.hva_end
), piece AS (
    SELECT h.*,
           greatest(h.ov_start, coalesce(s.hva_start, h.ov_start)) AS p_start,
           least(h.ov_end, coalesce(s.hva_end, h.ov_end)) AS p_end,
           s.gpa_start + (greatest(h.ov_start, s.hva_start) - s.hva_start) AS p_gpa
    FROM hit h
    LEFT JOIN memslot_timeline s
      ON s.pid = h.pid AND s.as_id = 0
     AND s.valid_from <= h.ts_ns AND (s.valid_to IS NULL OR h.ts_ns < s.valid_to)
     AND s.hva_start < h.ov_end AND h.ov_start < s.hva_end
), located AS (
    SELECT *,
           p_gpa + (p_end - p_start) AS p_gpa_end,
           iova_start + (p_start - vaddr_start) AS p_iova,
           iova_start + (p_end - vaddr_start) AS p_iova_end
    FROM piece
), device_page AS (
    SELECT pid, event_id, ts_ns, iova, iova + size AS iova_end, paddr
    FROM dma
    WHERE api = 'iommu' AND op = 'map' AND paddr IS NOT NULL
), later_access AS MATERIALIZED (
    -- Accesses after the discard, page by page over the (few) located pieces: an equi-join on
    -- (pid, page) rather than a range join over every access of the process.
    SELECT p.event_id AS trig_id, p.map_id, p.p_start, p.pid, p.ts_ns, p.p_gpa, p.p_iova,
           a.event_id AS access_id, a.ts_ns AS access_ns, a.gpa AS access_gpa, a.pfn AS cpu_pfn
    FROM (SELECT *, unnest(range((p_gpa // 4096 * 4096)::BIGINT, p_gpa_end::BIGINT, 4096)) AS page
          FROM located WHERE p_gpa IS NOT NULL) p
    JOIN guest_accesses a
      ON a.pid = p.pid AND (a.gpa // 4096 * 4096)::BIGINT = p.page AND a.pfn IS NOT NULL
     AND a.gpa >= p.p_gpa AND a.gpa < p.p_gpa_end
     AND a.ts_ns > p.ts_ns AND (p.unmapped_ns IS NULL OR a.ts_ns < p.unmapped_ns)
), divergence AS (
    -- Offsets in HUGEINT: DuckDB may evaluate them for pairs the range conditions reject.
    SELECT x.trig_id, x.map_id, x.p_start, x.access_id, x.access_ns, x.access_gpa, x.cpu_pfn,
           dp.event_id AS iommu_id, dp.ts_ns AS iommu_ns,
           ((dp.paddr::HUGEINT + x.p_iova + x.access_gpa - x.p_gpa - dp.iova) >> 12)::UBIGINT AS device_pfn
    FROM later_access x
    JOIN device_page dp
      ON dp.pid = x.pid AND dp.ts_ns <= x.ts_ns
     AND x.p_iova::HUGEINT + x.access_gpa - x.p_gpa >= dp.iova
     AND x.p_iova::HUGEINT + x.access_gpa - x.p_gpa < dp.iova_end
    WHERE x.cpu_pfn::HUGEINT <> (dp.paddr::HUGEINT + x.p_iova + x.access_gpa - x.p_gpa - dp.iova) >> 12
    QUALIFY row_number() OVER (PARTITION BY x.trig_id, x.map_id, x.p_start
                               ORDER BY x.access_ns, x.access_id, dp.ts_ns DESC) = 1
)
SELECT
    CASE WHEN d.access_id IS NULL THEN p.kind ELSE 'confirmed_divergence' END AS kind,
    CASE WHEN d.access_id IS NULL THEN 'high' ELSE 'critical' END AS severity,
    p.pid, p.comm,
    least(p.mapped_ns, coalesce(d.iommu_ns, p.mapped_ns)) AS ts_start_ns,
    coalesce(d.access_ns, p.ts_ns) AS ts_end_ns,
    p.p_gpa AS gpa_start, p.p_gpa_end AS gpa_end,
    p.p_start AS hva_start, p.p_end AS hva_end,
    p.p_iova AS iova_start, p.p_iova_end AS iova_end,
    list_sort(list_distinct(
        [p.event_id, p.map_id]
        || coalesce((SELECT list(c.inval_id) FROM caused c
                     WHERE c.discard_id = p.event_id AND c.hva_start < p.p_end AND p.p_start < c.hva_end), [])
        || CASE WHEN d.access_id IS NULL THEN [] ELSE [d.iommu_id, d.access_id] END
    )) AS event_ids,
    CASE WHEN d.access_id IS NULL THEN
        printf('%s by %s (pid %d) dropped HVA 0x%x-0x%x%s while %s DMA mapping (event %d) pinned it for IOVA 0x%x-0x%x: the device keeps the old page and the guest will fault in a new one; discards must wait until the range is unmapped.',
               p.what, p.comm, p.pid, p.p_start, p.p_end,
               CASE WHEN p.p_gpa IS NULL THEN ' (no memslot backs it)'
                    ELSE printf(' (GPA 0x%x-0x%x)', p.p_gpa, p.p_gpa_end) END,
               p.api, p.map_id, p.p_iova, p.p_iova_end)
    ELSE
        printf('%s by %s (pid %d) dropped GPA 0x%x-0x%x under a live %s DMA mapping (event %d); the guest access at GPA 0x%x (event %d) now maps pfn 0x%x while the IOMMU still maps pfn 0x%x for IOVA 0x%x: device and vCPU see different memory.',
               p.what, p.comm, p.pid, p.p_gpa, p.p_gpa_end, p.api, p.map_id,
               d.access_gpa, d.access_id, d.cpu_pfn, d.device_pfn, p.p_iova + (d.access_gpa - p.p_gpa))
    END AS message
FROM located p
LEFT JOIN divergence d
  ON d.trig_id = p.event_id AND d.map_id = p.map_id AND d.p_start = p.p_start
