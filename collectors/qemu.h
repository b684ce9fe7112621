#pragma once
#include "record.h"

/* One call of an exported QEMU function (uprobe, emitted at its return). */
struct qemu_rec {
    VMT_ENVELOPE;
    u64 arg0;       /* first three integer arguments of the probed function */
    u64 arg1;
    u64 arg2;
    s64 ret;        /* return value (rax); meaningless for void functions */
    u32 fn;         /* index into collectors/qemu.py FUNCTIONS */
    u32 depth;      /* BPF-side only: nested calls of fn on this thread while it runs */
};

#define QEMU_USDT_ARGS 8
#define QEMU_USDT_STR 48

/* One hit of a QEMU USDT probe (dtrace trace backend): its arguments as the note describes them. */
struct qemu_usdt_rec {
    VMT_ENVELOPE;
    u64 args[QEMU_USDT_ARGS];
    u32 probe;      /* index into collectors/qemu.py USDT_EVENTS */
    u32 pad;
    char str[QEMU_USDT_STR];  /* the probe's first string argument (RAM block, section name) */
};

/* How to read one USDT argument in a uprobe (collectors/usdt.py builds these from the notes). */
struct qemu_usdt_arg {
    u8 kind;        /* 0 none, 1 constant, 2 register, 3 memory at register + value */
    u8 size;        /* bytes */
    u8 is_signed;
    u8 reg;         /* struct pt_regs slot, in u64s */
    u32 pad;
    s64 value;      /* constant or displacement */
};

struct qemu_usdt_spec {
    struct qemu_usdt_arg args[QEMU_USDT_ARGS];
    u32 probe;      /* USDT_EVENTS index */
    u32 str_arg;    /* 1 + index of the argument that is a C string; 0 for none */
};

/* An exec: the collector looks at the new executable and attaches to it if it is a QEMU. */
struct qemu_exec_rec {
    VMT_ENVELOPE;
};
