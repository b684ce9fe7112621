-- module: accesses
-- uses: memslots
-- What counts as a guest access (DETECTORS.md): a vCPU touching a GPA.

-- vcpu_accesses (materialised): one row per guest access to a guest-physical address.
-- Accesses: an EPT/NPT fault with a GPA (kvm_page_fault after a #PF intercept gives a
-- guest-virtual address instead, in gva: not a GPA access), an SPTE installed (spte_requested,
-- spte_set) or changed to a present value (spte_changed with a non-zero pfn), a dirty-ring push
-- (its GPA from the slot live then), an MMIO exit at the GPA, a QEMU write into guest RAM.
-- Not accesses: spte_zap, spte_changed to a non-present value, MMU-notifier work, aging - KVM
-- invalidating, which a memslot delete itself causes; userspace_exit (an exit, no address).
-- Columns:
--   event_id, ts_ns, pid, tid          the access
--   via, vcpu, write, pfn              what showed it, which vCPU, write (NULL = unknown), host pfn
--   gpa                                guest-physical address
-- Only what detectors read: every access of the run is copied here (20M rows in a 100M-event
-- run), and comm, as_id and slot took a third of the time and 400 MB there.
CREATE OR REPLACE TEMP TABLE vcpu_accesses AS
WITH direct AS (
    SELECT event_id, ts_ns, pid, tid, via, vcpu, write, pfn, gpa
    FROM guest_accesses
    WHERE gpa IS NOT NULL
      AND (via IN ('page_fault', 'spte_requested', 'spte_set', 'mmio', 'qemu_write')
           OR (via = 'spte_changed' AND coalesce(pfn, 0) <> 0))
), ring AS (
    SELECT a.event_id, a.ts_ns, a.pid, a.tid, a.via, a.vcpu, a.write, a.pfn,
           coalesce(a.gpa, s.gpa_start + a.page_offset * PAGE_SIZE()) AS gpa
    FROM guest_accesses a
    LEFT JOIN memslot_timeline s
      ON a.gpa IS NULL AND s.pid = a.pid AND s.as_id = coalesce(a.as_id, 0) AND s.slot = a.slot
     AND live_at(a.ts_ns, s.valid_from, s.valid_to)
    WHERE a.via = 'dirty_ring_push'
    -- Two VMs of one process may both have this slot id: the ring does not say which.
    QUALIFY row_number() OVER (PARTITION BY a.event_id ORDER BY s.vm_fd) = 1
)
SELECT * FROM direct
UNION ALL
SELECT * FROM ring;
