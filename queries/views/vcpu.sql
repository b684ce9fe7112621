-- module: vcpu
-- uses: accesses
-- When vCPUs were inside KVM_RUN: what decides whether a memslot window was reachable.

-- _kvm_runs (materialised): the KVM_RUN ioctls and QEMU enter/exit pairs (a window: computed
-- once); exits and accesses are read where used, not copied.
CREATE OR REPLACE TEMP TABLE _kvm_runs AS
WITH runs AS (
    SELECT pid, tid, vcpu, ts_ns, end_ns, op, event_id,
           lead(op) OVER w AS next_op, lead(ts_ns) OVER w AS next_ns
    FROM vcpu_runs
    WINDOW w AS (PARTITION BY pid, tid ORDER BY ts_ns, event_id)
)
SELECT pid, tid, vcpu, ts_ns AS run_start_ns,
       CASE WHEN op = 'run' THEN end_ns
            WHEN op = 'exit' THEN ts_ns
            WHEN next_op = 'exit' THEN next_ns
            -- an enter followed by another enter: its exit was not logged, it is an instant
            WHEN next_op = 'enter' THEN ts_ns END AS run_end_ns,
       event_id, 'kvm_run ' || op AS evidence
FROM runs;

-- vcpu_in_run: one row per stretch of time a vCPU thread was known to be inside
-- KVM_RUN, closed at both ends [run_start_ns, run_end_ns] (run_end_ns NULL = no exit seen).
--   collector (vcpu_runs op run): the ioctl from entry to exit;
--   QEMU log (op enter / exit): an enter to the same thread's next exit (an enter as the
--     thread's last event stays open); a lone exit is an instant (the thread was inside
--     KVM_RUN just before it);
--   kvm_userspace_exit and every guest access (vcpu_accesses) are instants inside KVM_RUN too.
-- Columns: pid, tid, vcpu, run_start_ns, run_end_ns, event_id, evidence (op or via)
CREATE OR REPLACE TEMP VIEW vcpu_in_run AS
FROM _kvm_runs
UNION ALL
SELECT pid, tid, vcpu, ts_ns, ts_ns, event_id, via
FROM guest_accesses
WHERE via = 'userspace_exit'
UNION ALL
SELECT pid, tid, vcpu, ts_ns, ts_ns, event_id, via
FROM vcpu_accesses;

-- vcpu_first_run: per process, the first instant a vCPU is known inside KVM_RUN (not the first
-- zap: KVM zaps SPTEs before any vCPU ran).
CREATE OR REPLACE TEMP VIEW vcpu_first_run AS
SELECT pid, min(run_start_ns) AS first_ns, arg_min(event_id, run_start_ns) AS event_id
FROM vcpu_in_run GROUP BY pid;

-- vcpu_run_known: processes with any KVM_RUN evidence at all (vcpu_runs rows, exits, accesses).
CREATE OR REPLACE TEMP VIEW vcpu_run_known AS
SELECT DISTINCT pid FROM vcpu_in_run;

-- kvm_run_traced: processes whose KVM_RUN ioctls were traced entry to exit (a collector's
-- vcpu_runs op run): for them, no run over an instant means no vCPU was inside KVM_RUN then.
CREATE OR REPLACE TEMP VIEW kvm_run_traced AS
SELECT DISTINCT pid FROM vcpu_runs WHERE op = 'run';
