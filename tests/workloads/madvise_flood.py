"""madvise(MADV_DONTNEED) as fast as Python can issue it: argv[1] calls (0 = until killed).
Writes the number of calls made to argv[2] when it ends."""

import sys

from tests.workloads.libc import anon, libc

n = int(sys.argv[1])
m, addr = anon(1 << 16)
madv = libc.madvise
done = 0
while n == 0 or done < n:
    madv(addr, 4096, 4)
    done += 1
if len(sys.argv) > 2:
    open(sys.argv[2], "w").write(str(done))
