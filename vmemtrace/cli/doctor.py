"""`vmemtrace doctor`: can this host collect? Each thing collect needs, OK or what to do."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vmemtrace.cli.common import EXIT_BAD_INPUT, cell, out

MIN_KERNEL = (5, 8)  # BPF ring buffers
# QEMU 5.1 replaced the balloon inhibitor with the discard counters: one of each pair is expected.
REPLACED_BY = {"qemu_balloon_inhibit": "ram_block_discard_disable",
               "qemu_balloon_is_inhibited": "ram_block_discard_is_disabled"}


@dataclass
class Check:
    name: str
    status: str          # ok, warn (collect works with less) or fail (collect cannot run)
    detail: str
    fix: str = ""


def _kernel() -> Check:
    release = platform.release()
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return Check("kernel", "warn", f"{release}: version not understood", "")
    if version < MIN_KERNEL:
        return Check("kernel", "fail", f"{release}: BPF ring buffers need {'.'.join(map(str, MIN_KERNEL))}+",
                     "run a newer kernel")
    return Check("kernel", "ok", release)


def _root() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", "ok", "root")
    return Check("privileges", "fail", f"uid {os.geteuid()}: loading BPF needs CAP_BPF and CAP_PERFMON",
                 "run collect as root (sudo)")


def _tracefs() -> Check:
    from collectors.program import TRACEFS

    if (TRACEFS / "events").is_dir():
        return Check("tracefs", "ok", str(TRACEFS))
    return Check("tracefs", "fail", f"not mounted at {TRACEFS}",
                 f"mount -t tracefs nodev {TRACEFS} (or vmemtrace collect --mount)")


def _btf() -> Check:
    if Path("/sys/kernel/btf/vmlinux").is_file():
        return Check("kernel BTF", "ok", "/sys/kernel/btf/vmlinux")
    return Check("kernel BTF", "warn", "/sys/kernel/btf/vmlinux missing", "not needed by vmemtrace's programs")


def _bcc() -> tuple[Check, object | None]:
    try:
        import bcc
    except ImportError:
        return Check("bcc", "fail", "Python module bcc not importable",
                     "apt-get install bpfcc-tools python3-bpfcc libbpfcc, then make setup-host "
                     "(the PyPI package named bcc is unrelated)"), None
    return Check("bcc", "ok", f"{getattr(bcc, '__version__', 'version unknown')} ({bcc.__file__})"), bcc


def _headers() -> Check:
    build = Path("/lib/modules") / platform.release() / "build"
    if build.exists():
        return Check("kernel headers", "ok", str(build.resolve()))
    return Check("kernel headers", "fail", f"{build} does not exist",
                 "apt-get install linux-headers-amd64 and link it there (make setup-host does both)")


def _bpf_load(bcc_module) -> Check:
    """Compile and load a one-instruction program: proves clang, headers and the bpf() syscall."""
    if bcc_module is None or os.geteuid() != 0:
        return Check("BPF load", "fail", "not tried (needs root and bcc)", "fix the checks above")
    try:
        b = bcc_module.BPF(text=b"int vmemtrace_doctor(void *ctx) { return 0; }")
        b.load_func(b"vmemtrace_doctor", bcc_module.BPF.SOCKET_FILTER)
        b.cleanup()
    except Exception as e:  # noqa: BLE001 - bcc raises plain Exception for compile and load errors
        return Check("BPF load", "fail", f"bcc could not compile or load a program: {e}",
                     "check kernel headers and that the kernel allows bpf()")
    return Check("BPF load", "ok", "compiled and loaded a test program")


def usdt_probes(binary: Path) -> list[str]:
    """PROVIDER:NAME of every USDT probe (SystemTap SDT note) in an ELF file."""
    from elftools.elf.elffile import ELFFile

    with open(binary, "rb") as fh:
        sec = ELFFile(fh).get_section_by_name(".note.stapsdt")
        data = sec.data() if sec is not None else b""
    probes, pos = [], 0
    while pos + 12 <= len(data):
        namesz, descsz, _type = (int.from_bytes(data[pos + i:pos + i + 4], "little") for i in (0, 4, 8))
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        desc = data[desc_at:desc_at + descsz]
        # desc: pc, base, semaphore (8 bytes each on 64-bit), then provider\0name\0args\0
        provider, name = desc[24:].split(b"\0")[:2]
        probes.append(f"{provider.decode(errors='replace')}:{name.decode(errors='replace')}")
        pos = desc_at + ((descsz + 3) & ~3)
    return probes


def exported_functions(binary: Path, wanted: set[str]) -> set[str]:
    """Which of `wanted` the ELF file defines as functions (dynamic or static symbol table)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    found: set[str] = set()
    with open(binary, "rb") as fh:
        for sec in ELFFile(fh).iter_sections():
            if isinstance(sec, SymbolTableSection):
                found |= {s.name for s in sec.iter_symbols()
                          if s.name in wanted and s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"}
    return found


def _qemu(binary: Path) -> list[Check]:
    from collectors.qemu import FUNCTIONS

    if not binary.is_file():
        return [Check("QEMU binary", "warn", f"{binary}: no such file",
                      "pass --qemu PATH (collect attaches to the QEMU that runs; QEMU events need its binary)")]
    try:
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        version = "version unknown"
    checks = [Check("QEMU binary", "ok", f"{binary}: {version}")]
    try:
        usdt = usdt_probes(binary)
        wanted = {f[0] for f in FUNCTIONS}
        symbols = exported_functions(binary, wanted)
    except Exception as e:  # noqa: BLE001 - pyelftools raises its own ELFError and struct errors
        return checks + [Check("QEMU probes", "fail", f"{binary}: not a readable ELF file ({e})", "")]
    checks.append(Check("QEMU USDT probes", "ok" if usdt else "warn",
                        f"{len(usdt)} static probes" if usdt else "none (QEMU not built with the dtrace backend)",
                        "" if usdt else "fine: exported symbols are used instead"))
    missing = sorted(f for f in wanted - symbols if REPLACED_BY.get(f) not in symbols)
    replaced = sorted(f for f in wanted - symbols if REPLACED_BY.get(f) in symbols)
    status = "ok" if not missing else ("warn" if symbols else "fail")
    checks.append(Check("QEMU exported functions", status,
                        f"{len(symbols)} of {len(wanted)}" + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; {', '.join(replaced)}: replaced in this QEMU version" if replaced else ""),
                        "" if status == "ok" else
                        "older QEMUs lack some (expected); with none, build QEMU with symbols exported "
                        "or the dtrace trace backend"))
    return checks


def collect_blockers() -> list[str]:
    """What stops `vmemtrace collect` on this host, each with what to do (quick: nothing is loaded)."""
    bcc_check, _ = _bcc()
    return [f"{c.name}: {c.detail}" + (f" ({c.fix})" if c.fix else "")
            for c in (_kernel(), _root(), _tracefs(), bcc_check, _headers()) if c.status == "fail"]


def doctor(
    qemu: Annotated[Optional[Path], typer.Option("--qemu", help="QEMU binary to inspect [default: "
                                                 "/usr/bin/qemu-system-x86_64].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as a JSON array.")] = False,
) -> None:
    """Check this host can collect: kernel, privileges, tracefs, BPF, bcc, headers, QEMU and its probes.

    Each check is ok, warn (collect works with less) or fail, with what to do.
    Exit 0 when nothing failed, 2 otherwise.
    """
    from collectors.qemu import DEFAULT_BINARY

    bcc_check, bcc_module = _bcc()
    checks = [_kernel(), _root(), _tracefs(), _btf(), bcc_check, _headers(), _bpf_load(bcc_module),
              *_qemu(qemu or Path(DEFAULT_BINARY))]
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        t = Table("check", "status", "detail", "what to do")
        for c in checks:
            t.add_row(cell(c.name), cell(c.status.upper()), cell(c.detail), cell(c.fix))
        out.print(t)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(EXIT_BAD_INPUT)
