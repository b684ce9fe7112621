/* The envelope that starts every record; struct-only so a test can compile it with gcc and
 * compare offsets against collectors/records.py. */
#ifndef VMT_RECORD_H
#define VMT_RECORD_H
#define VMT_COMM_SIZE 16
#define VMT_ENVELOPE \
    u64 ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC; syscall entry */ \
    u64 end_ns;      /* syscall exit; 0 when the record has none */ \
    u32 pid;         /* tgid */ \
    u32 tid; \
    char comm[VMT_COMM_SIZE]
#endif
