/* The boilerplate every ring needs, written once. collectors/program.py instantiates this text for
 * each ring, replacing ${name} (the ring's name), ${struct} (its record struct) and ${pages} (its
 * size), because bcc cannot rewrite map calls written inside a C macro. A collector's .bpf.c then
 * only calls these helpers:
 *
 *   ${name}_emit(r)           output one record; when the ring is full, count it lost
 *   ${name}_hold(r)           (rings with an in-flight table) keep r for this thread until its
 *                             syscall or function returns
 *   ${name}_exit(ret)         this thread's held record with end_ns and ret filled in, or 0
 *   ${name}_release(tid)      forget the held record
 *   ${name}_finish(ret)       emit the held record with its return value, and forget it
 *
 * Records are output with BPF_RB_NO_WAKEUP: the session drains every ring on a timer, so a flood
 * costs no reader wakeup per event. */
@@ring
BPF_RINGBUF_OUTPUT(${name}_ring, ${pages});

static __always_inline void ${name}_emit(struct ${struct} *r)
{
    if (${name}_ring.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP))
        vmt_count_lost(RING_${name}, 1);
}
@@inflight
/* One record per thread between a call's entry and its return (keyed by tid). */
BPF_HASH(${name}_inflight, u32, struct ${struct}, VMT_INFLIGHT_ENTRIES);

static __always_inline void ${name}_hold(struct ${struct} *r)
{
    u32 tid = r->tid;
    if (${name}_inflight.update(&tid, r))
        vmt_count_lost(RING_${name}, 1);
}

static __always_inline struct ${struct} *${name}_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ${struct} *r = ${name}_inflight.lookup(&tid);
    if (!r)
        return 0;
    r->end_ns = bpf_ktime_get_ns();
    r->ret = ret;
    return r;
}

static __always_inline void ${name}_release(u32 tid)
{
    ${name}_inflight.delete(&tid);
}

static __always_inline void ${name}_finish(long ret)
{
    struct ${struct} *r = ${name}_exit(ret);
    if (!r)
        return;
    ${name}_emit(r);
    ${name}_release(r->tid);
}
