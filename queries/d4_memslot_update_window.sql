-- id: D4
-- title: Non-atomic memslot update
-- severities: critical, high, medium, info
-- needs: memslots
-- proves: KVM applies KVM_SET_USER_MEMORY_REGION one slot at a time, so splitting, shrinking or
--   moving a slot deletes it and re-creates pieces; in between, that GPA range has no memslot and a
--   vCPU touching it exits as MMIO or takes a #PF the guest never expected. `medium`
--   (kind update_window): a delete followed by creates in the same VM and address space that
--   re-cover part of the deleted range; the GPA range is the hull of the re-covered parts and the
--   window runs from the delete to the last re-create (evidence: the delete and the creates).
--   `info`: the same before the process's first vCPU activity ("before first vCPU run").
--   `critical` (access_in_window): a vCPU access to a GPA of a re-covered part after the delete and
--   before that part's re-create. `high` (dirty_log_lost): a slot with KVM_MEM_LOG_DIRTY_PAGES
--   deleted, moved or stripped of dirty logging after a guest write to it that no dirty-log
--   harvest (KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG on the slot, KVM_RESET_DIRTY_RINGS) followed:
--   that dirty bitmap goes with the old slot. Without traced vCPU activity for the process, windows
--   stay `medium` and say so.
WITH ok AS (
    SELECT * FROM memslots WHERE coalesce(ret, 0) = 0
), first_vcpu AS (
    SELECT pid, min(ts_ns) AS first_ns FROM guest_accesses GROUP BY pid
), deletes AS (
    SELECT d.event_id, d.ts_ns, d.pid, d.comm, d.vm_fd, d.as_id, d.slot, t.gpa_start, t.gpa_end
    FROM ok d
    JOIN memslot_timeline t ON t.ended_by = d.event_id
    WHERE d.size = 0
), recover AS (
    -- The first period after the delete to cover each re-covered piece of the deleted range.
    SELECT d.event_id AS del_id, p.event_id AS cre_id, p.slot AS cre_slot, p.valid_from,
           greatest(d.gpa_start, p.gpa_start) AS g0, least(d.gpa_end, p.gpa_end) AS g1
    FROM deletes d
    JOIN memslot_timeline p
      ON p.pid = d.pid AND p.vm_fd IS NOT DISTINCT FROM d.vm_fd AND p.as_id = d.as_id
     AND p.valid_from > d.ts_ns AND p.gpa_start < d.gpa_end AND d.gpa_start < p.gpa_end
    WHERE NOT EXISTS (
        SELECT 1 FROM memslot_timeline q
        WHERE q.pid = d.pid AND q.vm_fd IS NOT DISTINCT FROM d.vm_fd AND q.as_id = d.as_id
          AND q.valid_from > d.ts_ns AND q.valid_from < p.valid_from
          AND q.gpa_start < least(d.gpa_end, p.gpa_end) AND greatest(d.gpa_start, p.gpa_start) < q.gpa_end)
), windows AS (
    SELECT d.event_id, d.ts_ns, d.pid, d.comm, d.as_id, d.slot,
           max(r.valid_from) AS closed_ns, min(r.g0) AS gap_start, max(r.g1) AS gap_end,
           list(r.cre_id ORDER BY r.cre_id) AS cre_ids,
           list(DISTINCT r.cre_slot ORDER BY r.cre_slot) AS new_slots,
           f.first_ns
    FROM deletes d
    JOIN recover r ON r.del_id = d.event_id
    LEFT JOIN first_vcpu f ON f.pid = d.pid
    GROUP BY ALL
), window_findings AS (
    SELECT 'update_window' AS kind,
           CASE WHEN first_ns IS NOT NULL AND ts_ns < first_ns THEN 'info' ELSE 'medium' END AS severity,
           pid, comm, ts_ns AS ts_start_ns, closed_ns AS ts_end_ns,
           gap_start AS gpa_start, gap_end AS gpa_end,
           list_sort([event_id] || cre_ids) AS event_ids,
           printf('Memslot %d (address space %d) of %s (pid %d) was deleted and GPA 0x%x-0x%x re-created as slot(s) %s %.1f us later: a vCPU touching it in between exits as MMIO or faults%s.',
                  slot, as_id, comm, pid, gap_start, gap_end, array_to_string(new_slots, ', '),
                  (closed_ns - ts_ns) / 1000.0,
                  CASE WHEN first_ns IS NULL THEN ' (no vCPU activity traced for this process, so it may have run)'
                       WHEN ts_ns < first_ns THEN '; before first vCPU run'
                       ELSE '; update the slots atomically (QEMU >= 8.0 pauses vCPUs around such commits)' END)
               AS message
    FROM windows
), open_windows AS (
    -- How many re-covered pieces are waiting for their re-create at each instant, so that only
    -- accesses made while some window was open meet the range join below.
    SELECT pid, ts_ns, sum(sum(delta)) OVER (PARTITION BY pid ORDER BY ts_ns ROWS UNBOUNDED PRECEDING) AS open
    FROM (SELECT d.pid, d.ts_ns, 1 AS delta FROM deletes d JOIN recover r ON r.del_id = d.event_id
          UNION ALL
          SELECT d.pid, r.valid_from, -1 FROM deletes d JOIN recover r ON r.del_id = d.event_id)
    GROUP BY pid, ts_ns
), in_window AS (
    SELECT a.*
    FROM guest_accesses a
    ASOF JOIN open_windows o ON a.pid = o.pid AND a.ts_ns >= o.ts_ns
    WHERE o.open > 0 AND a.gpa IS NOT NULL
), access_findings AS (
    SELECT 'access_in_window' AS kind, 'critical' AS severity, d.pid, d.comm,
           d.ts_ns AS ts_start_ns, a.ts_ns AS ts_end_ns, r.g0 AS gpa_start, r.g1 AS gpa_end,
           list_sort([d.event_id, r.cre_id, a.event_id]) AS event_ids,
           printf('vCPU%s of %s (pid %d) accessed GPA 0x%x (%s) %.1f us after memslot %d was deleted and %.1f us before slot %d re-created it: the guest saw no memory there.',
                  coalesce(' ' || a.vcpu, ''), d.comm, d.pid, a.gpa, a.via, (a.ts_ns - d.ts_ns) / 1000.0,
                  d.slot, (r.valid_from - a.ts_ns) / 1000.0, r.cre_slot) AS message
    FROM deletes d
    JOIN recover r ON r.del_id = d.event_id
    JOIN in_window a
      ON a.pid = d.pid AND a.gpa >= r.g0 AND a.gpa < r.g1
     AND a.ts_ns > d.ts_ns AND a.ts_ns < r.valid_from
    QUALIFY row_number() OVER (PARTITION BY d.event_id, r.cre_id ORDER BY a.ts_ns, a.event_id) = 1
), logged AS (
    -- Periods with dirty logging whose end drops the slot's dirty bitmap.
    SELECT t.*, e.ts_ns AS end_ns, m.comm,
           CASE WHEN e.size = 0 THEN 'deleted' WHEN e.gpa <> t.gpa_start THEN 'moved'
                ELSE 'stripped of dirty logging' END AS how
    FROM memslot_timeline t
    JOIN ok e ON e.event_id = t.ended_by
    JOIN ok m ON m.event_id = t.event_id
    WHERE t.flags & 1 <> 0 AND (e.size = 0 OR e.gpa <> t.gpa_start OR e.flags & 1 = 0)
), last_write AS (
    SELECT l.event_id AS period_id, a.event_id AS write_id, a.ts_ns AS write_ns, a.gpa
    FROM logged l
    JOIN guest_accesses a
      ON a.pid = l.pid AND a.ts_ns >= l.valid_from AND a.ts_ns < l.valid_to
     AND ((a.write AND a.gpa >= l.gpa_start AND a.gpa < l.gpa_end)
          OR (a.via = 'dirty_ring_push' AND a.slot = l.slot AND a.as_id = l.as_id))
    QUALIFY row_number() OVER (PARTITION BY l.event_id ORDER BY a.ts_ns DESC, a.event_id DESC) = 1
), lost_findings AS (
    SELECT 'dirty_log_lost' AS kind, 'high' AS severity, l.pid, l.comm,
           w.write_ns AS ts_start_ns, l.end_ns AS ts_end_ns, l.gpa_start, l.gpa_end,
           list_sort([l.event_id, w.write_id, l.ended_by]) AS event_ids,
           printf('Memslot %d (GPA 0x%x-0x%x) of %s (pid %d) was %s with dirty logging on, %.1f us after a guest write (event %d) that no dirty-log harvest collected: its dirty pages are lost to migration.',
                  l.slot, l.gpa_start, l.gpa_end, l.comm, l.pid, l.how, (l.end_ns - w.write_ns) / 1000.0,
                  w.write_id) AS message
    FROM logged l
    JOIN last_write w ON w.period_id = l.event_id
    WHERE NOT EXISTS (
        SELECT 1 FROM dirty_log h
        WHERE h.pid = l.pid AND h.fd IS NOT DISTINCT FROM l.vm_fd AND coalesce(h.ret, 0) = 0
          AND h.ts_ns > w.write_ns AND h.ts_ns < l.end_ns
          AND (h.op = 'kvm_reset_dirty_rings'
               -- slot NULL: the source did not see the ioctl's struct (ftrace); assume it was this slot
               OR (h.op IN ('kvm_get_dirty_log', 'kvm_clear_dirty_log')
                   AND (h.slot IS NULL OR (h.slot = l.slot AND h.as_id = l.as_id)))))
)
SELECT kind, severity, pid, comm, ts_start_ns, ts_end_ns, gpa_start, gpa_end,
       NULL::UBIGINT AS hva_start, NULL::UBIGINT AS hva_end, NULL::UBIGINT AS iova_start, NULL::UBIGINT AS iova_end,
       event_ids, message
FROM (SELECT * FROM window_findings UNION ALL SELECT * FROM access_findings UNION ALL SELECT * FROM lost_findings)
