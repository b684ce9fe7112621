/* qemu: QEMU's own guest-memory decisions, from the QEMU binaries the traced processes execute.
 *
 * Uprobes on exported functions (discard inhibitor, RAM block discards, free page hints, bitmap
 * syncs, memory transaction commits, vCPU ioctl inhibition): one record per outermost call,
 * emitted on return with the return value; collectors/qemu_tracker.py attaches qemu_enter_N to
 * FUNCTIONS[N] and qemu_return_N to its return. USDT probes (dtrace builds): qemu_usdt_N reads
 * the arguments of attach slot N as qemu_usdt_spec[N] says. Every exec is reported on
 * qemu_exec_ring so that the collector can attach to QEMUs started later. */
#include "qemu.h"

/* qemu_ring and qemu_usdt_ring with their qemu_emit / qemu_usdt_emit come from ring_template.h.
 * The exec notices are for the collector itself, not a family: a ring of its own, woken per
 * record, since a QEMU's early calls are missed for as long as its exec waits to be seen. */
BPF_RINGBUF_OUTPUT(qemu_exec_ring, 16);
BPF_ARRAY(qemu_exec_lost, u64, 1);

/* Not ring_template.h's in-flight table: keyed by thread and function, since QEMU's probed
 * functions nest (discards and KVM's commit run inside a memory transaction commit). */
struct qemu_call_key {
    u32 tid;
    u32 fn;
};
BPF_HASH(qemu_inflight, struct qemu_call_key, struct qemu_rec, VMT_INFLIGHT_ENTRIES);

#define QEMU_USDT_SLOTS 60  /* qemu_usdt_0 ... qemu_usdt_59 below */
BPF_ARRAY(qemu_usdt_spec, struct qemu_usdt_spec, QEMU_USDT_SLOTS);

static __always_inline int qemu_enter(struct pt_regs *ctx, u32 fn)
{
    struct qemu_call_key key = {.tid = (u32)bpf_get_current_pid_tgid(), .fn = fn};
    struct qemu_rec *open = qemu_inflight.lookup(&key);
    if (open) {  /* a recursive call (nested memory transaction): the outermost one is the event */
        open->depth++;
        return 0;
    }
    struct qemu_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.fn = fn;
    r.arg0 = PT_REGS_PARM1(ctx);
    r.arg1 = PT_REGS_PARM2(ctx);
    r.arg2 = PT_REGS_PARM3(ctx);
    if (qemu_inflight.update(&key, &r))
        vmt_count_lost(RING_qemu, 1);
    return 0;
}

static __always_inline int qemu_return(struct pt_regs *ctx, u32 fn)
{
    struct qemu_call_key key = {.tid = (u32)bpf_get_current_pid_tgid(), .fn = fn};
    struct qemu_rec *r = qemu_inflight.lookup(&key);
    if (!r)
        return 0;
    if (r->depth) {
        r->depth--;
        return 0;
    }
    r->end_ns = bpf_ktime_get_ns();
    r->ret = PT_REGS_RC(ctx);
    qemu_emit(r);
    qemu_inflight.delete(&key);
    return 0;
}

#define QEMU_FN(n) \
    int qemu_enter_##n(struct pt_regs *ctx) { return qemu_enter(ctx, n); } \
    int qemu_return_##n(struct pt_regs *ctx) { return qemu_return(ctx, n); }
QEMU_FN(0) QEMU_FN(1) QEMU_FN(2) QEMU_FN(3) QEMU_FN(4) QEMU_FN(5) QEMU_FN(6) QEMU_FN(7)
QEMU_FN(8) QEMU_FN(9) QEMU_FN(10) QEMU_FN(11) QEMU_FN(12) QEMU_FN(13) QEMU_FN(14) QEMU_FN(15)
QEMU_FN(16) QEMU_FN(17) QEMU_FN(18) QEMU_FN(19)

static __always_inline u64 qemu_usdt_read(struct pt_regs *ctx, struct qemu_usdt_arg *a)
{
    u64 v = 0, base = 0;
    u32 size = a->size;
    if (a->kind == 1)
        return a->value;
    if (a->kind == 0 || a->reg > 20)
        return 0;
    bpf_probe_read_kernel(&base, sizeof(base), (u64 *)ctx + a->reg);
    if (a->kind == 2) {
        v = base;
    } else {
        if (size > sizeof(v))
            size = sizeof(v);
        bpf_probe_read_user(&v, size, (void *)(base + a->value));  /* little-endian: the low bytes */
    }
    switch (a->size) {
    case 1: return a->is_signed ? (u64)(s64)(s8)v : (u8)v;
    case 2: return a->is_signed ? (u64)(s64)(s16)v : (u16)v;
    case 4: return a->is_signed ? (u64)(s64)(s32)v : (u32)v;
    default: return v;
    }
}

static __always_inline int qemu_usdt(struct pt_regs *ctx, u32 slot)
{
    struct qemu_usdt_spec *spec = qemu_usdt_spec.lookup(&slot);
    if (!spec)
        return 0;
    struct qemu_usdt_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (!vmt_traced(r.pid))
        return 0;
    r.probe = spec->probe;
#pragma unroll
    for (int i = 0; i < QEMU_USDT_ARGS; i++)
        r.args[i] = qemu_usdt_read(ctx, &spec->args[i]);
    u32 s = spec->str_arg;
    if (s > 0 && s <= QEMU_USDT_ARGS)
        bpf_probe_read_user_str(r.str, sizeof(r.str), (void *)r.args[(s - 1) & (QEMU_USDT_ARGS - 1)]);
    qemu_usdt_emit(&r);
    return 0;
}

#define QEMU_USDT(n) int qemu_usdt_##n(struct pt_regs *ctx) { return qemu_usdt(ctx, n); }
#define QEMU_USDT10(n) QEMU_USDT(n##0) QEMU_USDT(n##1) QEMU_USDT(n##2) QEMU_USDT(n##3) QEMU_USDT(n##4) \
    QEMU_USDT(n##5) QEMU_USDT(n##6) QEMU_USDT(n##7) QEMU_USDT(n##8) QEMU_USDT(n##9)
QEMU_USDT(0) QEMU_USDT(1) QEMU_USDT(2) QEMU_USDT(3) QEMU_USDT(4) QEMU_USDT(5) QEMU_USDT(6) QEMU_USDT(7)
QEMU_USDT(8) QEMU_USDT(9) QEMU_USDT10(1) QEMU_USDT10(2) QEMU_USDT10(3) QEMU_USDT10(4) QEMU_USDT10(5)

/* Attached to the raw tracepoint sched_process_exec by the collector (the process filter holds the
 * tracepoint itself): every exec; the filter is applied in Python, since the filter's own exec
 * handler may run after this one. */
int qemu_on_exec(struct bpf_raw_tracepoint_args *ctx)
{
    struct qemu_exec_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    if (qemu_exec_ring.ringbuf_output(&r, sizeof(r), 0)) {
        u32 zero = 0;
        u64 *n = qemu_exec_lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
    return 0;
}
