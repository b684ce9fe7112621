-- id: I
-- title: Trust of the run
-- severities: info
-- needs:
-- uses: base
-- proves: What limits the other findings: `info` lost_events (per family: events a collector's
--   ring buffer or an importer could not keep; a detector may miss what they held),
--   unclean_stop (a session whose writer died: events after its last chunk are missing),
--   missing_probes (tracepoints or uprobes a collector wanted but this kernel or QEMU binary
--   lacks), clock_alignment (a QEMU log placed on the monotonic clock by memslot alignment, with
--   its residual, or by the wall-clock offset a collector session of the run recorded, which is
--   right only for a log written on that host while it traced;
--   an ftrace import whose trace clock is not CLOCK_MONOTONIC and got no offset, an untimed log
--   ordered by line).
--   Detectors that could not run at all are listed as "not run" beside the findings.
WITH lost AS (
    SELECT 'lost_events' AS kind, family, sum(count) AS n, min(ts_ns) AS t0, max(ts_ns) AS t1,
           list(event_id ORDER BY event_id)[1:50] AS ids, string_agg(DISTINCT reason, '; ') AS why,
           string_agg(DISTINCT source, ', ') AS sources
    FROM lost_events
    GROUP BY family
)
SELECT kind, 'info' AS severity, t0 AS ts_start_ns, t1 AS ts_end_ns, ids AS event_ids,
       printf('%d %s event(s) were lost by %s (%s): findings that need them may be missing.', n, family, sources, why)
           AS message
FROM lost
UNION ALL BY NAME
SELECT 'unclean_stop' AS kind, 'info' AS severity, start_ns AS ts_start_ns, end_ns AS ts_end_ns, [] AS event_ids,
       printf('Session %d (%s %s) stopped uncleanly: events after its last written chunk are missing.',
              session, kind, source) AS message
FROM sessions WHERE state = 'unclean'
UNION ALL BY NAME
SELECT 'missing_probes' AS kind, 'info' AS severity, start_ns AS ts_start_ns, end_ns AS ts_end_ns, [] AS event_ids,
       printf('Session %d (%s) could not attach %d probe(s) this host lacks: %s.', session, source,
              len(missing), array_to_string(missing, ', ')) AS message
FROM sessions WHERE len(missing) > 0
UNION ALL BY NAME
SELECT 'clock_alignment' AS kind, 'info' AS severity, start_ns AS ts_start_ns, end_ns AS ts_end_ns, [] AS event_ids,
       CASE WHEN clock_domain = 'untimed' THEN printf('Session %d (%s) has no timestamps: its events are ordered by line, so detectors judge order only and print no durations for it.',
                                                 session, source)
            ELSE CASE clock_alignment
           WHEN 'memslots' THEN printf('Session %d (%s) was put on the monotonic clock by matching %d memslot updates with a kernel-side source; residual %.1f us.',
                                       session, source, clock_matched, clock_residual_ns / 1000.0)
           WHEN 'host' THEN printf('Session %d (%s) was put on the monotonic clock with the wall-clock offset a collector session of this run recorded (it drifted %.1f us while tracing): right only if the log was written on that host while it traced.',
                                   session, source, clock_residual_ns / 1000.0)
           WHEN 'none' THEN printf('Session %d (%s) keeps its %s clock''s times, not CLOCK_MONOTONIC: do not compare them with other sources (give --clock-offset).',
                                   session, source, clock_domain)
           WHEN 'unaligned' THEN printf('Session %d (%s) keeps its trace clock''s times, not CLOCK_MONOTONIC: do not compare them with other sources (record with trace_clock mono, or give --clock-offset).',
                                        session, source)
           ELSE printf('Session %d (%s) was put on the monotonic clock with an offset given by hand.', session, source)
       END END AS message
-- Collectors write CLOCK_MONOTONIC natively (domain monotonic, alignment none or native).
FROM sessions
WHERE clock_domain = 'untimed'
   OR (clock_alignment IS NOT NULL AND clock_alignment NOT IN ('native', 'none'))
   OR (clock_alignment = 'none' AND clock_domain IN ('realtime', 'relative'))
