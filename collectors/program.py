"""Composes the enabled collectors into one BPF program, compiles it with bcc and opens its rings.

One program, not one per collector: one compile, one process filter map shared by all, and one
handler per tracepoint (the ioctl syscall feeds several collectors through ioctl.bpf.c).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pyarrow as pa

from collectors import accesses, discards, file_maps, io_uring, kvm, mmu_notifier, qemu, vcpu_run, vfio
from collectors.base import Collector, Ring
from collectors.ringbuf import RingReader
from pipeline.constants import c_defines

HERE = Path(__file__).resolve().parent
TRACEFS = Path("/sys/kernel/tracing")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Constants the kernel headers bcc includes define themselves (same value, different C type).
KERNEL_DEFINES = {"PAGE_SIZE", "PID_MAX_LIMIT"}

COLLECTORS: tuple[Collector, ...] = (discards.COLLECTOR, kvm.COLLECTOR, vfio.COLLECTOR,
                                     mmu_notifier.COLLECTOR, accesses.COLLECTOR, qemu.COLLECTOR,
                                     io_uring.COLLECTOR, vcpu_run.COLLECTOR, file_maps.COLLECTOR)
FAMILIES = {fam for c in COLLECTORS for fam in c.families}


class CompileError(Exception):
    """bcc could not compile or load the composed program."""


def for_families(families: list[str] | None) -> list[Collector]:
    """The collectors that write any of `families` (all collectors for None)."""
    if not families:
        return list(COLLECTORS)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"no collector writes {', '.join(unknown)}; families: {', '.join(sorted(FAMILIES))}")
    return [c for c in COLLECTORS if any(f in c.families for f in families)]


def rings_of(collectors: list[Collector]) -> list[tuple[Ring, Collector]]:
    """Every ring in program order: its position is both RING_<name> and its loss-counter slot."""
    return [(r, c) for c in collectors for r in c.rings]


def tracepoint_exists(tp: str) -> bool:
    system, event = tp.split(":")
    return (TRACEFS / "events" / system / event / "format").exists()


def have_macro(tp: str) -> str:
    return "HAVE_" + tp.replace(":", "_").upper()


@dataclass
class Program:
    bpf: object
    collectors: list[Collector]
    readers: list[tuple[Ring, Collector, RingReader]]
    ring_index: dict[str, int]
    attached: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ring_bytes: dict[str, int] = field(default_factory=dict)  # memory each ring holds (kernel, pinned)

    @property
    def ring_memory(self) -> int:
        """Bytes of kernel memory all rings hold for the whole collection."""
        return sum(self.ring_bytes.values())

    def snapshot(self, pid: int) -> dict[str, pa.Table]:
        """What the collectors read about an already-running process at attach (e.g. its mappings)."""
        out: dict[str, pa.Table] = {}
        for c in self.collectors:
            if c.snapshot:
                out.update(c.snapshot(pid))
        return out

    def add_pid(self, pid: int) -> None:
        import ctypes

        table = self.bpf["traced_pids"]
        table[table.Key(pid)] = ctypes.c_uint8(1)

    def lost(self) -> list[tuple[str, tuple[str, ...], int]]:
        """(ring, families it feeds, events lost so far: ring full or in-flight table full) per ring."""
        table = self.bpf["vmt_lost"]
        return [(ring.name, collector.families, int(table.sum(table.Key(self.ring_index[ring.name])).value))
                for ring, collector, _ in self.readers]

    def close(self) -> None:
        for _, _, reader in self.readers:
            reader.close()
        self.bpf.cleanup()


def ring_sizes(collectors: list[Collector], ring_pages: int | None) -> dict[str, int]:
    """Pages per ring: each ring's own default, or `ring_pages` for all of them."""
    return {r.name: ring_pages or r.pages for r, _ in rings_of(collectors)}


