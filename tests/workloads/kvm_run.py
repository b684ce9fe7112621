"""A vCPU thread that enters KVM_RUN four times: real-mode code `out 0x10, al; hlt` twice, so the
exits are IO, HLT, IO, HLT (no in-kernel irqchip: hlt returns to user space). Then a file mapping
seen by mmap/munmap. Writes what it did to argv[1]."""

import ctypes
import fcntl
import json
import mmap
import os
import struct
import sys
import threading

from pipeline.constants import (KVM_CREATE_VCPU, KVM_CREATE_VM, KVM_GET_SREGS, KVM_GET_VCPU_MMAP_SIZE,
                                KVM_RUN, KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_USER_MEMORY_REGION, MAP_SHARED)
from tests.workloads.libc import anon

CODE = bytes([0xE6, 0x10, 0xF4, 0xE6, 0x10, 0xF4])  # out 0x10, al; hlt; out 0x10, al; hlt
RUNS = 4

kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
ram, hva = anon(1 << 16)
ram.seek(0)
ram.write(CODE)
fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("=IIQQQ", 0, 0, 0, 1 << 16, hva))
runs: list[dict] = []


def vcpu_thread() -> None:
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), mmap.MAP_SHARED)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    sregs[0:8] = bytes(8)             # cs.base = 0
    sregs[12:14] = bytes(2)           # cs.selector = 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[16], regs[17] = 0, 2         # rip = 0, rflags = 2 (the always-one bit)
    fcntl.ioctl(vcpu, KVM_SET_REGS, struct.pack("=18Q", *regs))
    for _ in range(RUNS):
        ret = fcntl.ioctl(vcpu, KVM_RUN, 0)
        runs.append({"tid": threading.get_native_id(), "vcpu_fd": vcpu, "ret": ret,
                     "exit_reason": struct.unpack_from("=I", run, 8)[0]})
    run.close()


t = threading.Thread(target=vcpu_thread, name="CPU 0/KVM")
t.start()
t.join()

# A shared file mapping at a file offset, then its munmap (what fallocate's HVA placement needs).
fd = os.memfd_create("vmemtrace-guest-ram")
os.ftruncate(fd, 1 << 20)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
addr = libc.mmap(None, 1 << 19, mmap.PROT_READ | mmap.PROT_WRITE, MAP_SHARED, fd, 1 << 18)
munmap_ret = libc.munmap(addr, 1 << 19)
mappings = [{"event": "mmap", "hva_start": addr, "size": 1 << 19, "fd": fd, "file_offset": 1 << 18,
             "flags": MAP_SHARED, "ret": addr},
            {"event": "munmap", "hva_start": addr, "size": 1 << 19, "fd": None, "file_offset": None,
             "flags": None, "ret": munmap_ret}]
json.dump({"pid": os.getpid(), "runs": runs, "mappings": mappings}, open(sys.argv[1], "w"))
