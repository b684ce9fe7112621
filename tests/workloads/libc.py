"""ctypes access to the raw syscalls the workloads make (so the test knows exact arguments)."""

import ctypes
import mmap
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
SYS_process_madvise = 440
SYS_memfd_create = 319


def madvise(addr: int, length: int, advice: int) -> int:
    r = libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), ctypes.c_int(advice))
    return 0 if r == 0 else -ctypes.get_errno()


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    r = libc.fallocate(ctypes.c_int(fd), ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length))
    return 0 if r == 0 else -ctypes.get_errno()


def anon(size: int) -> tuple[mmap.mmap, int]:
    """Private anonymous memory, touched so discards have something to drop; (mapping, address)."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"x" * size)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def memfd(size: int) -> int:
    fd = os.memfd_create("vmemtrace-test")
    os.ftruncate(fd, size)
    return fd
