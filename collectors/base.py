"""What a collector is, and the vectorised helpers that turn its records into Arrow columns.

A collector is a BPF C file (NAME.bpf.c, its record struct in NAME.h) and a
`Collector` value in NAME.py: the families it writes, its rings with the numpy
dtype of each ring's record, the optional tracepoints it uses, and a decode
function from a numpy record array to Arrow tables. Decoding is whole-array
numpy/pyarrow work: no Python object per event. The ring boilerplate (emit,
in-flight table) comes from ring_template.h, the ioctl dispatch from
ioctl.bpf.c, named constants from pipeline/constants.py: nothing else is
edited to add a collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

IOCTL_TRACEPOINTS = ("syscalls:sys_enter_ioctl", "syscalls:sys_exit_ioctl")
VMT_COMM_SIZE = 16  # record.h
ENVELOPE = [("ts_ns", "<u8"), ("end_ns", "<u8"), ("pid", "<u4"), ("tid", "<u4"), ("comm", f"S{VMT_COMM_SIZE}")]


def record_dtype(fields: list[tuple[str, str]]) -> np.dtype:
    """The dtype of a record: the envelope, then `fields`, packed as the C struct (natural alignment)."""
    return np.dtype(ENVELOPE + fields, align=True)


@dataclass(frozen=True)
class Ring:
    name: str                                     # C: NAME_ring, index macro RING_NAME
    dtype: np.dtype
    decode: Callable[[np.ndarray, str], dict[str, pa.Table]]
    header: str                                   # the .h holding the C struct
    struct: str                                   # its C name
    # Default size in 4 KiB pages (a power of two): what this ring's bursts need between two drains.
    pages: int = 256
    inflight: bool = False                        # an entry/exit table (NAME_hold / NAME_finish)


@dataclass(frozen=True)
class Collector:
    name: str
    families: tuple[str, ...]
    rings: tuple[Ring, ...]
    source: str                                   # NAME.bpf.c
    requires: tuple[str, ...] = ()                # tracepoints it cannot work without
    tracepoints: tuple[str, ...] = ()             # optional tracepoints, used where present
    uses_ioctl: bool = False                      # defines NAME_ioctl_enter / NAME_ioctl_exit
    # Probes bcc does not attach by itself (uprobes): (bpf, binary) -> (attached, missing).
    attach: Callable[[object, str | None], tuple[list[str], list[str]]] | None = None
    # State that predates the trace, read once per process already running at attach: pid -> tables.
    snapshot: Callable[[int], dict[str, pa.Table]] | None = None

    @property
    def source_name(self) -> str:
        return f"bpf:{self.name}"


# Records per block in columns(): a block of the widest record (~100 bytes) stays in a core's L2
# cache while every field is copied out of it.
BLOCK_RECORDS = 16384


def columns(rec: np.ndarray) -> dict[str, np.ndarray]:
    """Every field of a record array as its own contiguous array (a copy: `rec` may be ring memory).

    Copied block by block: taking one field at a time from a whole batch of ring records (tens of
    MB) reads the batch from memory once per field, ~95 ns a discards record against ~30."""
    out = {name: np.empty(len(rec), rec.dtype.fields[name][0]) for name in rec.dtype.names}
    for start in range(0, len(rec), BLOCK_RECORDS):
        block = rec[start:start + BLOCK_RECORDS]
        for name, column in out.items():
            column[start:start + BLOCK_RECORDS] = block[name]
    return out


def envelope_columns(rec: np.ndarray | dict[str, np.ndarray], source: str, *,
                     with_end: bool = True) -> dict[str, pa.Array]:
    """The envelope of every record as Arrow columns, copied out of `rec` (a record array, which
    may be ring memory, or its columns())."""
    n = len(rec["ts_ns"])
    # Same-width views, not astype: pa.array copies a record array's strided fields anyway and
    # takes columns() as they are (monotonic ns and pids fit the signed types).
    cols = {
        "ts_ns": pa.array(rec["ts_ns"].view(np.int64)),
        "pid": pa.array(rec["pid"].view(np.int32)),
        "tid": pa.array(rec["tid"].view(np.int32)),
        "comm": comm_strings(rec["comm"]),
        "source": constant(source, n),
    }
    if with_end:
        end = rec["end_ns"].view(np.int64)
        cols["end_ns"] = pa.array(end, mask=end == 0)
    return cols


# Strings leave the decoders dictionary-encoded: the run store's gate checks each distinct value
# once and its chunk writer stores the dictionary as it is, so no row's string is built or hashed.

def comm_strings(comm: np.ndarray) -> pa.DictionaryArray:
    """Thread names (NUL-padded 16-byte fields) as dictionary-encoded strings, each distinct name decoded once.

    A flood comes from a few threads in long runs: only the first record of each run of one name
    is hashed (Arrow's hash dictionary, ~25 ns a name), the others take its index (~5 ns a record
    for the comparison). With no runs, that is ~10 ns a record more than hashing them all."""
    n = len(comm)
    words = np.ascontiguousarray(comm).view(np.uint64).reshape(n, 2)  # a name is two 8-byte words
    starts = np.ones(n, bool)
    np.not_equal(words[1:, 0], words[:-1, 0], out=starts[1:])
    starts[1:] |= words[1:, 1] != words[:-1, 1]
    heads = np.flatnonzero(starts)
    first = np.ascontiguousarray(words[heads]).view(np.uint8)
    enc = pa.FixedSizeBinaryArray.from_buffers(pa.binary(VMT_COMM_SIZE), len(heads),
                                               [None, pa.py_buffer(first)]).dictionary_encode()
    names = [v.split(b"\0", 1)[0].decode("utf-8", "replace") for v in enc.dictionary.to_pylist()]
    runs = np.diff(heads, append=n)
    return _dictionary(pa.array(np.repeat(enc.indices.to_numpy(), runs)), names)


def constant(value: str, n: int) -> pa.DictionaryArray:
    """`value` n times."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string()))


def labels(values: tuple[str, ...], index: np.ndarray) -> pa.DictionaryArray:
    """`values[index]` for a whole array of small integer codes (an index outside `values` raises)."""
    return _dictionary(pa.array(index.astype(np.int32)), values)


def _dictionary(indices: pa.Array, values: list[str] | tuple[str, ...]) -> pa.DictionaryArray:
    """Strings `values[indices]`; equal values (thread names that differ only after their NUL,
    an event name listed twice) merged, as Parquet wants each value once in a dictionary."""
    uniq, first = np.unique(np.array(values, dtype=object), return_inverse=True)
    if len(uniq) < len(values):
        indices = pa.array(first.astype(np.int32)).take(indices)
        values = uniq.tolist()
    return pa.DictionaryArray.from_arrays(indices, pa.array(values, pa.string()), safe=True)


def nullable(arr: np.ndarray, null: np.ndarray) -> pa.Array:
    """An Arrow array of `arr` with nulls where `null` is true."""
    # Most batches are all one kind of record: skip building a validity bitmap where none is needed.
    if not null.any():
        return pa.array(arr)
    if null.all() and arr.dtype != object:  # object arrays (strings) have no Arrow type to name here
        return pa.nulls(len(arr), pa.from_numpy_dtype(arr.dtype))
    return pa.array(arr, mask=null)
