"""The collector's drain without BPF: a memfd laid out as a BPF ring buffer (consumer page, producer
page, data), read by the real RingReader and drained by the session's own code into a run.

What the kernel side does is covered by tests/test_collectors_real.py; here, the parts a flood
depends on: records in flight (BUSY) and discarded ones, when a ring is drained, and that the
rows stored are the records written, in order.
"""

import mmap
import os
import time

import numpy as np
import pytest

from collectors import discards
from collectors.ringbuf import BUSY_BIT, DISCARD_BIT, HDR_SIZE, RingReader
from collectors.session import DRAIN_AGE, DRAIN_FILL, Collection
from pipeline.runstore import RunWriter, open_run

RING = discards.COLLECTOR.rings[0]
STRIDE = (HDR_SIZE + RING.dtype.itemsize + 7) & ~7
PAGE = mmap.PAGESIZE


class FakeRing:
    """A ring of `capacity` records whose producer the test drives."""

    def __init__(self, capacity: int):
        self.data_size = 1 << (capacity * STRIDE - 1).bit_length()
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * self.data_size)
        self.area = mmap.mmap(self.fd, 2 * PAGE + self.data_size)
        slot = np.dtype({"names": ["len", "rec"], "formats": ["<u4", RING.dtype], "offsets": [0, HDR_SIZE],
                         "itemsize": STRIDE})
        self.slots = np.frombuffer(self.area, slot, self.data_size // STRIDE, 2 * PAGE)
        self.producer = np.frombuffer(self.area, "<u8", 1, PAGE)
        self.reader = RingReader(self.fd, self.data_size, RING.dtype)
        self.written = 0

    def produce(self, n: int, flags: dict[int, int] | None = None) -> np.ndarray:
        """Write n records (ts_ns = their number), header flags per index, and publish them."""
        start = self.written
        rec = self.slots["rec"][start:start + n]
        rec["ts_ns"] = np.arange(start, start + n) + 1
        rec["pid"] = rec["tid"] = 7
        rec["comm"] = b"flood"
        rec["start"] = 0x7F0000000000 + np.arange(start, start + n, dtype=np.uint64) * 4096
        rec["len"] = 4096
        rec["advice"] = 4
        rec["fd"] = -1
        self.slots["len"][start:start + n] = RING.dtype.itemsize
        for i, bits in (flags or {}).items():
            self.slots["len"][start + i] |= bits
        self.written += n
        self.producer[0] = self.written * STRIDE
        return rec.copy()

    def commit(self, index: int) -> None:
        """The producer finishes a BUSY record."""
        self.slots["len"][index] &= np.uint32(~BUSY_BIT & 0xFFFFFFFF)


@pytest.fixture
def ring():
    r = FakeRing(4096)
    yield r
    r.reader.close()
    del r.slots, r.producer
    r.area.close()
    os.close(r.fd)


def test_reader_stops_at_a_busy_record_and_skips_discarded_ones(ring):
    ring.produce(10, {3: DISCARD_BIT, 6: BUSY_BIT})
    records, nbytes = ring.reader.peek()
    assert records["ts_ns"].tolist() == [1, 2, 3, 5, 6]  # record 4 discarded, 7 still being written
    ring.reader.release(nbytes)
    assert ring.reader.pending_bytes() == 4 * STRIDE
    ring.commit(6)
    assert ring.reader.read()["ts_ns"].tolist() == [7, 8, 9, 10]
    assert ring.reader.pending_bytes() == 0


def test_peek_is_the_ring_memory_until_release(ring):
    ring.produce(5)
    records, nbytes = ring.reader.peek()
    ring.slots["rec"]["ts_ns"][2] = 99  # seen through the batch: no copy when all are committed
    assert records["ts_ns"].tolist() == [1, 2, 99, 4, 5]
    assert ring.reader.pending_bytes() == 5 * STRIDE  # the producer may not reuse it yet
    del records
    ring.reader.release(nbytes)
    assert ring.reader.pending_bytes() == 0


def _drainer(tmp_path, chunk_rows=262_144):
    collection = Collection(tmp_path / "run", families=["discards"], chunk_rows=chunk_rows)
    writer = RunWriter(tmp_path / "run", source="bpf", kind="collector", chunk_rows=chunk_rows)
    return collection, writer


def test_a_ring_is_drained_when_an_eighth_full_or_old_enough(ring, tmp_path):
    collection, writer = _drainer(tmp_path)

    class Program:
        readers = [(RING, discards.COLLECTOR, ring.reader)]

    eighth = int(ring.data_size * DRAIN_FILL) // STRIDE + 1
    ring.produce(10)
    collection._drained_at[RING.name] = time.monotonic()  # just drained: 10 records wait
    collection._drain(Program, writer)
    assert ring.reader.pending_bytes() == 10 * STRIDE
    ring.produce(eighth - 10)  # an eighth of the ring: drained at once
    collection._drain(Program, writer)
    assert ring.reader.pending_bytes() == 0
    ring.produce(10)
    collection._drained_at[RING.name] = time.monotonic() - DRAIN_AGE  # waited long enough
    collection._drain(Program, writer)
    assert ring.reader.pending_bytes() == 0
    ring.produce(3)
    collection._drain(Program, writer, everything=True)  # the last drain takes everything
    assert ring.reader.pending_bytes() == 0
    writer.close()
    got = open_run(tmp_path / "run").read_family("discards")
    assert got["ts_ns"].to_pylist() == list(range(1, eighth + 14))
    assert collection.stats.events == {"discards": eighth + 13}


def test_drained_rows_are_the_records_across_reads_and_chunks(ring, tmp_path):
    """A backlog larger than one read (chunk_rows) comes out whole and in order, decoded as the
    decoder decodes each record by itself."""
    collection, writer = _drainer(tmp_path, chunk_rows=1000)
    written = ring.produce(3500, {100: DISCARD_BIT})
    collection._drain_ring(RING, discards.COLLECTOR, ring.reader, writer)
    writer.close()
    run = open_run(tmp_path / "run")
    got = run.read_family("discards").drop_columns("event_id").to_pylist()
    kept = np.delete(written, 100)
    assert got == discards.decode(kept, "bpf:discards")["discards"].to_pylist()
    assert len(run.chunk_files("discards")) == 4
