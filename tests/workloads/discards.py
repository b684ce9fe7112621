"""Known discards: madvise of several behaviours (one failing), fallocate punch holes, and calls
that are not discards. Writes the expected rows as JSON to argv[1]."""

import ctypes
import json
import mmap
import os
import sys

from tests.workloads.libc import anon, fallocate, libc, madvise, memfd, SYS_process_madvise

expected = []
m, base = anon(16 << 20)
for off, length, advice in [(0, 4096, 4), (1 << 20, 2 << 20, 4), (8 << 20, 64 << 10, 8)]:
    expected.append({"syscall": "madvise", "hva_start": base + off, "size": length, "advice": advice,
                     "ret": madvise(base + off, length, advice)})
expected.append({"syscall": "madvise", "hva_start": base + 1, "size": 4096, "advice": 4,
                 "ret": madvise(base + 1, 4096, 4)})            # unaligned: -EINVAL
madvise(base, 4096, 3)                                           # WILLNEED: not a discard
madvise(base, 4096, 14)                                          # HUGEPAGE: not a discard

fd = memfd(4 << 20)
shared = mmap.mmap(fd, 4 << 20, flags=mmap.MAP_SHARED)
saddr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
expected.append({"syscall": "madvise", "hva_start": saddr + 4096, "size": 8192, "advice": 9,
                 "ret": madvise(saddr + 4096, 8192, 9)})         # REMOVE on shmem
expected.append({"syscall": "fallocate", "fd": fd, "offset": 1 << 20, "size": 1 << 20, "mode": 3,
                 "ret": fallocate(fd, 3, 1 << 20, 1 << 20)})
fallocate(fd, 0, 0, 4096)                                        # plain allocation: not a discard

# process_madvise on our own pidfd; DONTNEED is refused for process_madvise (-EINVAL), recorded anyway.
pidfd = os.pidfd_open(os.getpid())
iov = (ctypes.c_uint64 * 4)(base + (4 << 20), 4096, base + (5 << 20), 8192)
r = libc.syscall(SYS_process_madvise, pidfd, ctypes.byref(iov), 2, 4, 0)
ret = r if r >= 0 else -ctypes.get_errno()
for start, length in [(base + (4 << 20), 4096), (base + (5 << 20), 8192)]:
    expected.append({"syscall": "process_madvise", "hva_start": start, "size": length, "advice": 4,
                     "fd": pidfd, "ret": ret})

json.dump({"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(), "rows": expected},
          open(sys.argv[1], "w"))
