-- id: D4
-- title: Non-atomic memslot update
-- severities: critical, high, medium, info
-- needs: memslots
-- uses: memslots, vcpu, accesses
-- relevant: memslot_ends
-- proves: KVM applies KVM_SET_USER_MEMORY_REGION one slot at a time, so splitting, shrinking or
--   moving a slot deletes it and re-creates pieces; in between, that GPA range has no memslot and a
--   vCPU touching it exits as MMIO or takes a #PF the guest never expected. A window (kind
--   update_window) is a delete followed by creates in the same VM and address space that
--   re-cover part of the deleted range; the GPA range is the hull of the re-covered parts and the
--   window runs from the delete to the last re-create (evidence: the delete and the creates). A
--   delete of a slot created before the trace began is a window too: its range starts at the
--   delete's GPA and, its size being unknown, ends where the first later create covering that
--   GPA ends. Severity follows from evidence: `high` when a vCPU of the process was inside
--   KVM_RUN during the window (vcpu_in_run: a traced KVM_RUN, a QEMU kvm_run_exit /
--   kvm_vcpu_ioctl, a kvm_userspace_exit or a guest access); `info` before the process's first
--   vCPU run ("before first vCPU run"), or when the window was unreachable (KVM_RUN traced entry
--   to exit and no vCPU inside it during the window, inside QEMU's
--   ioctl_inhibit_begin/end, or every QEMU the sessions name is >= 8.0, which inhibits vCPU
--   ioctls around such commits); else `medium`, saying what would decide it. `info` (kind
--   region_off_on): the range came back identical (same GPA, size and HVA) or a QEMU
--   memory_commit lies between the delete and the re-create - a region switched off and on by
--   two transactions (a guest clearing then setting memory decoding in a BAR), not a non-atomic
--   update; the message names the pci_cfg_write to PCI_COMMAND that cleared decoding when the
--   log has it. `critical` (access_in_window): a vCPU access (vcpu_accesses: never a zap) to a
--   GPA of a re-covered part after the delete and before that part's re-create. `high`
--   (dirty_log_lost): a slot with KVM_MEM_LOG_DIRTY_PAGES deleted, moved or stripped of dirty
--   logging after a guest write to it that no dirty-log harvest (KVM_GET_DIRTY_LOG /
--   KVM_CLEAR_DIRTY_LOG on the slot, KVM_RESET_DIRTY_RINGS) followed: that dirty bitmap goes with
--   the old slot. Untimed logs: order decides; messages say "order only" instead of durations.
WITH bounded AS (
    SELECT d.*, d.gpa_end IS NULL AS size_unknown,
           coalesce(d.gpa_end, (
               SELECT arg_min(p.gpa_end, (p.valid_from, p.event_id)) FROM memslot_timeline p
               WHERE p.pid = d.pid AND p.vm_fd IS NOT DISTINCT FROM d.vm_fd AND p.as_id = d.as_id
                 AND p.valid_from > d.ts_ns AND p.gpa_start <= d.gpa_start AND d.gpa_start < p.gpa_end))
               AS d_end
    FROM memslot_deletes d
), deletes AS (
    SELECT * FROM bounded WHERE d_end IS NOT NULL
), recover AS (
    -- The first period after the delete to cover each re-covered piece of the deleted range.
    SELECT d.event_id AS del_id, p.event_id AS cre_id, p.slot AS cre_slot, p.valid_from,
           greatest(d.gpa_start, p.gpa_start) AS g0, least(d.d_end, p.gpa_end) AS g1,
           p.gpa_start = d.gpa_start AND p.gpa_end = d.d_end AND p.hva_start IS NOT DISTINCT FROM d.hva_start
               AND NOT d.size_unknown AS identical
    FROM deletes d
    JOIN memslot_timeline p
      ON p.pid = d.pid AND p.vm_fd IS NOT DISTINCT FROM d.vm_fd AND p.as_id = d.as_id
     AND p.valid_from > d.ts_ns AND ranges_overlap(p.gpa_start, p.gpa_end, d.gpa_start, d.d_end)
    WHERE NOT EXISTS (
        SELECT 1 FROM memslot_timeline q
        WHERE q.pid = d.pid AND q.vm_fd IS NOT DISTINCT FROM d.vm_fd AND q.as_id = d.as_id
          AND q.valid_from > d.ts_ns AND q.valid_from < p.valid_from
          AND ranges_overlap(q.gpa_start, q.gpa_end, greatest(d.gpa_start, p.gpa_start), least(d.d_end, p.gpa_end)))
), windows AS (
    SELECT d.event_id, d.ts_ns, d.pid, d.comm, d.as_id, d.slot, d.size_unknown,
           max(r.valid_from) AS closed_ns, min(r.valid_from) AS first_recreate_ns,
           min(r.g0) AS gap_start, max(r.g1) AS gap_end,
           list(r.cre_id ORDER BY r.cre_id) AS cre_ids,
           list(DISTINCT r.cre_slot ORDER BY r.cre_slot) AS new_slots,
           count(*) = 1 AND bool_and(r.identical) AS identical
    FROM deletes d
    JOIN recover r ON r.del_id = d.event_id
    GROUP BY ALL
), commits AS (
    SELECT pid, ts_ns, event_id FROM qemu WHERE event = 'memory_commit'
), inhibit_marks AS (
    SELECT pid, ts_ns, event_id, event FROM qemu WHERE event IN ('ioctl_inhibit_begin', 'ioctl_inhibit_end')
), command_writes AS (
    -- Writes to a PCI device's command register (QEMU's pci_cfg_write), with the decoding bit.
    SELECT pid, ts_ns, event_id, detail, cfg_value,
           has_flag(cfg_value, PCI_COMMAND_MEMORY()) AS decoding
    FROM qemu WHERE event = 'pci_cfg_write' AND cfg_offset = PCI_COMMAND()
), window_width AS (
    -- Time buckets as wide as the mean window: a window spans its length / width + 2 buckets at
    -- most (about 3 on average) and a run meets only the windows of its bucket, by a hash join,
    -- instead of every window of its process or an ASOF join that sorts every run.
    SELECT greatest(avg(closed_ns - ts_ns), 1)::BIGINT AS width FROM windows
), window_buckets AS (
    SELECT w.event_id AS window_id, w.pid, w.ts_ns, w.closed_ns,
           unnest(range(w.ts_ns // b.width, w.closed_ns // b.width + 1)) AS bucket
    FROM windows w, window_width b
), run_in_window AS (
    -- vCPU runs in a window [ts_ns, closed_ns) in two exact parts: runs starting inside it
    -- (end not before start), through the window's time buckets; runs starting at or before
    -- it and still inside KVM_RUN at ts_ns can only be ones that last (an instant, end = start,
    -- never spans), a hash join over those few.
    SELECT w.window_id, v.run_start_ns, v.event_id
    FROM window_buckets w
    JOIN (SELECT v.*, v.run_start_ns // b.width AS bucket FROM vcpu_in_run v, window_width b
          WHERE v.run_end_ns IS NULL OR v.run_end_ns >= v.run_start_ns) v
      ON v.pid = w.pid AND v.bucket = w.bucket
     AND v.run_start_ns > w.ts_ns AND v.run_start_ns < w.closed_ns
    UNION ALL
    SELECT w.event_id, v.run_start_ns, v.event_id
    FROM windows w
    JOIN vcpu_in_run v
      ON v.pid = w.pid AND v.run_start_ns < w.closed_ns
     AND (v.run_end_ns IS NULL OR v.run_end_ns > w.ts_ns)
    WHERE v.run_end_ns IS DISTINCT FROM v.run_start_ns
), run_evidence AS (
    SELECT window_id, arg_max(event_id, (run_start_ns, event_id)) AS run_evidence
    FROM run_in_window GROUP BY window_id
), judged AS (
    SELECT w.*,
           f.first_ns,
           EXISTS (SELECT 1 FROM commits c
                   WHERE c.pid = w.pid AND c.ts_ns > w.ts_ns AND c.ts_ns < w.first_recreate_ns) AS two_transactions,
           re.run_evidence,
           k.pid IS NOT NULL AS run_known,
           t.pid IS NOT NULL AS run_traced,
           (SELECT arg_max(m.event, (m.ts_ns, m.event_id)) = 'ioctl_inhibit_begin' FROM inhibit_marks m
            WHERE m.pid = w.pid AND m.ts_ns <= w.ts_ns)
             AND NOT EXISTS (SELECT 1 FROM inhibit_marks m
                             WHERE m.pid = w.pid AND m.event = 'ioctl_inhibit_end'
                               AND m.ts_ns > w.ts_ns AND m.ts_ns < w.closed_ns) AS inhibited,
           (SELECT bool_and(s.qemu_major >= 8) FROM sessions s
            WHERE s.qemu_major IS NOT NULL AND (s.pid IS NULL OR s.pid = w.pid)) AS qemu_inhibits,
           (SELECT min(s.qemu_major || '.' || s.qemu_minor) FROM sessions s
            WHERE s.qemu_major IS NOT NULL AND (s.pid IS NULL OR s.pid = w.pid)) AS qemu_version,
           (SELECT arg_max(c.event_id, (c.ts_ns, c.event_id)) FROM command_writes c
            WHERE c.pid = w.pid AND c.ts_ns <= w.ts_ns) AS command_id
    FROM windows w
    LEFT JOIN vcpu_first_run f ON f.pid = w.pid
    LEFT JOIN vcpu_run_known k ON k.pid = w.pid
    LEFT JOIN kvm_run_traced t ON t.pid = w.pid
    LEFT JOIN run_evidence re ON re.window_id = w.event_id
), classified AS (
    SELECT j.*, c.decoding AS command_decoding, c.detail AS command_device, c.cfg_value AS command_value,
           CASE WHEN j.identical OR j.two_transactions THEN 'off_on'
                WHEN j.run_evidence IS NOT NULL THEN 'reachable'
                WHEN j.first_ns IS NOT NULL AND j.ts_ns < j.first_ns THEN 'before_first_run'
                WHEN j.run_traced THEN 'not_running'
                WHEN coalesce(j.inhibited, false) THEN 'inhibited'
                WHEN j.qemu_inhibits THEN 'new_qemu'
                ELSE 'unknown' END AS verdict
    FROM judged j
    LEFT JOIN command_writes c ON c.event_id = j.command_id
), window_findings AS (
    SELECT CASE verdict WHEN 'off_on' THEN 'region_off_on' ELSE 'update_window' END AS kind,
           CASE verdict WHEN 'reachable' THEN 'high' WHEN 'unknown' THEN 'medium' ELSE 'info' END AS severity,
           pid, comm, ts_ns AS ts_start_ns, closed_ns AS ts_end_ns,
           gap_start AS gpa_start, gap_end AS gpa_end,
           list_sort([event_id] || cre_ids
                     || CASE WHEN verdict = 'reachable' THEN [run_evidence] ELSE [] END
                     || CASE WHEN verdict = 'off_on' AND command_decoding = false THEN [command_id] ELSE [] END)
               AS event_ids,
           CASE WHEN verdict = 'off_on' THEN
               printf('Memslot %d (address space %d) of %s (pid %d) was deleted and GPA 0x%x-0x%x came back %s %s later: a region switched off and on by two memory transactions%s, not a non-atomic update%s.',
                      slot, as_id, comm, pid, gap_start, gap_end,
                      CASE WHEN identical THEN 'identical (same GPA, size and HVA)' ELSE 'after a QEMU memory transaction commit' END,
                      elapsed(closed_ns - ts_ns),
                      CASE WHEN command_decoding = false
                           THEN printf(' (the guest cleared memory decoding: pci_cfg_write %s PCI_COMMAND <- 0x%x, event %d)',
                                       coalesce(command_device, ''), command_value, command_id)
                           ELSE '' END,
                      CASE WHEN first_ns IS NOT NULL AND ts_ns < first_ns THEN '; before first vCPU run' ELSE '' END)
           ELSE
               printf('Memslot %d (address space %d) of %s (pid %d) was deleted and GPA 0x%x-0x%x re-created as slot(s) %s %s later%s: a vCPU touching it in between exits as MMIO or faults; %s.',
                      slot, as_id, comm, pid, gap_start, gap_end, array_to_string(new_slots, ', '),
                      elapsed(closed_ns - ts_ns),
                      CASE WHEN size_unknown THEN ' (the slot predates the trace: its size is taken from the re-create)' ELSE '' END,
                      CASE verdict
                          WHEN 'reachable' THEN printf('a vCPU was inside KVM_RUN during the window (event %d): update the slots atomically (QEMU >= 8.0 pauses vCPUs around such commits)', run_evidence)
                          WHEN 'before_first_run' THEN 'before first vCPU run'
                          WHEN 'not_running' THEN 'unreachable: KVM_RUN was traced and no vCPU was inside it during the window'
                          WHEN 'inhibited' THEN 'unreachable: QEMU held vCPU ioctls off (ioctl_inhibit_begin) around it'
                          WHEN 'new_qemu' THEN printf('unreachable: QEMU %s inhibits vCPU ioctls around commits that delete and re-add overlapping ranges', qemu_version)
                          ELSE CASE WHEN run_known
                                    THEN 'no vCPU was seen inside KVM_RUN during it, but KVM_RUN entries and exits were not traced, so one may have run: trace KVM_RUN (collector vcpu_runs) or give the QEMU version (>= 8.0 inhibits vCPUs) to decide'
                                    ELSE 'no vCPU activity traced for this process, so it may have run: trace KVM_RUN (collector vcpu_runs) or give the QEMU version (>= 8.0 inhibits vCPUs) to decide' END
                      END)
           END AS message
    FROM classified
), gaps AS (
    -- Each re-covered piece while it waits for its re-create.
    SELECT d.event_id AS del_id, d.pid, d.comm, d.slot, d.ts_ns AS del_ns,
           r.cre_id, r.cre_slot, r.valid_from, r.g0, r.g1
    FROM deletes d JOIN recover r ON r.del_id = d.event_id
), gap_width AS (
    -- Time buckets as wide as the mean gap (as window_width): each access meets the few gaps
    -- of its bucket by a hash join.
    SELECT greatest(avg(valid_from - del_ns), 1)::BIGINT AS width FROM gaps
), gap_buckets AS (
    SELECT g.*, unnest(range(g.del_ns // b.width, g.valid_from // b.width + 1)) AS bucket
    FROM gaps g, gap_width b
), access_findings AS (
    SELECT 'access_in_window' AS kind, 'critical' AS severity, g.pid, g.comm,
           g.del_ns AS ts_start_ns, a.ts_ns AS ts_end_ns, g.g0 AS gpa_start, g.g1 AS gpa_end,
           list_sort([g.del_id, g.cre_id, a.event_id]) AS event_ids,
           printf('vCPU%s of %s (pid %d) accessed GPA 0x%x (%s) %s after memslot %d was deleted and %s before slot %d re-created it: the guest saw no memory there.',
                  coalesce(' ' || a.vcpu, ''), g.comm, g.pid, a.gpa, a.via, elapsed(a.ts_ns - g.del_ns),
                  g.slot, elapsed(g.valid_from - a.ts_ns), g.cre_slot) AS message
    FROM gap_buckets g
    JOIN (SELECT a.*, a.ts_ns // b.width AS bucket FROM vcpu_accesses a, gap_width b) a
      ON a.pid = g.pid AND a.bucket = g.bucket AND a.gpa >= g.g0 AND a.gpa < g.g1
     AND a.ts_ns > g.del_ns AND a.ts_ns < g.valid_from
    QUALIFY row_number() OVER (PARTITION BY g.del_id, g.cre_id ORDER BY a.ts_ns, a.event_id) = 1
), logged AS (
    -- Periods with dirty logging whose end drops the slot's dirty bitmap.
    SELECT t.*, CASE WHEN t.ended_how IN ('deleted', 'moved') THEN t.ended_how
                     ELSE 'stripped of dirty logging' END AS how
    FROM memslot_ends t
    WHERE has_flag(t.flags, KVM_MEM_LOG_DIRTY_PAGES())
      AND (t.ended_how IN ('deleted', 'moved')
           OR (t.end_flags IS NOT NULL AND NOT has_flag(t.end_flags, KVM_MEM_LOG_DIRTY_PAGES())))
), logged_width AS (
    SELECT greatest(avg(valid_to - valid_from), 1)::BIGINT AS width FROM logged
), logged_buckets AS (
    -- Each logged period once per 1 GiB of GPA and time bucket (as wide as the mean period) it
    -- touches: a write meets only the periods of its bucket pair, by a hash join.
    SELECT *, unnest(range(valid_from // width, valid_to // width + 1)) AS time_bucket
    FROM (SELECT l.event_id, l.pid, l.valid_from, l.valid_to, l.gpa_start, l.gpa_end, b.width,
                 unnest(range((l.gpa_start >> 30)::BIGINT, ((l.gpa_end - 1) >> 30)::BIGINT + 1)) AS gpa_bucket
          FROM logged l, logged_width b)
), last_write AS (
    SELECT l.event_id AS period_id,
           arg_max({'write_id': a.event_id, 'write_ns': a.ts_ns, 'gpa': a.gpa}, (a.ts_ns, a.event_id)) AS w
    FROM logged_buckets l
    JOIN (SELECT a.*, (a.gpa >> 30)::BIGINT AS gpa_bucket, a.ts_ns // b.width AS time_bucket
          FROM vcpu_accesses a, logged_width b
          WHERE a.write OR a.via = 'dirty_ring_push') a
      ON a.pid = l.pid AND a.gpa_bucket = l.gpa_bucket AND a.time_bucket = l.time_bucket
     AND a.ts_ns >= l.valid_from AND a.ts_ns < l.valid_to AND a.gpa >= l.gpa_start AND a.gpa < l.gpa_end
    GROUP BY l.event_id
), lost_findings AS (
    SELECT 'dirty_log_lost' AS kind, 'high' AS severity, l.pid, l.comm,
           w.write_ns AS ts_start_ns, l.valid_to AS ts_end_ns, l.gpa_start, l.gpa_end,
           list_sort([l.event_id, w.write_id, l.ended_by]) AS event_ids,
           printf('Memslot %d (GPA 0x%x-0x%x) of %s (pid %d) was %s with dirty logging on, %s after a guest write (event %d) that no dirty-log harvest collected: its dirty pages are lost to migration.',
                  l.slot, l.gpa_start, l.gpa_end, l.comm, l.pid, l.how, elapsed(l.valid_to - w.write_ns),
                  w.write_id) AS message
    FROM logged l
    JOIN (SELECT period_id, w.write_id, w.write_ns, w.gpa FROM last_write) w ON w.period_id = l.event_id
    WHERE NOT EXISTS (
        SELECT 1 FROM dirty_log h
        WHERE h.pid = l.pid AND h.fd IS NOT DISTINCT FROM l.vm_fd AND coalesce(h.ret, 0) = 0
          AND h.ts_ns > w.write_ns AND h.ts_ns < l.valid_to
          AND (h.op = 'kvm_reset_dirty_rings'
               -- slot NULL: the source did not see the ioctl's struct (ftrace); assume it was this slot
               OR (h.op IN ('kvm_get_dirty_log', 'kvm_clear_dirty_log')
                   AND (h.slot IS NULL OR (h.slot = l.slot AND h.as_id = l.as_id)))))
)
SELECT * FROM window_findings
UNION ALL BY NAME SELECT * FROM access_findings
UNION ALL BY NAME SELECT * FROM lost_findings
