-- module: event_labels
-- uses: base
-- event_labels: every event of every family as one line a person can read, for reports.
-- Columns:
--   event_id, ts_ns, end_ns, pid, tid, comm   the envelope (end_ns: syscall exit, else NULL)
--   family                                    the table the event lives in
--   lane                                      timeline lane: dma, discard, memslot, guest, qemu, lost
--   what                                      short kind: vfio_type1_map, memslot_delete, madvise, ...
--   label                                     what happened, with its numbers
CREATE OR REPLACE VIEW event_labels AS
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'discards' AS family, 'discard' AS lane, syscall AS what,
       CASE WHEN syscall = 'fallocate' THEN printf('fallocate(fd %d, mode 0x%x) offset 0x%x +0x%x', fd, mode, "offset", size)
            ELSE printf('%s(0x%x, 0x%x, %s)', syscall, hva_start, size,
                        madv_name(advice)) END
       || coalesce(' = ' || ret, '') AS label
FROM discards
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'dma', 'dma', api || '_' || op,
       printf('%s %s%s iova 0x%x +0x%x%s%s', api, op, coalesce(' fd ' || fd, ''), iova, size,
              coalesce(printf(' vaddr 0x%x', vaddr), ''), coalesce(printf(' paddr 0x%x', paddr), ''))
       || coalesce(' = ' || ret, '')
FROM dma
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'vfio_groups', 'qemu', 'vfio_group_' || op,
       printf('VFIO group fd %d %s%s', group_fd, op, coalesce(' container fd ' || container_fd, '')) || coalesce(' = ' || ret, '')
FROM vfio_groups
UNION ALL
SELECT event_id, ts_ns, NULL, pid, tid, comm, 'mmu_notifier', 'discard', event,
       printf('MMU notifier %s 0x%x-%s', event, hva_start, coalesce(printf('0x%x', hva_end), '?'))
FROM mmu_notifier
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'memslots', 'memslot', CASE WHEN size = 0 THEN 'memslot_delete' ELSE 'memslot_set' END,
       CASE WHEN size = 0 THEN printf('delete slot %d (as %d)', slot, as_id)
            ELSE printf('slot %d (as %d) GPA 0x%x +0x%x at HVA 0x%x flags 0x%x', slot, as_id, gpa, size, hva, flags) END
       || coalesce(' = ' || ret, '')
FROM memslots
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'dirty_log', 'memslot', op,
       op || coalesce(printf(' slot %d', slot), '') || coalesce(printf(' iova 0x%x +0x%x', iova, size), '')
       || coalesce(' = ' || ret, '')
FROM dirty_log
UNION ALL
SELECT event_id, ts_ns, NULL, pid, tid, comm, 'guest_accesses', 'guest', via,
       via || coalesce(' vcpu ' || vcpu, '') || coalesce(printf(' GPA 0x%x', gpa), '')
       || CASE WHEN write THEN ' write' WHEN NOT write THEN ' read' ELSE '' END
       || coalesce(printf(' pfn 0x%x', pfn), '') || coalesce(printf(' slot %d page %d', slot, page_offset), '')
FROM guest_accesses
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'qemu', 'qemu', event,
       event || coalesce('(' || state || ')', '') || coalesce(printf(' HVA 0x%x', hva), '')
       || coalesce(printf(' GPA 0x%x', gpa), '') || coalesce(printf(' +0x%x', size), '')
       || coalesce(' ' || detail, '') || coalesce(' count ' || count, '') || coalesce(' = ' || ret, '')
FROM qemu
UNION ALL
SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'vcpu_runs', 'guest', 'kvm_run_' || op,
       'KVM_RUN ' || op || coalesce(' vcpu ' || vcpu, '') || coalesce(' fd ' || vcpu_fd, '')
       || coalesce(printf(' %.1f us', (end_ns - ts_ns) / 1000.0), '') || coalesce(' exit reason ' || exit_reason, '')
       || coalesce(' = ' || ret, '')
FROM vcpu_runs
UNION ALL
SELECT event_id, ts_ns, NULL, pid, tid, comm, 'file_mappings', 'qemu', event,
       printf('%s 0x%x +0x%x', event, hva_start, size) || coalesce(' fd ' || fd, '')
       || coalesce(printf(' file offset 0x%x', file_offset), '') || coalesce(' ' || path, '')
       || coalesce(' = ' || ret, '')
FROM file_mappings
UNION ALL
SELECT event_id, ts_ns, NULL, pid, tid, comm, 'lost_events', 'lost', 'lost', printf('%d %s events lost: %s', count, family, reason)
FROM lost_events;
