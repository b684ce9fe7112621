-- memslot_timeline: one row per period during which a KVM memslot kept one layout.
-- A period starts when KVM_SET_USER_MEMORY_REGION(2) creates, moves or re-flags the slot and
-- ends at the next call for the same (pid, vm_fd, as_id, slot); deletes (size 0) start no period.
-- Translate an HVA to a GPA with the periods live at the event's time, never with the final table.
-- Failed calls (ret != 0) changed nothing and are left out; a call whose exit was not seen counts.
-- Columns:
--   pid, vm_fd, as_id, slot    the VM (process, fd) and the slot
--   flags                      KVM_MEM_* flags during the period (1 = LOG_DIRTY_PAGES)
--   gpa_start, gpa_end         guest-physical range, half-open
--   hva_start, hva_end         host-virtual range backing it, half-open
--   valid_from, valid_to       CLOCK_MONOTONIC ns; valid_to NULL = still live when the run ended
--   event_id, ended_by         the memslot events that opened and closed the period
CREATE OR REPLACE VIEW memslot_timeline AS
WITH done AS (
    SELECT * FROM memslots WHERE coalesce(ret, 0) = 0
), periods AS (
    SELECT pid, vm_fd, as_id, slot, flags, gpa, size, hva, event_id,
           ts_ns AS valid_from,
           lead(ts_ns) OVER w AS valid_to,
           lead(event_id) OVER w AS ended_by
    FROM done
    WINDOW w AS (PARTITION BY pid, vm_fd, as_id, slot ORDER BY ts_ns, event_id)
)
SELECT pid, vm_fd, as_id, slot, flags,
       gpa AS gpa_start, gpa + size AS gpa_end,
       hva AS hva_start, hva + size AS hva_end,
       valid_from, valid_to, event_id, ended_by
FROM periods
WHERE size > 0;
