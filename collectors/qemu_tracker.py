"""Attaches the qemu collector's probes to the QEMU that each traced process actually executes.

Uprobes live on a file (its inode), not on a path: a QEMU built in an engineer's tree, a copy, and
Debian's /usr/bin/qemu-system-x86_64 are three binaries, each attached once, whatever the number
of processes running it. The binaries come from /proc/PID/exe of the processes traced at start,
and of every process that execs while collecting (raw tracepoint sched_process_exec,
reported on qemu_exec_ring). Probes attached after an exec miss what QEMU does before the attach completes;
the delay is recorded per binary (attach_delay_ms).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from collectors import usdt
from collectors.base import record_dtype
from collectors.qemu import FUNCTIONS, USDT_BY_NAME, USDT_EVENTS
from collectors.qemu_binaries import QemuBinary, file_key, inspect
from collectors.ringbuf import RingReader

EXEC_DTYPE = record_dtype([])
EXEC_RING_PAGES = 16      # qemu.bpf.c qemu_exec_ring
USDT_SLOTS = 60           # qemu.bpf.c QEMU_USDT_SLOTS
MAX_PIDS_LISTED = 64


@dataclass
class TracedBinary:
    binary: QemuBinary
    probes: dict[str, str]                  # probe -> usdt | uprobe | missing
    not_in_version: list[str]               # probes this QEMU version predates or postdates
    attached_ns: int                        # CLOCK_MONOTONIC when its probes were in place
    pids: list[int] = field(default_factory=list)
    attach_delay_ns: int | None = None      # from the first exec of it to attached_ns

    def manifest(self) -> dict:
        b = self.binary
        return {"path": b.path, "version": b.version, "dev": b.dev, "inode": b.inode,
                "usdt_notes": sum(len(s) for s in b.usdt.values()), "probes": self.probes,
                "not_in_version": self.not_in_version,
                "pids": self.pids[:MAX_PIDS_LISTED], "attached_ns": self.attached_ns,
                "attach_delay_ms": None if self.attach_delay_ns is None else round(self.attach_delay_ns / 1e6, 1)}


def exe_path(pid: int) -> str | None:
    """The executable a process runs: its path, or /proc/PID/exe once the file was replaced."""
    link = f"/proc/{pid}/exe"
    try:
        target = os.readlink(link)
    except OSError:
        return None  # gone, or a kernel thread
    return link if target.endswith(" (deleted)") else target


class QemuTracker:
    def __init__(self, bpf, *, filtered: bool, say: Callable[[str], None]):
        self.bpf = bpf
        self.filtered = filtered
        self.say = say
        self.seen: dict[tuple[int, int], TracedBinary | None] = {}  # None: not a QEMU
        self.preattached: list[TracedBinary] = []
        self._slots = 0
        self._looked_at: set[int] = set()
        bpf.attach_raw_tracepoint(tp="sched_process_exec", fn_name="qemu_on_exec")
        size = EXEC_RING_PAGES * mmap.PAGESIZE
        self.exec_reader = RingReader(bpf["qemu_exec_ring"].map_fd, size, EXEC_DTYPE)

    # -- what to attach to ----------------------------------------------------------------------

    def add_binary(self, path: str) -> TracedBinary | None:
        """Attach to `path` before any traced process runs it (--qemu): a QEMU by the user's word."""
        tb = self._attach(path, force=True)
        if tb is not None and tb not in self.preattached:
            self.preattached.append(tb)
        return tb

    def add_process(self, pid: int, exec_ns: int | None = None) -> None:
        self._looked_at.add(pid)
        path = exe_path(pid)
        if path is None:
            return
        try:
            key = file_key(path)
        except OSError:
            return
        tb = self.seen[key] if key in self.seen else self._attach(path)
        if tb is None:
            return
        if exec_ns is not None and tb.attach_delay_ns is None and not tb.pids:
            tb.attach_delay_ns = max(0, tb.attached_ns - exec_ns)
        if pid not in tb.pids:
            tb.pids.append(pid)

    def add_running(self, pids: list[int]) -> None:
        """Processes traced from the start; with no filter, every process of the system."""
        if not self.filtered:
            pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]
        for pid in pids:
            self.add_process(pid)

    def poll(self) -> None:
        """Look at the executables of the processes that exec'd since the last poll."""
        execs = self.exec_reader.read()
        for pid, ts in zip(execs["pid"].tolist(), execs["ts_ns"].tolist()):
            if not self.filtered or self._traced(pid):
                self.add_process(pid, exec_ns=ts)

    def rescan(self) -> None:
        """Traced processes not looked at yet: children that joined the filter by fork and never
        exec'd (a QEMU that daemonizes), or whose exec notice came after they had exited."""
        if not self.filtered:
            return
        for key in list(self.bpf["traced_pids"].keys()):
            if key.value not in self._looked_at:
                self.add_process(key.value)

    def _traced(self, pid: int) -> bool:
        table = self.bpf["traced_pids"]
        try:
            table[table.Key(pid)]
        except KeyError:
            return False
        return True

    # -- attaching --------------------------------------------------------------------------------

    def _attach(self, path: str, *, force: bool = False) -> TracedBinary | None:
        try:
            key = file_key(path)
        except OSError as e:
            self.say(f"QEMU binary {path}: {e.strerror}")
            return None
        if key in self.seen and self.seen[key] is not None:
            return self.seen[key]
        binary = inspect(path, tuple(f.symbol for f in FUNCTIONS), force=force)
        if binary is None:
            self.seen[key] = None
            return None
        plan = self._usdt_plan(binary)
        probes = {p: "missing" for p, sites in plan.items() if sites is None}
        not_in_version = []
        replaced = {USDT_EVENTS[USDT_BY_NAME[p]].replaces for p, sites in plan.items() if sites}
        for i, f in enumerate(FUNCTIONS):
            if f.symbol in replaced:
                continue
            addr = binary.functions.get(f.symbol)
            if addr is None:
                if binary.in_version(f.since, f.until) is False:  # expected: not worth a finding
                    not_in_version.append(f.symbol)
                else:
                    probes.setdefault(f.symbol, "missing")
                continue
            try:
                self.bpf.attach_uprobe(name=path, addr=addr, fn_name=f"qemu_enter_{i}")
                self.bpf.attach_uretprobe(name=path, addr=addr, fn_name=f"qemu_return_{i}")
            except Exception as e:  # bcc raises a bare Exception; the kernel's reason is on stderr
                self.say(f"QEMU {path}: could not attach to {f.symbol} ({e})")
                probes[f.symbol] = "missing"
                continue
            probes[f.symbol] = "uprobe"
        # USDT last: raising a probe's semaphore lets QEMU fire it, so the uprobes go in first.
        for probe, sites in plan.items():
            if not sites:
                continue
            try:
                for site in sites:
                    self._set_spec(self._slots, USDT_BY_NAME[probe], USDT_EVENTS[USDT_BY_NAME[probe]].string_arg,
                                   site)
                    self._slots += 1
                    usdt.attach(self.bpf, binary.path, site, f"qemu_usdt_{self._slots - 1}")
                probes[probe] = "usdt"
            except OSError as e:  # e.g. another tracer holds the site with another semaphore counter
                self.say(f"QEMU {path}: {e}")
                probes[probe] = "missing"
        from pipeline.runstore import monotonic_ns

        tb = TracedBinary(binary, dict(sorted(probes.items())), sorted(not_in_version), monotonic_ns())
        self.seen[key] = tb
        used = [p for p, how in tb.probes.items() if how in ("usdt", "uprobe")]
        label = f"{path} ({binary.version or 'version unknown'})"
        if used:
            kinds = sorted({how for how in tb.probes.values() if how in ("usdt", "uprobe")})
            self.say(f"QEMU {label}: {len(used)} probes ({'+'.join(kinds)})")
        else:
            self.say(f"QEMU {label} offers no probe (no exported functions we know, no USDT notes): "
                     f"its own events are not traced, only the kernel's")
        return tb

    def _usdt_plan(self, binary: QemuBinary) -> dict[str, list[usdt.UsdtSite] | None]:
        """The catalogue's USDT probes this binary has, with their sites (None: cannot attach it);
        {} when it has no qemu USDT notes."""
        if not binary.usdt:
            return {}
        plan: dict[str, list[usdt.UsdtSite] | None] = {}
        slots = self._slots
        for ev in USDT_EVENTS:
            sites = binary.usdt.get(ev.probe)
            # A partly attached probe would be worse than none: unreadable sites or no free slot.
            if not sites or any(s.args is None for s in sites) or slots + len(sites) > USDT_SLOTS:
                plan[ev.probe] = None
                continue
            plan[ev.probe] = sites
            slots += len(sites)
        return plan

    def _set_spec(self, slot: int, probe: int, string_arg: int, site: usdt.UsdtSite) -> None:
        table = self.bpf["qemu_usdt_spec"]
        spec = table.Leaf()
        spec.probe = probe
        spec.str_arg = string_arg + 1
        for i, a in enumerate(site.args):
            spec.args[i].kind = a.kind
            spec.args[i].size = a.size
            spec.args[i].is_signed = int(a.signed)
            spec.args[i].reg = a.reg
            spec.args[i].value = a.value
        table[ctypes.c_int(slot)] = spec

    # -- results ------------------------------------------------------------------------------------

    def traced(self) -> list[TracedBinary]:
        """Binaries that traced processes ran, in the order first seen."""
        return [tb for tb in self.seen.values() if tb is not None and tb.pids]

    def summary(self) -> dict:
        return {"qemu_binaries": [tb.manifest() for tb in self.traced()],
                "qemu_preattached": [tb.binary.path for tb in self.preattached if not tb.pids]}

    def exec_lost(self) -> int:
        return int(self.bpf["qemu_exec_lost"][ctypes.c_int(0)].value)

    def close(self) -> None:
        self.exec_reader.close()


def attached_probes(binaries: list[TracedBinary]) -> tuple[list[str], list[str]]:
    """(attached, missing) as KIND:PATH:PROBE, as the session lists tracepoints."""
    attached, missing = [], []
    for tb in binaries:
        for probe, how in tb.probes.items():
            if how in ("usdt", "uprobe"):
                attached.append(f"{how}:{tb.binary.path}:{probe}")
            elif how == "missing":
                missing.append(f"probe:{tb.binary.path}:{probe}")
    return attached, missing

