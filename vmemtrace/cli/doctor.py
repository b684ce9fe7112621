"""`vmemtrace doctor`: can this host collect? Each thing collect needs, OK or what to do."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vmemtrace.cli.common import EXIT_BAD_INPUT, cell, out

MIN_KERNEL = (5, 8)  # BPF ring buffers


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


def _qemu(binary: Path, bcc_module) -> list[Check]:
    """The QEMU binary as the qemu collector sees it (collectors.qemu_binaries, the one definition of
    its version and probes): USDT notes, exported functions, and which absences its version explains."""
    if not binary.is_file():
        return [Check("QEMU binary", "warn", f"{binary}: no such file",
                      "pass --qemu PATH (collect attaches to the QEMU that runs; QEMU events need its binary)")]
    if bcc_module is None:
        return [Check("QEMU binary", "fail", f"{binary}: not inspected (bcc reads its probes)", "install bcc")]
    from collectors.qemu import FUNCTIONS, USDT_BY_NAME
    from collectors.qemu_binaries import inspect

    qb = inspect(str(binary), tuple(f.symbol for f in FUNCTIONS), force=True)
    checks = [Check("QEMU binary", "ok" if qb.version else "warn", f"{binary}: "
                    + (f"QEMU {qb.version}" if qb.version else "no QEMU version string (is it QEMU?)"))]
    used = sorted(set(qb.usdt) & set(USDT_BY_NAME))
    checks.append(Check("QEMU USDT probes", "ok" if used else "warn",
                        f"{len(qb.usdt)} qemu probes, {len(used)} used by vmemtrace" if qb.usdt
                        else "none (QEMU not built with the dtrace trace backend)",
                        "" if used else "fine when it exports the functions below"))
    expected_absent = sorted(f.symbol for f in FUNCTIONS
                             if f.symbol not in qb.functions and qb.in_version(f.since, f.until) is False)
    missing = sorted(f.symbol for f in FUNCTIONS if f.symbol not in qb.functions and f.symbol not in expected_absent)
    status = "ok" if not missing else ("warn" if qb.functions or used else "fail")
    checks.append(Check("QEMU exported functions", status,
                        f"{len(qb.functions)} of {len(FUNCTIONS)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; not in this QEMU version: {', '.join(expected_absent)}" if expected_absent else ""),
                        {"ok": "", "warn": "QEMU events of the missing functions will not be recorded",
                         "fail": "nothing to probe: build QEMU with the dtrace trace backend or keep its "
                                 "symbols exported"}[status]))
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
              *_qemu(qemu or Path(DEFAULT_BINARY), bcc_module)]
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        t = Table("check", "status", "detail", "what to do")
        for c in checks:
            t.add_row(cell(c.name), cell(c.status.upper()), cell(c.detail), cell(c.fix))
        out.print(t)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(EXIT_BAD_INPUT)
