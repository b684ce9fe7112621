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
--   the message. One finding per mapping and run of discards (a run breaks at a whole second
--   without a discard under that mapping; untimed logs: one run), split into the discards with a confirmed
--   divergence (`critical`) and the rest (`high`): first and last discard, bytes, the GPA
--   ranges (hull in the columns; the first 8 in the message, pieces that touch end to start
--   merged, the number of ranges beside them), evidence capped at the first
--   50 discards with the total in the message - a balloon ignoring the inhibit gives one finding,
--   not one per page. Window: from the map to the last discard (or the diverging access).
--   Evidence: the map, the discards or invalidations, the MMU-notifier invalidations the discards
--   themselves raised, and for `critical` the iommu:map and the access. GPA comes from the
--   address-space-0 memslot live at the discard; NULL when no memslot backs the HVA.
WITH all_inval AS (
    SELECT event_id, ts_ns, pid, tid, comm, hva_start, hva_end
    FROM mmu_notifier
    WHERE event = 'unmap_hva_range'
), inval AS MATERIALIZED (
    -- Only invalidations over HVA some pin ever covered can be findings or evidence (evidence
    -- ranges lie inside a mapping): dropping the rest first spares pairing every invalidation
    -- of the run with its discard (in a VM with a few pinned buffers, nearly all of them).
    FROM ever_pinned(all_inval)
), syscall_discards AS NOT MATERIALIZED (
    -- Not materialised: read where needed (the longest span, the pairing), a few columns each time.
    SELECT event_id, ts_ns, end_ns, by_pid AS pid, tid, hva_start, hva_end
    FROM host_discards WHERE end_ns IS NOT NULL AND hva_start IS NOT NULL
), longest AS (
    -- The longest discard syscall, and the pairing window: as wide, at most 10 ms, so that one
    -- slow call in a flood of discards does not widen every invalidation's window.
    SELECT span, least(span, 10000000) AS w
    FROM (SELECT greatest(max(end_ns - ts_ns), 1) AS span FROM syscall_discards)
), latest AS (
    -- Each invalidation's latest discard of its thread at or before it, when one started within
    -- the window [ts_ns - w, ts_ns]: a hash join on (thread, w-wide time bucket; the window
    -- touches two), not an ASOF join, which sorts every discard of the run for the few
    -- invalidations under a pin.
    -- The order (ts_ns, event_id) packed in one HUGEINT (event_id >= 1 fits in the low 64 bits):
    -- arg_max over scalars is several times cheaper than over a struct key and struct value.
    SELECT inval_id, ts_ns, hva_start, hva_end,
           {'event_id': d_id, 'end_ns': d_end, 'hva_start': d_hva_start, 'hva_end': d_hva_end} AS d
    FROM (
        SELECT i.event_id AS inval_id, any_value(i.ts_ns) AS ts_ns,
               any_value(i.hva_start) AS hva_start, any_value(i.hva_end) AS hva_end,
               arg_max(d.event_id, d.k) AS d_id, arg_max(d.end_ns, d.k) AS d_end,
               arg_max(d.hva_start, d.k) AS d_hva_start, arg_max(d.hva_end, d.k) AS d_hva_end
        FROM (SELECT i.*, l.w, unnest([i.ts_ns // l.w - 1, i.ts_ns // l.w]) AS bucket
              FROM inval i, longest l) i
        JOIN (SELECT s.*, s.ts_ns // l.w AS bucket, (s.ts_ns::HUGEINT << 64) + s.event_id AS k
              FROM syscall_discards s, longest l) d
          ON d.pid = i.pid AND d.tid = i.tid AND d.bucket = i.bucket
         AND d.ts_ns <= i.ts_ns AND d.ts_ns >= i.ts_ns - i.w
        GROUP BY i.event_id
    )
), unresolved AS (
    -- No discard of the thread in the window: the latest one started earlier, and can still be
    -- running only if some discard lasted longer than the window. Then an ASOF join over the
    -- discards of those threads finds it (none when no discard is that slow).
    SELECT i.* FROM inval i, longest l
    WHERE l.span > l.w AND i.event_id NOT IN (SELECT inval_id FROM latest)
), latest_slow AS (
    SELECT i.event_id AS inval_id, i.ts_ns, i.hva_start, i.hva_end,
           {'event_id': d.event_id, 'end_ns': d.end_ns, 'hva_start': d.hva_start, 'hva_end': d.hva_end} AS d
    FROM unresolved i
    ASOF JOIN (SELECT s.* FROM syscall_discards s SEMI JOIN unresolved u ON u.pid = s.pid AND u.tid = s.tid) d
      ON i.pid = d.pid AND i.tid = d.tid AND i.ts_ns >= d.ts_ns
), caused AS MATERIALIZED (
    -- An invalidation raised inside a discard syscall of the same thread is that discard's effect.
    -- A thread is in one syscall at a time: its latest discard at or before the invalidation.
    SELECT inval_id, d.event_id AS discard_id, hva_start, hva_end
    FROM (FROM latest UNION ALL FROM latest_slow)
    WHERE ts_ns <= d.end_ns AND ranges_overlap(hva_start, hva_end, d.hva_start, d.hva_end)
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
           -- The mapping's descriptive columns are looked up per finding at the end (by map_id,
           -- one row per map event), not carried through every piece.
           m.event_id AS map_id, m.unmapped_ns, m.vaddr_start, m.iova_start,
           greatest(t.hva_start, m.vaddr_start) AS hva_start,
           least(t.hva_end, m.vaddr_end) AS hva_end
    FROM trig t
    JOIN dma_mappings m
      ON m.pid = t.pid AND m.mapped_ns < t.ts_ns AND (m.unmapped_ns IS NULL OR t.ts_ns < m.unmapped_ns)
     AND ranges_overlap(t.hva_start, t.hva_end, m.vaddr_start, m.vaddr_end)
), located AS MATERIALIZED (
    SELECT *, piece_hva_start AS p_start, piece_hva_end AS p_end,
           piece_gpa_start AS p_gpa, piece_gpa_end AS p_gpa_end,
           iova_start + (piece_hva_start - vaddr_start) AS p_iova,
           iova_start + (piece_hva_end - vaddr_start) AS p_iova_end,
           CASE WHEN order_only() THEN 0 ELSE ts_ns // 1000000000 END AS sec
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
), seconds AS (
    -- Runs over whole seconds: a run breaks at a second with no discard under the mapping
    -- (untimed logs: one run). Gaps-and-islands over the distinct seconds only - few rows - so
    -- a balloon of millions of pages costs hash joins, not windows over every piece.
    SELECT pid, map_id, kind, sec,
           sec - row_number() OVER (PARTITION BY pid, map_id, kind ORDER BY sec) AS run_no
    FROM (SELECT DISTINCT pid, map_id, kind, sec FROM located)
), runs AS MATERIALIZED (
    -- The pieces with their divergence (at most one per piece) and run, in one materialisation.
    SELECT p.event_id, p.ts_ns, p.pid, p.comm, p.what, p.kind, p.map_id,
           p.p_start, p.p_end, p.p_gpa, p.p_gpa_end, p.p_iova, p.p_iova_end,
           d.access_id, d.access_ns, d.access_gpa, d.cpu_pfn, d.device_pfn, d.iommu_id, d.iommu_ns,
           p.sec, s.run_no, d.access_id IS NOT NULL AS diverged
    FROM located p
    LEFT JOIN divergence d ON d.trig_id = p.event_id AND d.map_id = p.map_id AND d.p_start = p.p_start
    JOIN seconds s
      ON s.pid = p.pid AND s.map_id = p.map_id AND s.kind = p.kind
     -- An equi-join on a column: on the CASE expression DuckDB ran a blockwise nested loop.
     AND s.sec = p.sec
), run_ranges AS (
    SELECT DISTINCT pid, map_id, kind, run_no, diverged, p_gpa, p_gpa_end
    FROM runs WHERE p_gpa IS NOT NULL
), range_starts AS (
    -- Pieces that touch end to start are one range: a range starts where no piece ends.
    SELECT a.* FROM run_ranges a
    ANTI JOIN run_ranges b
      ON b.pid = a.pid AND b.map_id = a.map_id AND b.kind = a.kind AND b.run_no = a.run_no
     AND b.diverged = a.diverged AND b.p_gpa_end = a.p_gpa
), range_ends AS (
    SELECT a.* FROM run_ranges a
    ANTI JOIN run_ranges b
      ON b.pid = a.pid AND b.map_id = a.map_id AND b.kind = a.kind AND b.run_no = a.run_no
     AND b.diverged = a.diverged AND b.p_gpa = a.p_gpa_end
), first_starts AS (
    SELECT * FROM range_starts
    QUALIFY row_number() OVER (PARTITION BY pid, map_id, kind, run_no, diverged ORDER BY p_gpa) <= 8
), range_lists AS (
    SELECT c.pid, c.map_id, c.kind, c.run_no, c.diverged, c.n_ranges,
           list(printf('0x%x-0x%x', f.p_gpa, f.r1) ORDER BY f.p_gpa) AS gpa_ranges
    FROM (SELECT pid, map_id, kind, run_no, diverged, count(*) AS n_ranges FROM range_starts GROUP BY ALL) c
    JOIN (SELECT f.pid, f.map_id, f.kind, f.run_no, f.diverged, f.p_gpa, min(e.p_gpa_end) AS r1
          FROM first_starts f
          JOIN range_ends e
            ON e.pid = f.pid AND e.map_id = f.map_id AND e.kind = f.kind AND e.run_no = f.run_no
           AND e.diverged = f.diverged AND e.p_gpa_end > f.p_gpa
          GROUP BY ALL) f
      USING (pid, map_id, kind, run_no, diverged)
    GROUP BY ALL
), run_triggers AS (
    -- The discards of each run, counted once each, and the first 50 of them: a hash aggregate and
    -- a bounded min(), not a sorted list of every discard of the run cut to 50.
    SELECT pid, map_id, kind, run_no, diverged, count(*) AS n_triggers, min(event_id, 50) AS trigger_ids
    FROM (SELECT DISTINCT pid, map_id, kind, run_no, diverged, event_id FROM runs)
    GROUP BY ALL
), grouped_pieces AS (
    SELECT pid, map_id, kind, run_no, diverged,
           any_value(comm) AS comm,
           string_agg(DISTINCT what, ', ' ORDER BY what) AS what,
           sum(p_end - p_start) AS bytes,
           min(p_start) AS hva_lo, max(p_end) AS hva_hi,
           min(p_gpa) AS gpa_lo, max(p_gpa_end) AS gpa_hi,
           min(p_iova) AS iova_lo, max(p_iova_end) AS iova_hi,
           bool_or(p_gpa IS NULL) AS some_unbacked,
           min(ts_ns) AS first_ns, max(ts_ns) AS last_ns,
           max(coalesce(access_ns, ts_ns)) AS end_ns,
           min(iommu_ns) AS first_iommu_ns,
           arg_min({'access_id': access_id, 'access_gpa': access_gpa, 'cpu_pfn': cpu_pfn, 'device_pfn': device_pfn,
                    'iommu_id': iommu_id, 'p_gpa': p_gpa, 'p_gpa_end': p_gpa_end, 'p_iova': p_iova, 'what': what},
                   (access_ns, access_id)) FILTER (WHERE access_id IS NOT NULL) AS div
    FROM runs
    GROUP BY pid, map_id, kind, run_no, diverged
), grouped AS (
    SELECT g.*, t.n_triggers, t.trigger_ids, m.api, m.buf_index, m.mapped_ns
    FROM grouped_pieces g JOIN run_triggers t USING (pid, map_id, kind, run_no, diverged)
    JOIN dma_mappings m ON m.event_id = g.map_id
), caused_ids AS (
    -- The invalidations the listed discards raised over the run's range: evidence, not findings.
    SELECT g.pid, g.map_id, g.kind, g.run_no, g.diverged, list(DISTINCT c.inval_id ORDER BY c.inval_id)[1:50] AS ids
    FROM (SELECT pid, map_id, kind, run_no, diverged, hva_lo, hva_hi, unnest(trigger_ids) AS trig_id FROM grouped) g
    JOIN caused c ON c.discard_id = g.trig_id AND ranges_overlap(c.hva_start, c.hva_end, g.hva_lo, g.hva_hi)
    GROUP BY ALL
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
        [g.map_id] || g.trigger_ids || coalesce(ci.ids, [])
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
LEFT JOIN caused_ids ci USING (pid, map_id, kind, run_no, diverged)
