-- guest_discards: discards of guest RAM, one row per memslot piece, with the GPA they dropped.
-- A discard is guest RAM when its HVA lies in an address-space-0 memslot live at that instant.
-- Syscall discards (madvise DONTNEED/FREE/REMOVE/DONTNEED_LOCKED) are used where the process has
-- any; otherwise QEMU's own ram_block_discard_range records (uprobe or trace log) stand in.
-- Columns:
--   pid, comm, event_id, ts_ns      the discard
--   hva_start, hva_end              the piece of the discarded host range inside the memslot
--   gpa_start, gpa_end              the guest-physical range it backs
--   slot_event_id                   the memslot event that opened the translating period
CREATE OR REPLACE VIEW guest_discards AS
WITH raw AS (
    SELECT pid, comm, event_id, ts_ns, hva_start, hva_start + size AS hva_end
    FROM discards
    WHERE hva_start IS NOT NULL AND coalesce(ret, 0) = 0 AND advice IN (4, 8, 9, 24)
    UNION ALL
    SELECT pid, comm, event_id, ts_ns, hva, hva + size
    FROM qemu
    WHERE event = 'ram_block_discard_range' AND coalesce(ret, 0) = 0 AND hva IS NOT NULL AND size IS NOT NULL
      AND pid NOT IN (SELECT DISTINCT pid FROM discards)
)
SELECT r.pid, r.comm, r.event_id, r.ts_ns,
       greatest(r.hva_start, s.hva_start) AS hva_start, least(r.hva_end, s.hva_end) AS hva_end,
       s.gpa_start + (greatest(r.hva_start, s.hva_start) - s.hva_start) AS gpa_start,
       s.gpa_start + (least(r.hva_end, s.hva_end) - s.hva_start) AS gpa_end,
       s.event_id AS slot_event_id
FROM raw r
JOIN memslot_timeline s
  ON s.pid = r.pid AND s.as_id = 0 AND s.valid_from <= r.ts_ns AND (s.valid_to IS NULL OR r.ts_ns < s.valid_to)
 AND s.hva_start < r.hva_end AND r.hva_start < s.hva_end;
