"""Which process each thread of an ftrace text belongs to.

ftrace prints thread ids; the process id only with options/record-tgid. Without it, QEMU's threads are
recognised by the names QEMU gives them (`CPU n/KVM`, `IO <iothread>`, `qemu-system-*`, ...) and put
into one process per pid namespace: the process a `vhost-N` worker names (vhost workers carry their
owner's pid), else `--pid PID`, else the smallest QEMU thread id as a stand-in (QEMU's main thread,
whose id is the pid, is created first; when it is not in the trace the stand-in is only a thread).
`--pid TID=PID` / `--pid COMM=PID` place single threads. Every other thread stands for itself.
The account returned says, per rule, how many threads it placed.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pipeline.constants import PID_MAX_LIMIT
from pipeline.importers import TraceFormatError

QEMU_COMM = re.compile(r"^(?:CPU \d+/(?:KVM|TCG)|IO .+|qemu-system-.*|qemu-kvm|call_rcu|vnc_worker|"
                       r"live_migration|multifd.*|SPICE Worker)$")
VHOST_COMM = re.compile(r"^vhost-(\d+)$")


def parse_pid_options(options: list[str]) -> tuple[int | None, dict[str, int]]:
    """--pid PID (QEMU's process) and --pid THREAD=PID / --pid COMM=PID (one thread or name)."""
    group, mapping = None, {}
    for opt in options:
        key, eq, value = opt.rpartition("=")
        try:
            pid = int(value)
        except ValueError:
            raise TraceFormatError("--pid", 0, f"{opt!r}: expected PID, TID=PID or COMM=PID") from None
        if not 0 < pid < PID_MAX_LIMIT:
            raise TraceFormatError("--pid", 0, f"{opt!r}: {pid} is not a process id")
        if eq:
            mapping[key] = pid
        else:
            group = pid
    return group, mapping


def assign_pids(threads: dict[int, dict[str, Any]], namespaces: dict[str, int],
                options: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sorted thread keys (namespace * PID_MAX_LIMIT + tid), their process ids (same offset), and the
    manifest's account of where each came from. `threads` maps a key to {"comms", "tgid"}."""
    group_pid, mapping = parse_pid_options(options)
    ns_names = {i: name for name, i in namespaces.items()}
    keys = np.array(sorted(threads), dtype=np.int64)
    pids = keys.copy()
    how = {"tgid column": 0, "--pid": 0, "qemu thread names": 0, "thread id": 0}
    qemu: dict[int, list[int]] = {}
    owners: dict[int, set[int]] = {}
    for i, key in enumerate(keys):
        th = threads[int(key)]
        ns, tid = divmod(int(key), PID_MAX_LIMIT)
        base = ns * PID_MAX_LIMIT
        named = [mapping[c] for c in th["comms"] if c in mapping] or \
                ([mapping[str(tid)]] if str(tid) in mapping else [])
        vhost = [int(m[1]) for c in th["comms"] if (m := VHOST_COMM.match(c)) and int(m[1]) < PID_MAX_LIMIT]
        if th["tgid"] is not None:
            pids[i] = th["tgid"]
            how["tgid column"] += 1
        elif named:
            pids[i] = base + named[0]
            how["--pid"] += 1
        elif vhost:
            pids[i] = base + vhost[0]  # a vhost worker is named after the process that owns it
            owners.setdefault(ns, set()).add(vhost[0])
            how["qemu thread names"] += 1
        elif any(QEMU_COMM.match(c) for c in th["comms"]):
            qemu.setdefault(ns, []).append(i)
        else:
            how["thread id"] += 1
    groups = []
    for ns, members in qemu.items():
        base = ns * PID_MAX_LIMIT
        found = owners.get(ns, set())
        if group_pid is not None:
            pid, source = group_pid, "--pid"
        elif len(found) == 1:
            pid, source = next(iter(found)), "the vhost worker named after QEMU's process"
        else:
            pid = int(keys[members].min()) - base
            source = "stand-in: the smallest QEMU thread id (QEMU's main thread when it is in the trace)"
        pids[members] = base + pid
        how["qemu thread names"] += len(members)
        groups.append({"namespace": ns_names.get(ns, ""), "pid": pid, "from": source, "threads": len(members)})
    summary = ("tgid column" if how["tgid column"] == len(keys) else
               "thread ids stand in for processes for some threads" if how["thread id"] else
               "grouped by QEMU thread names / --pid")
    return keys, pids, {"threads": how, "qemu_processes": groups, "summary": summary}
