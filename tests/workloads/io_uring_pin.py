"""A real long-term pin (REFERENCE.md 5.9): io_uring registered buffers, then a discard under them.

    python -m tests.workloads.io_uring_pin MODE PROOF.json

Registers a private anonymous buffer of PAGES pages with io_uring (IORING_REGISTER_BUFFERS: the
kernel pins every page with FOLL_LONGTERM), and by MODE:
  discard            madvise(MADV_DONTNEED) of pages DISCARD while registered, then unregister
  no_discard         no discard, then unregister
  after_unregister   unregister first, then the same madvise
Then the CPU writes every page again. /proc/self/pagemap (unbuffered pread: a buffered reader
returns stale entries) gives each page's pfn while pinned and after the write: for a discard under
the pin the CPU gets a new page while the ring keeps the old one. PROOF.json holds the exact
arguments of every call and both pfn lists. Needs root (pagemap hides pfns otherwise).
"""

import ctypes
import json
import mmap
import os
import sys

from pipeline.constants import (IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS, MADV_DONTNEED,
                                NR_IO_URING_REGISTER, NR_IO_URING_SETUP, PAGE_SIZE)
from tests.workloads.libc import libc, madvise

PAGES = 16
DISCARD = range(4, 8)          # pages discarded: an inner part of the buffer
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63


def syscall(*args: int) -> int:
    r = libc.syscall(*(ctypes.c_long(a) for a in args))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def pfns(pagemap: int, addr: int, pages: int) -> list[int | None]:
    raw = os.pread(pagemap, 8 * pages, (addr // PAGE_SIZE) * 8)
    entries = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    return [e & PFN_MASK if e & PRESENT else None for e in entries]


def main(mode: str, proof: str) -> None:
    size = PAGES * PAGE_SIZE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"p" * size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, all zero: defaults
    ring = syscall(NR_IO_URING_SETUP, 4, ctypes.addressof(params))
    iov = (ctypes.c_uint64 * 2)(addr, size)
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    discard = {"hva_start": addr + DISCARD.start * PAGE_SIZE, "size": len(DISCARD) * PAGE_SIZE,
               "advice": MADV_DONTNEED}

    syscall(NR_IO_URING_REGISTER, ring, IORING_REGISTER_BUFFERS, ctypes.addressof(iov), 1)
    pinned = pfns(pagemap, addr, PAGES)
    if mode == "after_unregister":
        syscall(NR_IO_URING_REGISTER, ring, IORING_UNREGISTER_BUFFERS, 0, 0)
    if mode != "no_discard":
        assert madvise(discard["hva_start"], discard["size"], MADV_DONTNEED) == 0
    buf.seek(0)
    buf.write(b"c" * size)  # the CPU's view: a discarded page is faulted in anew
    after = pfns(pagemap, addr, PAGES)
    if mode != "after_unregister":
        syscall(NR_IO_URING_REGISTER, ring, IORING_UNREGISTER_BUFFERS, 0, 0)
    os.close(pagemap)
    os.close(ring)
    json.dump({"pid": os.getpid(), "mode": mode, "ring_fd": ring, "buffer": {"vaddr": addr, "size": size},
               "discard": discard if mode != "no_discard" else None, "pinned_pfns": pinned,
               "after_pfns": after, "pinned_at_discard": mode == "discard",
               "diverged_pages": [i for i in range(PAGES) if pinned[i] != after[i]]},
              open(proof, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
