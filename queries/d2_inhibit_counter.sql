-- id: D2
-- title: Balloon inhibit counter mistakes
-- severities: critical, high, medium
-- needs: vfio_groups | qemu
-- uses: inhibits, discards
-- relevant: discard_inhibit_calls | vfio_group_changes | discard_inhibit_queries
-- proves: QEMU must not discard guest RAM (balloon, free page reporting) while a VFIO group is
--   attached; the inhibitor is a counter: one increment per attached group. The count is the
--   running sum of successful ram_block_discard_disable / ram_block_uncoordinated_discard_disable
--   / qemu_balloon_inhibit calls (+1 true, -1 false); groups are VFIO_GROUP_SET_CONTAINER minus
--   UNSET_CONTAINER. `high` counter_underflow: a release while the count is already 0. `high`
--   missing_inhibit: attached groups > count for longer than 100 ms (QEMU changes the two in
--   adjacent calls). `critical` discard_while_inhibited: discards of guest RAM (the guest_discards
--   view) while the count
--   or the attached groups are > 0, one finding per stretch of unchanged state (the first 50 event
--   ids, the total in the message); D1 findings on the same discards are linked. `medium`
--   inhibit_leak: count still > 0 100 ms after the last group detached. `medium` boolean_use: QEMU
--   itself (ram_block_discard_is_disabled / qemu_balloon_is_inhibited return) answers "not
--   inhibited" while the traced calls leave inhibits outstanding: a second inhibit did not raise
--   its counter. When a process has no
--   inhibit events, the count is derived from its attached groups and the finding says so.
--   Untimed logs (order only): the 100 ms grace periods cannot be measured, so a mismatch or a
--   leak counts only when it lasts to the end of the run. Without inhibit calls, inhibit queries
--   or VFIO groups the detector has nothing to judge ("ran: no relevant events").
WITH inhibit AS (
    SELECT pid, ts_ns, event_id, comm, delta AS d_inhibit, 0 AS d_groups, event AS what
    FROM discard_inhibit_calls
), groups AS (
    SELECT pid, ts_ns, event_id, comm, 0 AS d_inhibit, delta AS d_groups, 'VFIO group ' || op AS what
    FROM vfio_group_changes
), derived AS (
    SELECT DISTINCT g.pid FROM groups g WHERE g.pid NOT IN (SELECT pid FROM inhibit)
), changes AS (
    SELECT * FROM inhibit UNION ALL SELECT * FROM groups
), timeline AS (
    -- The state after each change: inhibit count (derived = attached groups) and attached groups.
    SELECT c.*,
           CASE WHEN c.pid IN (SELECT pid FROM derived) THEN sum(d_groups) OVER w
                ELSE sum(d_inhibit) OVER w END AS count,
           sum(d_groups) OVER w AS attached,
           c.pid IN (SELECT pid FROM derived) AS is_derived,
           lead(ts_ns) OVER (PARTITION BY pid ORDER BY ts_ns, event_id) AS next_ns,
           lead(event_id) OVER (PARTITION BY pid ORDER BY ts_ns, event_id) AS next_id
    FROM changes c
    WINDOW w AS (PARTITION BY pid ORDER BY ts_ns, event_id ROWS UNBOUNDED PRECEDING)
), underflow AS (
    SELECT 'counter_underflow' AS kind, 'high' AS severity, pid, comm, ts_ns AS ts_start_ns, ts_ns AS ts_end_ns,
           [event_id] AS event_ids,
           printf('%s(false) by %s (pid %d) released a discard inhibit while the count was already 0: inhibit and release calls are unbalanced, so ballooning may be allowed while a device pins guest RAM.',
                  what, comm, pid) AS message
    FROM timeline
    WHERE d_inhibit = -1 AND count - d_inhibit <= 0
), islands AS (
    -- Stretches of consecutive states in which attached groups exceed the count.
    SELECT *, sum(CASE WHEN mism IS DISTINCT FROM prev_mism THEN 1 ELSE 0 END)
                  OVER (PARTITION BY pid ORDER BY ts_ns, event_id ROWS UNBOUNDED PRECEDING) AS island
    -- A count below 0 only follows an underflow (reported above); QEMU's counter stays at 0.
    FROM (SELECT *, attached > greatest(count, 0) AS mism,
                 lag(attached > greatest(count, 0)) OVER (PARTITION BY pid ORDER BY ts_ns, event_id) AS prev_mism
          FROM timeline)
), missing AS (
    SELECT 'missing_inhibit' AS kind, 'high' AS severity, pid, any_value(comm) AS comm,
           min(ts_ns) AS ts_start_ns, max(coalesce(next_ns, ts_ns)) AS ts_end_ns,
           list_sort(list_distinct(list(event_id) || coalesce(list(next_id) FILTER (WHERE next_id IS NOT NULL), [])))
               AS event_ids,
           printf('%s (pid %d) had %d VFIO group(s) attached but a discard inhibit count of %d for %s: a group was attached without raising the balloon inhibitor.',
                  any_value(comm), pid, max(attached), min(count),
                  CASE WHEN bool_or(next_ns IS NULL) THEN 'the rest of the run'
                       ELSE printf('%.1f ms', (max(next_ns) - min(ts_ns)) / 1e6) END) AS message
    FROM islands
    WHERE mism AND NOT is_derived
    GROUP BY pid, island
    -- QEMU changes groups and count in adjacent calls: 100 ms of grace, where time is known.
    HAVING bool_or(next_ns IS NULL) OR (NOT order_only() AND max(next_ns) - min(ts_ns) > 100000000)
), leak AS (
    SELECT 'inhibit_leak' AS kind, 'medium' AS severity, pid, comm, ts_ns AS ts_start_ns,
           coalesce(next_ns, ts_ns) AS ts_end_ns,
           [event_id] AS event_ids,
           printf('The last VFIO group of %s (pid %d) detached but the discard inhibit count stayed at %d for %s: an inhibit was not released, so ballooning stays off.',
                  comm, pid, count, CASE WHEN next_ns IS NULL THEN 'the rest of the run'
                                         ELSE printf('%.1f ms', (next_ns - ts_ns) / 1e6) END) AS message
    FROM timeline
    WHERE d_groups = -1 AND attached = 0 AND count > 0 AND NOT is_derived
      AND (next_ns IS NULL OR (NOT order_only() AND next_ns - ts_ns > 100000000))
), boolean_use AS (
    -- QEMU's own answer (ram_block_discard_is_disabled / qemu_balloon_is_inhibited) against the
    -- inhibits its callers left outstanding.
    SELECT 'boolean_use' AS kind, 'medium' AS severity, q.pid, any_value(q.comm) AS comm,
           any_value(t.ts_ns) AS ts_start_ns, max(q.ts_ns) AS ts_end_ns,
           list_sort([t.event_id] || list(q.event_id ORDER BY q.ts_ns, q.event_id)[1:50]) AS event_ids,
           printf('%s() of %s (pid %d) answered "not inhibited" %d time(s) while %d discard inhibit(s) were still outstanding: the inhibitor acts as a boolean, so one release undid several inhibits and ballooning runs beside attached devices.',
                  any_value(q.event), any_value(q.comm), q.pid, count(*), any_value(t.count)) AS message
    FROM discard_inhibit_queries q
    ASOF JOIN timeline t ON q.pid = t.pid AND q.ts_ns >= t.ts_ns
    WHERE q.ret = 0
      AND t.count > 0 AND NOT t.is_derived
    GROUP BY q.pid, t.event_id
), held_since AS (
    SELECT pid, min(ts_ns) AS first_ns FROM timeline WHERE count > 0 OR attached > 0 GROUP BY pid
), inhibited_discards AS (
    -- The state each discard met, before translating to GPA: only discards made while an
    -- inhibit or a group was held are translated. Discards before any was held are dropped by
    -- a hash join first: the ASOF join sorts all it is given, even for no state at all.
    SELECT h.*, t.event_id AS state_id, t.count, t.attached, t.is_derived
    FROM (SELECT h.* FROM host_discards h JOIN held_since s ON s.pid = h.pid AND h.ts_ns >= s.first_ns) h
    ASOF JOIN timeline t ON h.pid = t.pid AND h.ts_ns >= t.ts_ns
    WHERE t.count > 0 OR t.attached > 0
), while_inhibited AS (
    FROM guest_discards_of(inhibited_discards)
), discard_findings AS (
    SELECT 'discard_while_inhibited' AS kind, 'critical' AS severity, pid, any_value(comm) AS comm,
           min(ts_ns) AS ts_start_ns, max(ts_ns) AS ts_end_ns,
           min(gpa_start) AS gpa_start, max(gpa_end) AS gpa_end, min(hva_start) AS hva_start, max(hva_end) AS hva_end,
           list_sort([state_id] || list(event_id ORDER BY ts_ns, event_id)[1:50]) AS event_ids,
           printf('%s (pid %d) discarded guest RAM %d time(s) (HVA 0x%x-0x%x) while %s: the balloon ignored the inhibitor and a device may hold pinned copies of those pages%s.',
                  any_value(comm), pid, count(*), min(hva_start), max(hva_end),
                  CASE WHEN any_value(is_derived)
                       THEN printf('%d VFIO group(s) were attached (inhibit count derived from attached groups: no inhibit events traced)', any_value(attached))
                       ELSE printf('the discard inhibit count was %d with %d VFIO group(s) attached', any_value(count), any_value(attached)) END,
                  CASE WHEN count(*) > 50 THEN '; evidence lists the first 50' ELSE '' END) AS message
    FROM while_inhibited
    GROUP BY pid, state_id
)
SELECT * FROM underflow
UNION ALL BY NAME SELECT * FROM missing
UNION ALL BY NAME SELECT * FROM leak
UNION ALL BY NAME SELECT * FROM boolean_use
UNION ALL BY NAME SELECT * FROM discard_findings
