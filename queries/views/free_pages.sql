-- module: free_pages
-- uses: memslots
-- Free page hints (migration) and free page reports (balloon) in guest-physical terms (D3).

-- free_page_hints: qemu_guest_free_page_hint calls, one row per memslot piece of the hinted HVA
-- range; a hint no traced memslot places (TCG, no KVM) stays, with NULL slot, flags and GPA.
-- Columns: pid, comm, event_id, ts_ns, slot, flags (the memslot's KVM_MEM_* flags then),
-- hva_start, hva_end, gpa_start, gpa_end
CREATE OR REPLACE TEMP VIEW free_page_hints AS
WITH hints AS (
    SELECT pid, comm, event_id, ts_ns, hva AS hva_start, hva + size AS hva_end
    FROM qemu
    WHERE event = 'free_page_hint' AND hva IS NOT NULL AND size IS NOT NULL
)
SELECT pid, comm, event_id, ts_ns, slot_id AS slot, slot_flags AS flags,
       piece_hva_start AS hva_start, piece_hva_end AS hva_end,
       piece_gpa_start AS gpa_start, piece_gpa_end AS gpa_end
FROM hva_to_gpa(hints);

-- free_page_reports: pages the guest reported free (VIRTIO_BALLOON_F_REPORTING), by GPA (from
-- the event, else its HVA through the memslot live then). Columns: pid, comm, event_id, ts_ns,
-- gpa_start, gpa_end
CREATE OR REPLACE TEMP VIEW free_page_reports AS
WITH reports AS (
    SELECT pid, comm, event_id, ts_ns, gpa, size,
           CASE WHEN gpa IS NULL THEN hva END AS hva_start, CASE WHEN gpa IS NULL THEN hva + 1 END AS hva_end
    FROM qemu
    WHERE event = 'free_page_report' AND size IS NOT NULL AND (gpa IS NOT NULL OR hva IS NOT NULL)
)
SELECT pid, comm, event_id, ts_ns,
       coalesce(gpa, piece_gpa_start) AS gpa_start, coalesce(gpa, piece_gpa_start) + size AS gpa_end
FROM hva_to_gpa(reports)
WHERE gpa IS NOT NULL OR slot_event_id IS NOT NULL;

-- migration_sync_marks: migration bitmap sync start / end (rounds of free page hinting).
CREATE OR REPLACE TEMP VIEW migration_sync_marks AS
SELECT pid, ts_ns, event_id, event FROM qemu WHERE event IN ('bitmap_sync_start', 'bitmap_sync_end');