def _ring_text(ring: Ring, pages: int) -> str:
    """ring_template.h instantiated for one ring: its emit helper, and its in-flight table if it has one."""
    sections = dict(part.split("\n", 1) for part in (HERE / "ring_template.h").read_text().split("@@")[1:])
    text = sections["ring"] + (sections["inflight"] if ring.inflight else "")
    return (f'#include "{ring.header}"\n'
            + Template(text).substitute(name=ring.name, struct=ring.struct, pages=pages))


def compose(collectors: list[Collector], *, ring_pages: int | None, filter_pids: bool, comm: str | None
            ) -> tuple[str, list[str], list[str], list[str], list[Collector]]:
    """(program text, cflags, attached tracepoints, missing tracepoints, collectors kept)."""
    attached, missing, kept = [], [], []
    for c in collectors:
        absent = [tp for tp in c.requires if not tracepoint_exists(tp)]
        if absent:
            missing += absent
            continue
        kept.append(c)
        attached += c.requires
        for tp in c.tracepoints:
            (attached if tracepoint_exists(tp) else missing).append(tp)
    rings = rings_of(kept)
    sizes = ring_sizes(kept, ring_pages)
    ioctl = [c.name for c in kept if c.uses_ioctl]
    cflags = [f"-I{HERE}", f"-DVMT_NRINGS={max(len(rings), 1)}"]
    cflags += [d for d in c_defines() if d[2:].split("=")[0] not in KERNEL_DEFINES]
    cflags += [f"-DRING_{r.name}={i}" for i, (r, _) in enumerate(rings)]
    cflags += [f"-D{have_macro(tp)}" for tp in attached]
    cflags.append("-DVMT_IOCTL_COLLECTORS(X)=" + " ".join(f"X({n})" for n in ioctl))
    if filter_pids:
        cflags.append("-DVMT_FILTER")
    if comm:
        cflags += [f'-DVMT_COMM="{comm[:15]}"', f"-DVMT_COMM_LEN={len(comm[:15])}"]
    # Inlined, not #included: bcc builds tracepoint argument structs only for probes in the main text.
    parts = [("common.h", (HERE / "common.h").read_text())]
    for c in kept:
        parts += [(f"ring_template.h: {r.name}", _ring_text(r, sizes[r.name])) for r in c.rings]
        parts.append((c.source, (HERE / c.source).read_text()))
    if ioctl:
        parts.append(("ioctl.bpf.c", (HERE / "ioctl.bpf.c").read_text()))
    text = "".join(f"/* {name} */\n{body}" for name, body in parts)
    return text, cflags, sorted(set(attached)), sorted(set(missing)), kept


def load(collectors: list[Collector], *, ring_pages: int | None = None, filter_pids: bool = False,
         comm: str | None = None, qemu_binary: str | None = None) -> Program:
    """Compile and attach; `ring_pages` overrides every ring's own default size."""
    from bcc import BPF

    if ring_pages is not None and (ring_pages <= 0 or ring_pages & (ring_pages - 1)):
        raise ValueError(f"--ring-pages must be a power of two, got {ring_pages}")
    text, cflags, attached, missing, kept = compose(collectors, ring_pages=ring_pages,
                                                    filter_pids=filter_pids or bool(comm), comm=comm)
    try:
        bpf = BPF(text=text, cflags=cflags)
    except Exception as e:  # bcc raises a bare Exception; clang's messages are already on stderr
        raise CompileError(f"the BPF program did not compile or load ({e}); clang's messages are above. "
                           f"Kernel headers: /lib/modules/{os.uname().release}/build") from None
    for c in kept:
        if c.attach:
            more, absent = c.attach(bpf, qemu_binary)
            attached += more
            missing += absent
    rings = rings_of(kept)
    nbytes = {name: pages * PAGE_SIZE for name, pages in ring_sizes(kept, ring_pages).items()}
    readers = [(r, c, RingReader(bpf[f"{r.name}_ring"].map_fd, nbytes[r.name], r.dtype)) for r, c in rings]
    index = {r.name: i for i, (r, _) in enumerate(rings)}
    return Program(bpf, kept, readers, index, attached, missing, nbytes)
