"""Batch consumer of a BPF ring buffer through mmap, decoded with numpy.

bcc's own consumer calls back into Python once per record, which caps a
collector at a few hundred thousand events per second. Our rings carry records
of one fixed size each, so the bytes between the consumer and the producer
position are a regular array: one numpy view, decoded in place, then one store
of the new consumer position per batch.

Layout (kernel/bpf/ringbuf.c): page 0 holds consumer_pos (mapped writable),
page 1 producer_pos, then the data area, mapped twice in a row so that a record
that wraps around the end reads contiguously. Every record is an 8-byte header
(u32 len with BUSY bit 31 and DISCARD bit 30, u32 page offset) and its data,
padded to 8 bytes.
"""

from __future__ import annotations

import mmap

import numpy as np

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8


class RingReader:
    def __init__(self, map_fd: int, data_size: int, record: np.dtype):
        page = mmap.PAGESIZE
        self.fd = map_fd  # pollable: readable when records are waiting
        self.data_size = data_size
        self.mask = data_size - 1
        self.record = record
        self.stride = (HDR_SIZE + record.itemsize + 7) & ~7
        self.slot = np.dtype({"names": ["hdr_len", "hdr_pgoff", "rec"],
                              "formats": ["<u4", "<u4", record],
                              "offsets": [0, 4, HDR_SIZE], "itemsize": self.stride})
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod_map = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._cons = np.frombuffer(self._cons_map, dtype="<u8", count=1)
        self._prod = np.frombuffer(self._prod_map, dtype="<u8", count=1)
        self._data = np.frombuffer(self._prod_map, dtype=np.uint8, offset=page)

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def peek(self, max_records: int | None = None) -> tuple[np.ndarray, int]:
        """(committed records from the consumer position on, bytes to release() after them).

        Usually a view of the ring's own memory, with no copy: it stays valid until release(),
        since the producer never writes past the consumer position. Decode from it, then release.
        """
        cons = int(self._cons[0])
        avail = int(self._prod[0]) - cons
        n = avail // self.stride
        if max_records is not None:
            n = min(n, max_records)
        if n == 0:
            return np.empty(0, self.record), 0
        start = cons & self.mask
        slots = self._data[start:start + n * self.stride].view(self.slot)
        flags = slots["hdr_len"] & (BUSY_BIT | DISCARD_BIT)
        if not flags.any():  # the usual case: every record committed, none discarded
            return slots["rec"], n * self.stride
        busy = (flags & BUSY_BIT) != 0
        if busy.any():
            n = int(np.argmax(busy))  # stop at the first record still being written
            slots, flags = slots[:n], flags[:n]
        return slots["rec"][(flags & DISCARD_BIT) == 0], n * self.stride  # boolean indexing copies

    def release(self, nbytes: int) -> None:
        """Hand `nbytes` (from peek) back to the producer: records peeked are no longer valid."""
        if nbytes:
            self._cons[0] = int(self._cons[0]) + nbytes

    def read(self, max_records: int | None = None) -> np.ndarray:
        """Committed records from the consumer position on (a copy), and advance past them."""
        records, nbytes = self.peek(max_records)
        out = records.copy()
        self.release(nbytes)
        return out

    def close(self) -> None:
        # numpy views keep the mmaps exported; drop them first.
        del self._cons, self._prod, self._data
        self._cons_map.close()
        self._prod_map.close()
