"""`vmemtrace doctor` on this host and on real binaries: Debian's QEMU, and a program built here
with QEMU-named USDT probes (<sys/sdt.h>) and one exported QEMU function."""

try:
    import bcc  # noqa: F401  (doctor reads a binary's probes with bcc, as the collector does)
    HAVE_BCC = True
except ImportError:
    HAVE_BCC = False

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

QEMU = Path("/usr/bin/qemu-system-x86_64")

PROBED = r"""
#include <sys/sdt.h>
#include <stdint.h>
int ram_block_discard_range(void *rb, uint64_t start, uint64_t length) {
    DTRACE_PROBE3(qemu, ram_block_discard_range, rb, start, length);
    return 0;
}
int main(void) {
    DTRACE_PROBE2(qemu, vfio_listener_region_add_ram, 0x1000, 0x2000);
    return ram_block_discard_range(0, 0, 4096);
}
"""


@pytest.fixture(scope="module")
def probed_binary(tmp_path_factory):
    require(shutil.which("gcc") is not None and any(Path("/usr/include").glob("**/sys/sdt.h")),
            "gcc and systemtap-sdt-dev are needed to build the probe program")
    d = tmp_path_factory.mktemp("sdt")
    (d / "probed.c").write_text(PROBED)
    subprocess.run(["gcc", "-O0", "-rdynamic", "-o", str(d / "probed"), str(d / "probed.c")], check=True)
    return d / "probed"


def doctor(cli, *args):
    res = cli("doctor", "--json", *args)
    return res.exit_code, {c["name"]: c for c in json.loads(res.stdout)}


def test_doctor_on_the_probe_program(cli, probed_binary):
    require(HAVE_BCC, "bcc is not importable")
    code, checks = doctor(cli, "--qemu", probed_binary)
    assert checks["QEMU USDT probes"] == {"name": "QEMU USDT probes", "status": "ok",
                                          "detail": "2 qemu probes, 2 used by vmemtrace", "fix": ""}
    assert checks["QEMU binary"]["status"] == "warn"  # no version string: not a real QEMU
    functions = checks["QEMU exported functions"]
    assert functions["status"] == "warn" and functions["detail"].startswith("1 of ")
    assert "missing" in functions["detail"] and "ram_block_discard_range" not in functions["detail"]


def test_doctor_on_this_host(cli):
    require(os.geteuid() == 0, "doctor's BPF load needs root")
    require(QEMU.is_file(), f"{QEMU} is not installed")
    code, checks = doctor(cli)
    assert code == 0, checks
    for name in ("kernel", "privileges", "tracefs", "bcc", "kernel headers", "BPF load", "QEMU binary"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["QEMU binary"]["detail"].startswith(f"{QEMU}: QEMU 7.")
    # Debian's QEMU has no USDT notes but exports the functions; the pre-5.1 balloon ones (and the
    # 8.0 ones) are expected absent from a 7.2, not missing.
    assert checks["QEMU USDT probes"]["status"] == "warn"
    functions = checks["QEMU exported functions"]
    assert functions["status"] == "ok" and "missing" not in functions["detail"]
    assert "not in this QEMU version: " in functions["detail"] and "qemu_balloon_inhibit" in functions["detail"]


def test_doctor_fails_on_a_binary_without_probes(cli, tmp_path):
    require(HAVE_BCC, "bcc is not importable")
    code, checks = doctor(cli, "--qemu", "/bin/true")
    assert code == 2
    assert checks["QEMU exported functions"]["status"] == "fail" and checks["QEMU exported functions"]["fix"]
    text = tmp_path / "qemu"
    text.write_text("#!/bin/sh\necho QEMU emulator version 9\n")
    text.chmod(0o755)
    code, checks = doctor(cli, "--qemu", text)
    assert code == 2 and checks["QEMU exported functions"]["status"] == "fail"
    assert "no QEMU version string" in checks["QEMU binary"]["detail"]
    code, checks = doctor(cli, "--qemu", tmp_path / "missing")
    assert checks["QEMU binary"]["status"] == "warn" and "no such file" in checks["QEMU binary"]["detail"]
