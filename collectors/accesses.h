#pragma once
#include "record.h"

#define ACCESS_NONE_U64 0xffffffffffffffffULL

struct access_rec {
    VMT_ENVELOPE;
    u64 gpa;          /* ACCESS_NONE_U64 if unknown */
    u64 pfn;          /* ACCESS_NONE_U64 if unknown */
    u64 error_code;   /* page_fault */
    u64 page_offset;  /* dirty ring: page offset within the slot; ACCESS_NONE_U64 otherwise */
    u32 via;          /* index into collectors/accesses.py VIA */
    s32 vcpu;         /* -1 if unknown */
    u32 slot;         /* dirty ring: as_id << 16 | id; 0xffffffff otherwise */
    u8 level;         /* 0 if unknown */
    u8 write;         /* 0 read, 1 write, 2 unknown */
    u8 as_id;         /* 0xff if unknown */
    u8 pad;
};
