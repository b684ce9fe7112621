"""`vmemtrace doctor` on this host and on real binaries: Debian's QEMU, and a program built here
with QEMU-named USDT probes (<sys/sdt.h>) and one exported QEMU function."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from vmemtrace.cli.doctor import exported_functions, usdt_probes

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


def test_usdt_notes_and_exported_functions_of_a_real_binary(probed_binary):
    assert sorted(usdt_probes(probed_binary)) == ["qemu:ram_block_discard_range", "qemu:vfio_listener_region_add_ram"]
    assert exported_functions(probed_binary, {"ram_block_discard_range", "qemu_guest_free_page_hint"}) == {
        "ram_block_discard_range"}


def test_doctor_on_the_probe_program(cli, probed_binary):
    code, checks = doctor(cli, "--qemu", probed_binary)
    assert checks["QEMU USDT probes"]["status"] == "ok" and checks["QEMU USDT probes"]["detail"] == "2 static probes"
    assert checks["QEMU exported functions"]["status"] == "warn"
    assert checks["QEMU exported functions"]["detail"].startswith("1 of ")


def test_doctor_on_this_host(cli):
    require(os.geteuid() == 0, "doctor's BPF load needs root")
    require(QEMU.is_file(), f"{QEMU} is not installed")
    code, checks = doctor(cli)
    assert code == 0, checks
    for name in ("kernel", "privileges", "tracefs", "bcc", "kernel headers", "BPF load", "QEMU binary"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "QEMU emulator version" in checks["QEMU binary"]["detail"]
    # Debian's QEMU has no USDT notes but exports the functions; the pre-5.1 balloon ones are expected absent.
    assert checks["QEMU USDT probes"]["status"] == "warn"
    assert checks["QEMU exported functions"]["status"] == "ok"
    assert "qemu_balloon_inhibit" in checks["QEMU exported functions"]["detail"]


def test_doctor_fails_on_a_binary_without_probes(cli, tmp_path):
    code, checks = doctor(cli, "--qemu", "/bin/true")
    assert code == 2
    assert checks["QEMU exported functions"]["status"] == "fail" and checks["QEMU exported functions"]["fix"]
    text = tmp_path / "qemu"
    text.write_text("#!/bin/sh\necho QEMU emulator version 9\n")
    text.chmod(0o755)
    code, checks = doctor(cli, "--qemu", text)
    assert code == 2 and "not a readable ELF file" in checks["QEMU probes"]["detail"]
    code, checks = doctor(cli, "--qemu", tmp_path / "missing")
    assert checks["QEMU binary"]["status"] == "warn" and "no such file" in checks["QEMU binary"]["detail"]
