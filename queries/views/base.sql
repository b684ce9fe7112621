-- module: base
-- uses:
-- Helpers every module and detector may use. Named kernel constants are macros from
-- pipeline.constants (MADV_DONTNEED(), KVM_MEM_LOG_DIRTY_PAGES(), PAGE_SIZE() ...): never a bare
-- number in SQL.

-- ranges_overlap(a0, a1, b0, b1): half-open ranges [a0, a1) and [b0, b1) share at least one byte.
CREATE OR REPLACE MACRO ranges_overlap(a0, a1, b0, b1) AS a0 < b1 AND b0 < a1;

-- live_at(t, t_from, t_to): t lies in the period [t_from, t_to); t_to NULL = never ended.
CREATE OR REPLACE MACRO live_at(t, t_from, t_to) AS t_from <= t AND (t_to IS NULL OR t < t_to);

-- has_flag(word, bit): a flag bit is set; a NULL word has no flags.
CREATE OR REPLACE MACRO has_flag(word, bit) AS coalesce(word, 0) & bit <> 0;

-- page_floor(a): the start of the 4 KiB page holding address a.
CREATE OR REPLACE MACRO page_floor(a) AS (a // PAGE_SIZE() * PAGE_SIZE());

-- pages(a0, a1): the start of every page the range [a0, a1) touches, as a list (unnest it to
-- expand page by page: an equi-join on the page instead of a range join over every access).
CREATE OR REPLACE MACRO pages(a0, a1) AS range(page_floor(a0)::BIGINT, a1::BIGINT, PAGE_SIZE());

-- madv_name(advice): the name of a discarding madvise behaviour, else its number.
CREATE OR REPLACE MACRO madv_name(advice) AS
    CASE advice WHEN MADV_DONTNEED() THEN 'MADV_DONTNEED' WHEN MADV_FREE() THEN 'MADV_FREE'
                WHEN MADV_REMOVE() THEN 'MADV_REMOVE' WHEN MADV_DONTNEED_LOCKED() THEN 'MADV_DONTNEED_LOCKED'
                ELSE 'advice ' || advice END;

-- is_discard_advice(advice): madvise behaviours that throw page contents away.
CREATE OR REPLACE MACRO is_discard_advice(advice) AS
    advice IN (MADV_DONTNEED(), MADV_FREE(), MADV_REMOVE(), MADV_DONTNEED_LOCKED());

-- order_only(): true when some session is untimed (a QEMU log without timestamps, ts_ns = line
-- number). Then only the order of events means something: detectors keep their order rules and
-- say "order only" instead of printing durations.
CREATE OR REPLACE MACRO order_only() AS
    coalesce((SELECT bool_or(clock_domain = 'untimed') FROM sessions), false);

-- elapsed(ns): a duration for a message, "12.5 us", or "order only" for untimed runs.
CREATE OR REPLACE MACRO elapsed(ns) AS
    CASE WHEN order_only() THEN 'order only (untimed log)' ELSE printf('%.1f us', ns / 1000.0) END;
