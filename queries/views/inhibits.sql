-- module: inhibits
-- uses: base
-- QEMU's balloon / discard inhibitor and the VFIO groups it must track (D2).

-- discard_inhibit_calls: successful calls that raise (+1) or lower (-1) QEMU's discard inhibit
-- count: ram_block_discard_disable, ram_block_uncoordinated_discard_disable, qemu_balloon_inhibit.
-- Columns: pid, comm, ts_ns, event_id, event, delta
CREATE OR REPLACE TEMP VIEW discard_inhibit_calls AS
SELECT pid, comm, ts_ns, event_id, event, CASE WHEN state THEN 1 ELSE -1 END AS delta
FROM qemu
WHERE event IN ('discard_disable', 'uncoordinated_discard_disable', 'balloon_inhibit')
  AND state IS NOT NULL AND coalesce(ret, 0) = 0;

-- vfio_group_changes: successful VFIO group attaches (+1) and detaches (-1).
-- Columns: pid, comm, ts_ns, event_id, op, delta
CREATE OR REPLACE TEMP VIEW vfio_group_changes AS
SELECT pid, comm, ts_ns, event_id, op, CASE op WHEN 'attach' THEN 1 ELSE -1 END AS delta
FROM vfio_groups
WHERE coalesce(ret, 0) = 0;

-- discard_inhibit_queries: QEMU asking itself whether discards are inhibited
-- (ram_block_discard_is_disabled / qemu_balloon_is_inhibited); ret is its answer, 1 = inhibited.
CREATE OR REPLACE TEMP VIEW discard_inhibit_queries AS
SELECT pid, comm, ts_ns, event_id, event, ret
FROM qemu
WHERE event IN ('discard_is_disabled', 'balloon_is_inhibited');
