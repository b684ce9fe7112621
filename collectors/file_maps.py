"""Collector of file mappings: mmap of a file / munmap calls, and /proc/PID/maps at attach.

They let a detector place a hole punched in a file (fallocate on fd, offset) at the host-virtual
addresses mapping that file range. mmap rows carry fd, file offset and flags; path and inode are
known only for the /proc snapshot (the fd may be closed or reused by the time a decoder could
look it up, so it is not guessed).
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, envelope_columns, labels, nullable, record_dtype
from pipeline.constants import MAP_PRIVATE, MAP_SHARED

EVENTS = ("mmap", "munmap")
SNAPSHOT_SOURCE = "proc:maps"
DTYPE = record_dtype([("ret", "<i8"), ("addr", "<u8"), ("len", "<u8"), ("offset", "<u8"), ("flags", "<u4"),
                      ("prot", "<u4"), ("fd", "<i4"), ("event", "<u4")])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    munmap = rec["event"] == 1
    ret = rec["ret"]
    mapped = ~munmap & (ret >= 0)  # mmap returns the address, or -errno
    cols = envelope_columns(rec, source, with_end=False)
    cols.update(
        event=labels(EVENTS, rec["event"]),
        hva_start=pa.array(np.where(mapped, ret.astype(np.uint64), rec["addr"])),
        size=pa.array(rec["len"]),
        fd=nullable(rec["fd"], munmap),
        file_offset=nullable(rec["offset"], munmap),
        flags=nullable(rec["flags"], munmap),
        path=pa.nulls(len(rec), pa.string()),
        inode=pa.nulls(len(rec), pa.uint64()),
        ret=pa.array(ret),
    )
    return {"file_mappings": pa.table(cols)}


# start-end perms offset major:minor inode [path]
MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S\S\S([ps]) ([0-9a-f]+) \S+ (\d+)[ \t]*(.*)$", re.M)


def _fds_by_inode(pid: int) -> dict[int, int]:
    """inode -> lowest fd of `pid` open on it (a mapping's fd, while the process keeps it open)."""
    out: dict[int, int] = {}
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in sorted(names, key=int, reverse=True):
        try:
            out[os.stat(f"{fd_dir}/{name}").st_ino] = int(name)
        except OSError:
            continue
    return out


def snapshot(pid: int) -> dict[str, pa.Table]:
    """The file mappings `pid` already has (event proc_maps), read from /proc/PID/maps.

    Once per process at attach, a few hundred lines: parsed with one regex over the file."""
    try:
        text = open(f"/proc/{pid}/maps").read()
        comm = open(f"/proc/{pid}/comm").read().rstrip("\n")
    except OSError:
        return {}
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    lines = [m for m in MAPS_LINE.findall(text) if m[4] != "0"]  # inode 0: anonymous, nothing to punch
    if not lines:
        return {}
    fds = _fds_by_inode(pid)
    start, end, share, offset, inode, path = zip(*lines)
    start = np.array([int(s, 16) for s in start], np.uint64)
    end = np.array([int(e, 16) for e in end], np.uint64)
    inodes = np.array(list(map(int, inode)), np.uint64)
    fd = np.array([fds.get(int(i), -1) for i in inode], np.int32)
    n = len(lines)
    return {"file_mappings": pa.table({
        "ts_ns": pa.array(np.full(n, now, np.int64)),
        "pid": pa.array(np.full(n, pid, np.int32)),
        "tid": pa.array(np.full(n, pid, np.int32)),
        "comm": pa.repeat(pa.scalar(comm), n),
        "source": pa.repeat(pa.scalar(SNAPSHOT_SOURCE), n),
        "event": pa.repeat(pa.scalar("proc_maps"), n),
        "hva_start": pa.array(start),
        "size": pa.array(end - start),
        "fd": nullable(fd, fd < 0),
        "file_offset": pa.array(np.array([int(o, 16) for o in offset], np.uint64)),
        "flags": pa.array(np.where(np.array(share) == "s", MAP_SHARED, MAP_PRIVATE).astype(np.uint32)),
        "path": pa.array([p or None for p in path], pa.string()),
        "inode": pa.array(inodes),
    })}


COLLECTOR = Collector(
    name="file_maps", families=("file_mappings",), source="file_maps.bpf.c", snapshot=snapshot,
    requires=("syscalls:sys_enter_mmap", "syscalls:sys_exit_mmap", "syscalls:sys_enter_munmap",
              "syscalls:sys_exit_munmap"),
    # A process start maps tens of files; a malloc-heavy process munmaps at high rates.
    rings=(Ring("file_maps", DTYPE, decode, "file_maps.h", "file_map_rec", pages=1024, inflight=True),),
)
