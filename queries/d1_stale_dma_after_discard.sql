-- id: D1
-- title: Stale device mapping after discard
-- severities: critical, high
-- needs: dma; discards | mmu_notifier | qemu
-- uses: memslots, pins, discards, accesses
-- relevant: dma_mappings; host_discards | mmu_notifier
-- proves: A process discarded host memory (host_discards: madvise DONTNEED/FREE/REMOVE/
--   DONTNEED_LOCKED, fallocate(PUNCH_HOLE) placed through the file's mappings, QEMU's
--   ram_block_discard_range, balloon pages, virtio-mem unplug - one discard counted once), or had
--   KVM's MMU notifier invalidate it, while a long-term pin of the same process (dma_mappings:
--   VFIO type1, iommufd, QEMU's log view of them, vhost-vdpa, io_uring registered buffers) was
--   live over it (mapped before, not yet unmapped). The device keeps the old host page while the
--   vCPU faults in a new one: device and guest no longer see the same memory there. `high`: the
--   overlap. `critical`: a later fault or SPTE on that GPA, while the mapping is still live, shows
--   a pfn other than the one the IOMMU was given (iommu:map) - divergence confirmed, both pfns in
--   the message. One finding per mapping and run of discards (a run breaks after 1 s without a
--   discard under that mapping; untimed logs: one run), split into the discards with a confirmed
--   divergence (`critical`) and the rest (`high`): first and last discard, bytes, the GPA
--   ranges (hull in the columns, the first ranges in the message), evidence capped at the first
--   50 discards with the total in the message - a balloon ignoring the inhibit gives one finding,
--   not one per page. Window: from the map to the last discard (or the diverging access).
--   Evidence: the map, the discards or invalidations, the MMU-notifier invalidations the discards
--   themselves raised, and for `critical` the iommu:map and the access. GPA comes from the
--   address-space-0 memslot live at the discard; NULL when no memslot backs the HVA.
WITH inval AS (
    SELECT event_id, ts_ns, pid, tid, comm, hva_start, hva_end
    FROM mmu_notifier
    WHERE event = 'unmap_hva_range'
), syscall_discards AS (
    SELECT DISTINCT event_id, ts_ns, end_ns, by_pid AS pid, tid, hva_start, hva_end
    FROM host_discards WHERE end_ns IS NOT NULL AND hva_start IS NOT NULL
), caused AS (
    -- An invalidation raised inside a discard syscall of the same thread is that discard's effect.
    -- A thread is in one syscall at a time: its latest discard at or before the invalidation.
    SELECT i.event_id AS inval_id, d.event_id AS discard_id, i.hva_start, i.hva_end
    FROM inval i
    ASOF JOIN syscall_discards d ON i.pid = d.pid AND i.tid = d.tid AND i.ts_ns >= d.ts_ns
    WHERE i.ts_ns <= d.end_ns AND ranges_overlap(i.hva_start, i.hva_end, d.hva_start, d.hva_end)
), trig AS (
    SELECT event_id, ts_ns, pid, comm, hva_start, hva_end, what, 'discard_over_live_mapping' AS kind
    FROM host_discards
    UNION ALL
    SELECT event_id, ts_ns, pid, comm, hva_start, hva_end, 'an MMU-notifier invalidation',
           'invalidation_over_live_mapping'
    FROM inval
    WHERE event_id NOT IN (SELECT inval_id FROM caused)
), hit AS (
    SELECT t.event_id, t.ts_ns, t.pid, t.comm, t.what, t.kind,
           m.event_id AS map_id, m.mapped_ns, m.unmapped_ns, m.api, m.buf_index,
           m.vaddr_start, m.iova_start,
           greatest(t.hva_start, m.vaddr_start) AS hva_start,
           least(t.hva_end, m.vaddr_end) AS hva_end
    FROM trig t
    JOIN dma_mappings m
      ON m.pid = t.pid AND m.mapped_ns < t.ts_ns AND (m.unmapped_ns IS NULL OR t.ts_ns < m.unmapped_ns)
     AND ranges_overlap(t.hva_start, t.hva_end, m.vaddr_start, m.vaddr_end)
), located AS (
    SELECT *, piece_hva_start AS p_start, piece_hva_end AS p_end,
           piece_gpa_start AS p_gpa, piece_gpa_end AS p_gpa_end,
           iova_start + (piece_hva_start - vaddr_start) AS p_iova,
           iova_start + (piece_hva_end - vaddr_start) AS p_iova_end
    FROM hva_to_gpa(hit)
), device_page AS (
    SELECT pid, event_id, ts_ns, iova, iova + size AS iova_end, paddr
    FROM dma
    WHERE api = 'iommu' AND op = 'map' AND paddr IS NOT NULL
), later_access AS MATERIALIZED (
    -- Accesses after the discard, page by page over the located pieces: an equi-join on
    -- (pid, page) rather than a range join over every access of the process.
    SELECT p.event_id AS trig_id, p.map_id, p.p_start, p.pid, p.ts_ns, p.p_gpa, p.p_iova,
           a.event_id AS access_id, a.ts_ns AS access_ns, a.gpa AS access_gpa, a.pfn AS cpu_pfn
    FROM (SELECT *, unnest(pages(p_gpa, p_gpa_end)) AS page
          FROM located WHERE p_gpa IS NOT NULL AND p_iova IS NOT NULL) p
    JOIN vcpu_accesses a
      ON a.pid = p.pid AND page_floor(a.gpa)::BIGINT = p.page AND a.pfn IS NOT NULL
     AND a.gpa >= p.p_gpa AND a.gpa < p.p_gpa_end
     AND a.ts_ns > p.ts_ns AND (p.unmapped_ns IS NULL OR a.ts_ns < p.unmapped_ns)
), divergence AS (
    -- Offsets in HUGEINT: DuckDB may evaluate them for pairs the range conditions reject.
    SELECT x.trig_id, x.map_id, x.p_start, x.access_id, x.access_ns, x.access_gpa, x.cpu_pfn,
           dp.event_id AS iommu_id, dp.ts_ns AS iommu_ns,
           ((dp.paddr::HUGEINT + x.p_iova + x.access_gpa - x.p_gpa - dp.iova) // PAGE_SIZE())::UBIGINT AS device_pfn
    FROM later_access x
    JOIN device_page dp
      ON dp.pid = x.pid AND dp.ts_ns <= x.ts_ns
     AND x.p_iova::HUGEINT + x.access_gpa - x.p_gpa >= dp.iova
     AND x.p_iova::HUGEINT + x.access_gpa - x.p_gpa < dp.iova_end
    WHERE x.cpu_pfn::HUGEINT <> (dp.paddr::HUGEINT + x.p_iova + x.access_gpa - x.p_gpa - dp.iova) // PAGE_SIZE()
    QUALIFY row_number() OVER (PARTITION BY x.trig_id, x.map_id, x.p_start
                               ORDER BY x.access_ns, x.access_id, dp.ts_ns DESC) = 1
), caused_ids AS (
    SELECT p.event_id, p.map_id, p.p_start, list(c.inval_id ORDER BY c.inval_id) AS ids
    FROM located p
    JOIN caused c ON c.discard_id = p.event_id AND ranges_overlap(c.hva_start, c.hva_end, p.p_start, p.p_end)
    GROUP BY ALL
), pieces AS (
    SELECT p.event_id, p.ts_ns, p.pid, p.comm, p.what, p.kind, p.map_id, p.mapped_ns, p.api, p.buf_index,
           p.p_start, p.p_end, p.p_gpa, p.p_gpa_end, p.p_iova, p.p_iova_end,
           d.access_id, d.access_ns, d.access_gpa, d.cpu_pfn, d.device_pfn, d.iommu_id, d.iommu_ns,
           coalesce(c.ids, []) AS caused
    FROM located p
    LEFT JOIN divergence d ON d.trig_id = p.event_id AND d.map_id = p.map_id AND d.p_start = p.p_start
    LEFT JOIN caused_ids c ON c.event_id = p.event_id AND c.map_id = p.map_id AND c.p_start = p.p_start
), runs AS (
    -- A run of discards under one mapping breaks after 1 s without one (untimed: never).
    SELECT *, access_id IS NOT NULL AS diverged, sum(CASE WHEN prev_ns IS NULL OR (NOT order_only() AND ts_ns - prev_ns > 1000000000) THEN 1 ELSE 0 END)
                  OVER (PARTITION BY pid, map_id, kind ORDER BY ts_ns, event_id, p_start ROWS UNBOUNDED PRECEDING) AS run_no
    FROM (SELECT *, lag(ts_ns) OVER (PARTITION BY pid, map_id, kind ORDER BY ts_ns, event_id, p_start) AS prev_ns
          FROM pieces)
), merged AS (
    -- Contiguous GPA pieces of one run become one range for the message.
    SELECT *, sum(CASE WHEN p_gpa IS NULL OR reach IS NULL OR p_gpa > reach THEN 1 ELSE 0 END)
                  OVER (PARTITION BY pid, map_id, kind, run_no, diverged ORDER BY p_gpa, p_start, event_id ROWS UNBOUNDED PRECEDING) AS range_no
    FROM (SELECT *, max(p_gpa_end) OVER (PARTITION BY pid, map_id, kind, run_no, diverged ORDER BY p_gpa, p_start, event_id
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
          FROM runs)
), ranges AS (
    SELECT pid, map_id, kind, run_no, diverged, range_no, min(p_gpa) AS r0, max(p_gpa_end) AS r1
    FROM merged GROUP BY ALL
), range_lists AS (
    SELECT pid, map_id, kind, run_no, diverged, count(*) FILTER (WHERE r0 IS NOT NULL) AS n_ranges,
           list(printf('0x%x-0x%x', r0, r1) ORDER BY r0) FILTER (WHERE r0 IS NOT NULL) AS gpa_ranges
    FROM ranges GROUP BY ALL
), grouped AS (
    SELECT pid, map_id, kind, run_no, diverged,
           any_value(comm) AS comm, any_value(api) AS api, any_value(buf_index) AS buf_index,
           any_value(mapped_ns) AS mapped_ns,
           string_agg(DISTINCT what, ', ' ORDER BY what) AS what,
           count(DISTINCT event_id) AS n_triggers,
           sum(p_end - p_start) AS bytes,
           min(p_start) AS hva_lo, max(p_end) AS hva_hi,
           min(p_gpa) AS gpa_lo, max(p_gpa_end) AS gpa_hi,
           min(p_iova) AS iova_lo, max(p_iova_end) AS iova_hi,
           bool_or(p_gpa IS NULL) AS some_unbacked,
           min(ts_ns) AS first_ns, max(ts_ns) AS last_ns,
           max(coalesce(access_ns, ts_ns)) AS end_ns,
           min(iommu_ns) AS first_iommu_ns,
           list(DISTINCT event_id ORDER BY event_id)[1:50] AS trigger_ids,
           list_distinct(flatten(list(caused)))[1:50] AS caused_ids,
           arg_min({'access_id': access_id, 'access_gpa': access_gpa, 'cpu_pfn': cpu_pfn, 'device_pfn': device_pfn,
                    'iommu_id': iommu_id, 'p_gpa': p_gpa, 'p_gpa_end': p_gpa_end, 'p_iova': p_iova, 'what': what},
                   (access_ns, access_id)) FILTER (WHERE access_id IS NOT NULL) AS div
    FROM merged
    GROUP BY pid, map_id, kind, run_no, diverged
)
SELECT
    CASE WHEN g.div IS NULL THEN g.kind ELSE 'confirmed_divergence' END AS kind,
    CASE WHEN g.div IS NULL THEN 'high' ELSE 'critical' END AS severity,
    g.pid, g.comm,
    least(g.mapped_ns, coalesce(g.first_iommu_ns, g.mapped_ns)) AS ts_start_ns,
    g.end_ns AS ts_end_ns,
    g.gpa_lo AS gpa_start, g.gpa_hi AS gpa_end,
    g.hva_lo AS hva_start, g.hva_hi AS hva_end,
    g.iova_lo AS iova_start, g.iova_hi AS iova_end,
    list_sort(list_distinct(
        [g.map_id] || g.trigger_ids || g.caused_ids
        || CASE WHEN g.div IS NULL THEN [] ELSE [g.div.iommu_id, g.div.access_id] END
    )) AS event_ids,
    CASE WHEN g.div IS NOT NULL THEN
        printf('%s by %s (pid %d) dropped GPA 0x%x-0x%x under a live %s DMA mapping (event %d); the guest access at GPA 0x%x (event %d) now maps pfn 0x%x while the IOMMU still maps pfn 0x%x for IOVA 0x%x: device and vCPU see different memory%s.',
               g.div.what, g.comm, g.pid, g.div.p_gpa, g.div.p_gpa_end, g.api, g.map_id,
               g.div.access_gpa, g.div.access_id, g.div.cpu_pfn, g.div.device_pfn,
               g.div.p_iova + (g.div.access_gpa - g.div.p_gpa),
               CASE WHEN g.n_triggers > 1 THEN printf(' (the first of %d diverging discards in this run, GPA 0x%x-0x%x)', g.n_triggers, g.gpa_lo, g.gpa_hi) ELSE '' END)
    WHEN g.n_triggers = 1 AND coalesce(r.n_ranges, 0) <= 1 THEN
        printf('%s by %s (pid %d) dropped HVA 0x%x-0x%x%s while %s: the device keeps the old page and the guest will fault in a new one; discards must wait until the range is unmapped.',
               g.what, g.comm, g.pid, g.hva_lo, g.hva_hi,
               CASE WHEN g.gpa_lo IS NULL THEN ' (no memslot backs it)'
                    ELSE printf(' (GPA 0x%x-0x%x)', g.gpa_lo, g.gpa_hi) END,
               CASE WHEN g.api = 'io_uring' THEN printf('io_uring registered buffer %d (event %d) pinned it', g.buf_index, g.map_id)
                    ELSE printf('%s DMA mapping (event %d) pinned it for IOVA 0x%x-0x%x', g.api, g.map_id, g.iova_lo, g.iova_hi) END)
    ELSE
        printf('%d discards (%s) by %s (pid %d) over %s dropped %d bytes of HVA 0x%x-0x%x (GPA %s%s%s) while %s: the device keeps the old pages and the guest will fault in new ones; discards must wait until the range is unmapped%s.',
               g.n_triggers, g.what, g.comm, g.pid, elapsed(g.last_ns - g.first_ns), g.bytes, g.hva_lo, g.hva_hi,
               coalesce(array_to_string(r.gpa_ranges[1:8], ', '), 'none'),
               CASE WHEN r.n_ranges > 8 THEN printf(' and %d more ranges', r.n_ranges - 8) ELSE '' END,
               CASE WHEN g.some_unbacked THEN '; some of it no memslot backs' ELSE '' END,
               CASE WHEN g.api = 'io_uring' THEN printf('io_uring registered buffer %d (event %d) pinned them', g.buf_index, g.map_id)
                    ELSE printf('%s DMA mapping (event %d) pinned them for IOVA 0x%x-0x%x', g.api, g.map_id, g.iova_lo, g.iova_hi) END,
               CASE WHEN g.n_triggers > 50 THEN printf('; evidence lists the first 50 of %d', g.n_triggers) ELSE '' END)
    END AS message
FROM grouped g
LEFT JOIN range_lists r USING (pid, map_id, kind, run_no, diverged)
