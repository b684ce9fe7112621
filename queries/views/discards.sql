-- module: discards
-- uses: memslots
-- What a discard of host memory is, from every source, counted once.

-- file_mapping_periods (materialised): which HVA range of a process mapped which file range,
-- from an mmap (or /proc/PID/maps at attach time) to the first later munmap of the process that
-- overlaps it (a partial munmap ends the whole mapping here).
-- Columns: pid, comm, fd, inode, path, flags, shared, hva_start, hva_end, file_offset,
--          valid_from, valid_to (NULL = still mapped), event_id
CREATE OR REPLACE TEMP TABLE file_mapping_periods AS
WITH maps AS (
    SELECT * FROM file_mappings WHERE event IN ('mmap', 'proc_maps') AND coalesce(ret, 0) >= 0
), unmaps AS (
    SELECT * FROM file_mappings WHERE event = 'munmap' AND coalesce(ret, 0) = 0
)
SELECT m.pid, m.comm, m.fd, m.inode, m.path, m.flags, has_flag(m.flags, MAP_SHARED()) AS shared,
       m.hva_start, m.hva_start + m.size AS hva_end, coalesce(m.file_offset, 0) AS file_offset,
       m.ts_ns AS valid_from, min(u.ts_ns) AS valid_to, m.event_id
FROM maps m
LEFT JOIN unmaps u
  ON u.pid = m.pid AND u.ts_ns > m.ts_ns
 AND ranges_overlap(u.hva_start, u.hva_start + u.size, m.hva_start, m.hva_start + m.size)
GROUP BY ALL;

