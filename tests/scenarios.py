"""Real QEMU scenarios with a booted Linux guest (TCG: a Linux guest does not boot under KVM on
these machines), driven over QMP, each writing QEMU's own trace log.

    balloon     inflate to half of guest RAM, then deflate
    reporting   free page reporting on; the guest fills and frees a tmpfs file in a loop
    hint        free page hinting on (iothread); migrate to `exec:cat > /dev/null`

The guest is Debian's kernel (the package linux-image-amd64 names, fetched with apt-get
download) and a busybox-static initramfs that loads the virtio balloon modules, all cached in
$VMEMTRACE_CACHE (default /var/cache/vmemtrace/guest).

    python -m tests.scenarios NAME WORKDIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.qemu_vm import QemuVM

CACHE = Path(os.environ.get("VMEMTRACE_CACHE", "/var/cache/vmemtrace/guest"))
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "virtio_balloon")
READY = "vmemtrace-guest-ready"
MEMORY_MB = 512
TRACES = ("virtio_balloon_*", "ram_block_discard_range", "migration_bitmap_sync_*", "kvm_set_user_memory")

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(MODULES)}; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
mkdir -p /t && mount -t tmpfs -o size=320m tmpfs /t
echo {READY}
# Churn: fill and free memory, so free page reporting has pages to report.
while true; do dd if=/dev/zero of=/t/f bs=1M count=160 2>/dev/null; rm -f /t/f; sleep 1; done
"""


def guest_image() -> tuple[Path, Path]:
    """(kernel, initramfs), built once into CACHE."""
    kernel, initrd = CACHE / "vmlinuz", CACHE / "initramfs.cpio.gz"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                             check=True).stdout
    package = next(w.split()[-1] for w in depends.splitlines()
                   if "Depends: linux-image-" in w and w.split()[-1][len("linux-image-"):][:1].isdigit())
    subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("linux-image-*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    root = work / "root"
    for d in ("bin", "proc", "sys", "dev", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for m in MODULES:
        ko = next((work / "x" / "lib" / "modules").rglob(f"{m}.ko*"))
        shutil.copy(ko, root / "lib" / "modules" / f"{m}.ko")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    cpio = subprocess.run(f"cd {root} && find . | cpio -o -H newc --quiet | gzip -1", shell=True, check=True,
                          capture_output=True).stdout
    initrd.write_bytes(cpio)
    shutil.copy(next((work / "x" / "boot").glob("vmlinuz-*")), kernel)
    shutil.rmtree(work)
    return kernel, initrd


class GuestVM(QemuVM):
    def __init__(self, workdir: Path):
        kernel, initrd = guest_image()
        self.console = workdir / "console.log"
        super().__init__(workdir, memory_mb=MEMORY_MB, traces=TRACES, accel="tcg", extra=(
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1",
            "-serial", f"file:{self.console}", "-object", "iothread,id=io0",
            "-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on,free-page-hint=on,iothread=io0"))

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.console.exists() and READY in self.console.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError("QEMU exited before the guest was ready")
            time.sleep(0.2)
        raise RuntimeError(f"the guest did not boot in {timeout} s; console: {self.console}")

    def balloon_to(self, mb: int, timeout: float = 120) -> int:
        """Ask for `mb` MiB of guest RAM and wait until the guest gets there (or stops moving)."""
        self.qmp("balloon", value=mb << 20)
        deadline, last, still = time.monotonic() + timeout, None, 0
        while time.monotonic() < deadline:
            actual = self.qmp("query-balloon")["actual"]
            if actual == mb << 20:
                return actual
            still = still + 1 if actual == last else 0
            if still >= 20:  # 4 s without progress: the guest gave what it could
                return actual
            last = actual
            time.sleep(0.2)
        return last


def run(name: str, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    with GuestVM(workdir) as vm:
        vm.wait_ready()
        result: dict = {"qemu_pid": vm.proc.pid}
        if name == "balloon":
            result["inflated_to"] = vm.balloon_to(MEMORY_MB // 2)
            result["deflated_to"] = vm.balloon_to(MEMORY_MB)
        elif name == "reporting":
            time.sleep(12)  # reports follow freed memory by ~2 s in the guest
        elif name == "hint":
            result["migration"] = vm.migrate_to_null(timeout=120)["status"]
        else:
            raise ValueError(f"unknown scenario {name!r}")
    return result


if __name__ == "__main__":
    import json

    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(json.dumps(run(sys.argv[1], Path(sys.argv[2]))))
