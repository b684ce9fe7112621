"""A tiny VMM over /dev/kvm: memslots created, split (delete + two creates), moved, re-flagged,
a dirty-log harvest, a region2 slot, and madvise(DONTNEED) on guest RAM. Writes what it did."""

import fcntl
import json
import os
import struct
import sys

from pipeline.constants import (KVM_CREATE_VM, KVM_GET_DIRTY_LOG, KVM_SET_USER_MEMORY_REGION,
                                KVM_SET_USER_MEMORY_REGION2, MADV_DONTNEED)
from tests.workloads.libc import anon, madvise

MB = 1 << 20

kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
ram, hva = anon(64 * MB)
memslots, dirty = [], []


def region(slot, flags, gpa, size, host, as_id=0):
    word = slot | (as_id << 16)
    try:
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("=IIQQQ", word, flags, gpa, size, host))
        ret = 0
    except OSError as e:
        ret = -e.errno
    memslots.append({"ioctl": "region", "vm_fd": vm, "as_id": as_id, "slot": slot, "flags": flags,
                     "gpa": gpa, "size": size, "hva": host, "ret": ret})


region(0, 0, 0, 16 * MB, hva)                          # create
region(1, 0, 32 * MB, 16 * MB, hva + 32 * MB)          # create
region(0, 0, 0, 0, hva)                                # split slot 0: delete ...
region(0, 0, 0, 4 * MB, hva)                           # ... and re-create the low part
region(2, 0, 8 * MB, 8 * MB, hva + 8 * MB)             # ... and the high part (a hole in between)
region(1, 0, 128 * MB, 16 * MB, hva + 32 * MB)         # move slot 1
region(2, 1, 8 * MB, 8 * MB, hva + 8 * MB)             # LOG_DIRTY_PAGES on
region(3, 0, 0, 4 * MB, hva + 48 * MB)                 # overlaps slot 0: -EEXIST

bitmap = bytearray(8 * MB // 4096 // 8)
import ctypes
buf = (ctypes.c_char * len(bitmap)).from_buffer(bitmap)
try:
    fcntl.ioctl(vm, KVM_GET_DIRTY_LOG, struct.pack("=IIQ", 2, 0, ctypes.addressof(buf)))
    ret = 0
except OSError as e:
    ret = -e.errno
dirty.append({"op": "kvm_get_dirty_log", "fd": vm, "as_id": 0, "slot": 2, "ret": ret})

try:  # region2 without GUEST_MEMFD: the guest_memfd fields travel but are not used
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION2,
                struct.pack("=IIQQQQII", 4, 0, 256 * MB, 4 * MB, hva + 56 * MB, 0x1000, 77, 0) + bytes(112))
    ret = 0
except OSError as e:
    ret = -e.errno
memslots.append({"ioctl": "region2", "vm_fd": vm, "as_id": 0, "slot": 4, "flags": 0, "gpa": 256 * MB,
                 "size": 4 * MB, "hva": hva + 56 * MB, "gmem_fd": 77, "gmem_offset": 0x1000, "ret": ret})

discard = {"hva_start": hva + 9 * MB, "hva_end": hva + 9 * MB + 256 * 1024}
madvise(discard["hva_start"], discard["hva_end"] - discard["hva_start"], MADV_DONTNEED)

json.dump({"pid": os.getpid(), "memslots": memslots, "dirty_log": dirty, "discard": discard},
          open(sys.argv[1], "w"))