-- _discard_sources: every discard as its source reported it, with a precedence class.
-- One discard seen by several sources is one discard: QEMU's balloon and virtio-mem call
-- ram_block_discard_range, which calls madvise / fallocate. Per process, only the rows of the
-- most precise class it has are kept: 1 syscalls (madvise, process_madvise, fallocate), else
-- 2 ram_block_discard_range (uprobe or QEMU log), else 3 balloon_page / virtio_mem_unplug (GPAs
-- from QEMU's log).
-- discard_what(source, advice, fd): a phrase naming a discard for messages.
CREATE OR REPLACE MACRO discard_what(source, advice, fd) AS
    CASE source WHEN 'fallocate' THEN printf('fallocate(PUNCH_HOLE) of fd %d', fd)
                WHEN 'ram_block_discard_range' THEN 'ram_block_discard_range'
                WHEN 'balloon_page' THEN 'a balloon page discard'
                WHEN 'virtio_mem_unplug' THEN 'a virtio-mem unplug'
                ELSE source || '(' || madv_name(advice) || ')' END;

CREATE OR REPLACE TEMP VIEW _discard_sources AS
WITH raw AS NOT MATERIALIZED (
    SELECT event_id, ts_ns, end_ns, pid, tid, comm, syscall AS source, 1 AS class,
           advice, NULL::INTEGER AS fd,
           hva_start, hva_start + size AS hva_end, NULL::UBIGINT AS gpa_start, NULL::UBIGINT AS gpa_end,
           NULL::UBIGINT AS file_start, NULL::UBIGINT AS file_end
    FROM discards
    WHERE syscall IN ('madvise', 'process_madvise') AND hva_start IS NOT NULL AND coalesce(ret, 0) = 0
      AND is_discard_advice(advice)
    UNION ALL
    SELECT event_id, ts_ns, end_ns, pid, tid, comm, 'fallocate', 1, NULL, fd,
           NULL, NULL, NULL, NULL, "offset", "offset" + size
    FROM discards
    WHERE syscall = 'fallocate' AND has_flag(mode, FALLOC_FL_PUNCH_HOLE()) AND coalesce(ret, 0) = 0
    UNION ALL
    SELECT event_id, ts_ns, end_ns, pid, tid, comm, event, 2, NULL, NULL,
           hva, hva + size, NULL, NULL, NULL, NULL
    FROM qemu
    WHERE event = 'ram_block_discard_range' AND coalesce(ret, 0) = 0 AND hva IS NOT NULL AND size IS NOT NULL
    UNION ALL
    SELECT event_id, ts_ns, end_ns, pid, tid, comm, event, 3,
           NULL, NULL, NULL, NULL, gpa, gpa + coalesce(size, PAGE_SIZE()), NULL, NULL
    FROM qemu
    WHERE event IN ('balloon_page', 'virtio_mem_unplug') AND gpa IS NOT NULL AND coalesce(ret, 0) = 0
), best AS (
    -- A grouped minimum over (pid, class) and a join, not a window over every discard row:
    -- the window sorted whole rows; this reads two columns. An inner join (best has one row
    -- per pid), not a semi join, for which DuckDB built its hash table on the discards.
    SELECT pid, min(class) AS class FROM raw GROUP BY pid
)
SELECT raw.*, discard_what(source, advice, fd) AS what FROM raw JOIN best USING (pid, class);

-- host_discards: one row per discard and process whose memory it freed, in HVA.
-- Shared memory (memfd / shmem, MAP_SHARED): MADV_DONTNEED / FREE on a shared mapping frees
-- nothing (the page stays in the file) and is left out when a shared mapping of the process
-- holds the whole range; MADV_REMOVE and fallocate(PUNCH_HOLE) free the file range under every
-- process that maps it (same fd in the caller, same inode elsewhere: a vhost-user backend), and
-- appear once per mapping process. A punch whose fd no traced mapping places is left out.
-- Balloon / virtio-mem GPAs become HVAs through the memslots live then.
-- Columns:
--   event_id, ts_ns, end_ns, tid      the discard call (end_ns: syscall exit)
--   pid, comm                         the process whose memory was freed
--   by_pid                            the process that discarded (differs for a shared file)
--   source, what                      which source, and a phrase for messages
--   hva_start, hva_end                the freed host-virtual range, half-open
CREATE OR REPLACE TEMP TABLE _host_discards AS
WITH src AS (SELECT * EXCLUDE (what) FROM _discard_sources),
private_madvise AS (
    -- An anti join, not NOT EXISTS: DuckDB decorrelated that into a distinct set of every
    -- discard's (pid, ts_ns, range) before looking at the few shared mappings.
    SELECT s.* FROM src s
    ANTI JOIN file_mapping_periods m
      ON m.pid = s.pid AND m.shared AND live_at(s.ts_ns, m.valid_from, m.valid_to)
     AND m.hva_start <= s.hva_start AND s.hva_end <= m.hva_end
    WHERE s.hva_start IS NOT NULL AND (s.advice IS NULL OR s.advice <> MADV_REMOVE())
), file_ranges AS (
    -- MADV_REMOVE through a shared mapping, or fallocate on an fd: the file range it punched.
    SELECT s.*, m.inode, m.fd AS map_fd,
           coalesce(s.file_start, m.file_offset + (greatest(s.hva_start, m.hva_start) - m.hva_start)) AS f0,
           coalesce(s.file_end, m.file_offset + (least(s.hva_end, m.hva_end) - m.hva_start)) AS f1
    FROM src s
    JOIN file_mapping_periods m
      ON m.pid = s.pid AND live_at(s.ts_ns, m.valid_from, m.valid_to)
     AND CASE WHEN s.source = 'fallocate' THEN m.fd = s.fd
              ELSE m.shared AND ranges_overlap(m.hva_start, m.hva_end, s.hva_start, s.hva_end) END
    WHERE s.source = 'fallocate' OR s.advice = MADV_REMOVE()
), file_pieces AS (
    SELECT DISTINCT f.event_id, f.ts_ns, f.end_ns, m.pid, f.tid, m.comm, f.pid AS by_pid, f.source, f.advice, f.fd,
           m.hva_start + (greatest(f.f0, m.file_offset) - m.file_offset) AS hva_start,
           m.hva_start + (least(f.f1, m.file_offset + (m.hva_end - m.hva_start)) - m.file_offset) AS hva_end
    FROM file_ranges f
    JOIN file_mapping_periods m
      ON live_at(f.ts_ns, m.valid_from, m.valid_to)
     AND ((m.pid = f.pid AND m.fd = f.map_fd) OR (m.inode = f.inode))
     AND ranges_overlap(m.file_offset, m.file_offset + (m.hva_end - m.hva_start), f.f0, f.f1)
), balloon_src AS (
    SELECT * EXCLUDE (hva_start, hva_end) FROM src WHERE class = 3
), balloon AS (
    SELECT event_id, ts_ns, end_ns, pid, tid, comm, pid AS by_pid, source, advice, fd,
           piece_hva_start AS hva_start, piece_hva_end AS hva_end
    FROM gpa_to_hva(balloon_src)
)
SELECT event_id, ts_ns, end_ns, pid, tid, comm, pid AS by_pid, source, advice, fd, hva_start, hva_end
FROM private_madvise
UNION ALL SELECT * FROM file_pieces
UNION ALL SELECT * FROM balloon;

-- The phrase is made when read, not stored: a string per discard cost more than the rest of the row.
CREATE OR REPLACE TEMP VIEW host_discards AS
SELECT event_id, ts_ns, end_ns, pid, tid, comm, by_pid, source, discard_what(source, advice, fd) AS what,
       hva_start, hva_end
FROM _host_discards;

-- guest_discards_of(tbl): rows of host_discards (tbl: host_discards or rows of it, with any
-- extra columns) that are discards of guest RAM, one row per memslot piece, with the GPA they
-- dropped (a discard no address-space-0 memslot backs at that instant is no guest RAM).
-- Columns: those of tbl, with hva_start/hva_end cut to the piece, and
--   gpa_start, gpa_end      the guest-physical range it backs
--   slot_event_id           the memslot event that opened the translating period
-- A macro, so that a detector translates only the discards it reasons about (those while an
-- inhibit is held, those after a free page report): translating every discard of the run costs
-- more than the rest of detection.
CREATE OR REPLACE MACRO guest_discards_of(tbl) AS TABLE
SELECT * EXCLUDE (hva_start, hva_end, slot_id, slot_flags,
                  piece_hva_start, piece_hva_end, piece_gpa_start, piece_gpa_end),
       piece_hva_start AS hva_start, piece_hva_end AS hva_end,
       piece_gpa_start AS gpa_start, piece_gpa_end AS gpa_end
FROM hva_to_gpa(tbl)
WHERE slot_event_id IS NOT NULL;

-- guest_discards: every host discard of guest RAM (guest_discards_of(host_discards)).
CREATE OR REPLACE TEMP VIEW guest_discards AS
SELECT event_id, ts_ns, end_ns, pid, tid, comm, by_pid, source, what,
       hva_start, hva_end, gpa_start, gpa_end, slot_event_id
FROM guest_discards_of(host_discards);
