-- id: D3
-- title: Free page hint and report ordering
-- severities: critical, high, medium
-- needs: qemu
-- uses: free_pages, accesses, discards
-- relevant: free_page_hints | free_page_reports
-- proves: (a) Free page hinting during migration: QEMU clears the migration dirty bits of hinted
--   pages (qemu_guest_free_page_hint), so hinting must run with dirty logging on and between one
--   bitmap sync and the next (rounds start at bitmap_sync_end, stop at bitmap_sync_start; from
--   precopy_notify uprobes or migration_bitmap_sync_* in QEMU's log). `critical`
--   written_page_hinted: a guest write (write fault, QEMU write) to a hinted GPA after the round
--   started and before the hint: its dirty bit is cleared after the write was logged and migration
--   drops the page. `high` hint_during_sync: a hint between a bitmap_sync_start and its end.
--   `high` hint_without_dirty_logging: a hint for memory whose memslot lacks
--   KVM_MEM_LOG_DIRTY_PAGES at that instant. Hint HVAs become GPAs through the memslots live then.
--   (b) Free page reporting / inflate: the guest must not touch a reported page until the host
--   discarded it. `critical` access_before_discard: a guest access to a reported GPA after the
--   report and before the first host discard covering it (guest_discards view): the discard then
--   destroys live data. `medium` report_never_discarded: reports no discard followed, one finding
--   per process with the count (first 50 event ids). Accesses are those of vcpu_accesses
--   (zaps and other invalidations are not). Untimed logs keep the order rules and print no
--   durations.
WITH hint_rounds AS (
    SELECT p.*, m.event AS last_mark, m.ts_ns AS mark_ns, m.event_id AS mark_id
    FROM free_page_hints p
    ASOF LEFT JOIN migration_sync_marks m ON p.pid = m.pid AND p.ts_ns >= m.ts_ns
), hint_pages AS (
    -- Hints and reports cover a few MiB at most: joining writes page by page keeps this an
    -- equi-join instead of a range join over every access.
    SELECT r.*, unnest(pages(r.gpa_start, r.gpa_end)) AS page
    FROM hint_rounds r
    WHERE r.last_mark = 'bitmap_sync_end'
), written AS (
    SELECT 'written_page_hinted' AS kind, 'critical' AS severity, r.pid, r.comm,
           r.mark_ns AS ts_start_ns, r.ts_ns AS ts_end_ns, r.gpa_start, r.gpa_end, r.hva_start, r.hva_end,
           [r.mark_id, a.event_id, r.event_id] AS event_ids,
           printf('%s (pid %d) processed a free page hint for GPA 0x%x-0x%x %s after the guest wrote GPA 0x%x (event %d) in the same round: the hint clears the dirty bit of a written page and migration drops it.',
                  r.comm, r.pid, r.gpa_start, r.gpa_end, elapsed(r.ts_ns - a.ts_ns), a.gpa, a.event_id) AS message
    FROM hint_pages r
    JOIN vcpu_accesses a
      ON a.pid = r.pid AND page_floor(a.gpa)::BIGINT = r.page AND a.write
     AND a.gpa >= r.gpa_start AND a.gpa < r.gpa_end AND a.ts_ns > r.mark_ns AND a.ts_ns < r.ts_ns
    QUALIFY row_number() OVER (PARTITION BY r.event_id, r.gpa_start ORDER BY a.ts_ns DESC, a.event_id DESC) = 1
), during_sync AS (
    SELECT 'hint_during_sync' AS kind, 'high' AS severity, pid, comm, mark_ns AS ts_start_ns, ts_ns AS ts_end_ns,
           gpa_start, gpa_end, hva_start, hva_end, [mark_id, event_id] AS event_ids,
           printf('%s (pid %d) processed a free page hint for %s while the migration bitmap sync that began %s earlier (event %d) was running: hinting must stop before the sync.',
                  comm, pid,
                  CASE WHEN gpa_start IS NULL THEN printf('HVA 0x%x-0x%x (no traced memslot places it)', hva_start, hva_end)
                       ELSE printf('GPA 0x%x-0x%x', gpa_start, gpa_end) END,
                  elapsed(ts_ns - mark_ns), mark_id) AS message
    FROM hint_rounds
    WHERE last_mark = 'bitmap_sync_start'
), unlogged AS (
    SELECT 'hint_without_dirty_logging' AS kind, 'high' AS severity, pid, comm, ts_ns AS ts_start_ns, ts_ns AS ts_end_ns,
           gpa_start, gpa_end, hva_start, hva_end, [event_id] AS event_ids,
           printf('%s (pid %d) processed a free page hint for GPA 0x%x-0x%x while memslot %d had dirty logging off: hinting must start only after dirty logging is on.',
                  comm, pid, gpa_start, gpa_end, slot) AS message
    FROM hint_rounds
    WHERE flags IS NOT NULL AND NOT has_flag(flags, KVM_MEM_LOG_DIRTY_PAGES())
), first_report AS (
    SELECT pid, min(ts_ns) AS first_ns FROM free_page_reports GROUP BY pid
), discards_after_report AS (
    -- Only discards after a report of their process can follow one: translate only those.
    SELECT h.* FROM host_discards h JOIN first_report f ON f.pid = h.pid AND h.ts_ns > f.first_ns
), report_discard AS (
    SELECT r.*, d.event_id AS discard_id, d.ts_ns AS discard_ns
    FROM free_page_reports r
    LEFT JOIN guest_discards_of(discards_after_report) d
      ON d.pid = r.pid AND d.ts_ns > r.ts_ns AND ranges_overlap(d.gpa_start, d.gpa_end, r.gpa_start, r.gpa_end)
    QUALIFY row_number() OVER (PARTITION BY r.event_id ORDER BY d.ts_ns, d.event_id) = 1
), report_pages AS (
    SELECT r.*, unnest(pages(r.gpa_start, r.gpa_end)) AS page
    FROM report_discard r
    WHERE r.discard_id IS NOT NULL
), touched AS (
    SELECT 'access_before_discard' AS kind, 'critical' AS severity, r.pid, r.comm,
           r.ts_ns AS ts_start_ns, r.discard_ns AS ts_end_ns, r.gpa_start, r.gpa_end,
           [r.event_id, a.event_id, r.discard_id] AS event_ids,
           printf('The guest of %s (pid %d) touched GPA 0x%x (%s, event %d) %s after reporting it free and %s before the host discarded it (event %d): the discard destroys live data.',
                  r.comm, r.pid, a.gpa, a.via, a.event_id, elapsed(a.ts_ns - r.ts_ns),
                  elapsed(r.discard_ns - a.ts_ns), r.discard_id) AS message
    FROM report_pages r
    JOIN vcpu_accesses a
      ON a.pid = r.pid AND page_floor(a.gpa)::BIGINT = r.page
     AND a.gpa >= r.gpa_start AND a.gpa < r.gpa_end AND a.ts_ns > r.ts_ns AND a.ts_ns < r.discard_ns
    QUALIFY row_number() OVER (PARTITION BY r.event_id ORDER BY a.ts_ns, a.event_id) = 1
), never AS (
    SELECT 'report_never_discarded' AS kind, 'medium' AS severity, pid, any_value(comm) AS comm,
           min(ts_ns) AS ts_start_ns, max(ts_ns) AS ts_end_ns,
           list(event_id ORDER BY ts_ns, event_id)[1:50] AS event_ids,
           printf('%d free page report(s) of %s (pid %d) were never followed by a host discard: the guest may hold those pages forever.',
                  count(*), any_value(comm), pid) AS message
    FROM report_discard
    WHERE discard_id IS NULL
    GROUP BY pid
)
SELECT * FROM written
UNION ALL BY NAME SELECT * FROM during_sync
UNION ALL BY NAME SELECT * FROM unlogged
UNION ALL BY NAME SELECT * FROM touched
UNION ALL BY NAME SELECT * FROM never
