"""USDT (SystemTap SDT) probes of a binary: where they are, how to read their arguments, attaching one.

bcc reads the `.note.stapsdt` notes and parses each argument's location ("8@%rdi", "-4@-20(%rbp)",
"4@$5"). bcc's own USDT support generates argument-reading C per probe at compile time, which
would need the binaries known before the one BPF program is compiled; QEMUs appear while we
collect. So each argument becomes a small spec (constant, register, or memory at register +
offset) that one generic BPF handler interprets (collectors/qemu.bpf.c, qemu_usdt_N).

Probes guarded by a semaphore (what QEMU's dtrace backend generates: a trace point fires only
while its semaphore is non-zero) are attached with the kernel's reference counter
(ref_ctr_offset), which raises the semaphore in every process mapping the binary.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

# struct pt_regs on x86-64, in u64 slots: where each register bcc names sits in a uprobe's context.
PT_REGS_X86_64 = {name: i for i, name in enumerate((
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
    "orig_ax", "ip", "cs", "flags", "sp", "ss"))}

ARG_NONE, ARG_CONST, ARG_REG, ARG_MEM = 0, 1, 2, 3
MAX_ARGS = 8  # qemu_usdt_rec.args; vhost_vdpa_dma_map has 8


@dataclass(frozen=True)
class UsdtArg:
    kind: int       # ARG_CONST, ARG_REG or ARG_MEM
    size: int       # bytes: 1, 2, 4, 8
    signed: bool
    reg: int = 0    # pt_regs slot (ARG_REG, ARG_MEM base)
    value: int = 0  # the constant (ARG_CONST) or the displacement (ARG_MEM)


@dataclass(frozen=True)
class UsdtSite:
    """One location of one probe: a probe inlined at several call sites has several."""
    probe: str                    # name without the provider
    address: int                  # as the note gives it (virtual address)
    semaphore: int                # virtual address of the semaphore; 0 if none
    args: tuple[UsdtArg, ...] | None  # None: an argument location this reader cannot interpret


def _arg(a) -> UsdtArg | None:
    from bcc.libbcc import BCC_USDT_ARGUMENT_FLAGS as F

    if a.valid & F.CONSTANT:
        return UsdtArg(ARG_CONST, a.size, a.signed, value=a.constant)
    if not a.valid & F.BASE_REGISTER_NAME or a.valid & (F.DEREF_IDENT | F.INDEX_REGISTER_NAME):
        return None  # rip-relative globals and indexed addressing: not needed by QEMU's probes so far
    reg = PT_REGS_X86_64.get(a.base_register_name.decode())
    if reg is None:
        return None
    if a.valid & F.DEREF_OFFSET:
        return UsdtArg(ARG_MEM, a.size, a.signed, reg, a.deref_offset)
    return UsdtArg(ARG_REG, a.size, a.signed, reg)


def sites(path: str, provider: str) -> dict[str, list[UsdtSite]]:
    """Every location of every `provider` probe in the binary at `path` ({} without SDT notes)."""
    from bcc import USDT

    out: dict[str, list[UsdtSite]] = {}
    try:
        ctx = USDT(path=path)
    except Exception:  # bcc raises a bare Exception for a file it cannot read as ELF
        return out
    for probe in ctx.enumerate_probes():
        if probe.provider.decode() != provider:
            continue
        name = probe.name.decode()
        for i in range(probe.num_locations):
            loc = probe.get_location(i)
            args = tuple(_arg(loc.get_argument(j)) for j in range(probe.num_arguments))
            ok = len(args) <= MAX_ARGS and all(a is not None for a in args)
            out.setdefault(name, []).append(UsdtSite(name, loc.address, probe.semaphore, args if ok else None))
    return out


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of a virtual address of the binary (the kernel's reference counter wants it)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise ValueError(f"{path}: address 0x{vaddr:x} is in no loaded segment")


_attach_with_ref_ctr = None


def attach_at(bpf, path: str, offset: int, fn_name: str, *, ref_ctr_offset: int = 0) -> None:
    """Attach `fn_name` as a uprobe at a file offset of the binary at `path`, with the given
    reference counter. bcc detaches these with its own at cleanup.

    Only for USDT sites: the kernel refuses two uprobes at one offset with different counters, and
    bcc's own attach_uprobe passes an undefined one (its binding omits the argument), so probes on
    functions, which other bcc tools may probe too, go through bcc's attach_uprobe.
    """
    global _attach_with_ref_ctr
    from bcc import BPF
    from bcc.libbcc import lib

    if _attach_with_ref_ctr is None:
        # libbcc's C function takes ref_ctr_offset as a 7th argument that bcc's Python binding omits.
        proto = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_ulonglong,
                             ct.c_int, ct.c_uint32)
        _attach_with_ref_ctr = proto(("bpf_attach_uprobe", lib))
    fn = bpf.load_func(fn_name.encode(), BPF.KPROBE)
    ev_name = bpf._get_uprobe_evname(b"p", path.encode(), offset, -1)
    fd = _attach_with_ref_ctr(fn.fd, 0, ev_name, path.encode(), offset, -1, ref_ctr_offset)
    if fd < 0:
        raise OSError(f"could not attach {fn_name} to {path}+0x{offset:x}")
    bpf._add_uprobe_fd(ev_name, fd)


def attach(bpf, path: str, site: UsdtSite, fn_name: str) -> None:
    """Attach `fn_name` at `site`, raising the probe's semaphore while attached if it has one."""
    attach_at(bpf, path, file_offset(path, site.address), fn_name,
              ref_ctr_offset=file_offset(path, site.semaphore) if site.semaphore else 0)
