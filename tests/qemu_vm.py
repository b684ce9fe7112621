"""A real QEMU for tests: started under KVM (firmware only: a Linux guest does not boot under KVM
on these machines), driven over QMP with the qemu.qmp library, with QEMU's own trace log written
beside it. `binary` runs another QEMU executable (a copy, an engineer's build)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from qemu.qmp import ConnectError, ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

QEMU = "/usr/bin/qemu-system-x86_64"


class QemuVM:
    def __init__(self, workdir: Path, *, memory_mb: int = 128, traces=("kvm_set_user_memory",),
                 extra: tuple[str, ...] = (), accel: str = "kvm", binary: str = QEMU):
        self.qmp_path = workdir / "qmp.sock"
        self.log = workdir / "qemu-trace.log"
        args = [binary, "-accel", accel, "-m", str(memory_mb), "-display", "none", "-nodefaults",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off", "-msg", "timestamp=on", "-D", str(self.log)]
        for t in traces:
            args += ["-trace", t]
        self.args = args + list(extra)
        self.proc: subprocess.Popen | None = None
        self._qmp: QEMUMonitorProtocol | None = None

    def start(self) -> "QemuVM":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not self.qmp_path.exists():  # QEMU creates its socket, then listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {self.proc.stderr.read().decode()}")
            time.sleep(0.05)
        while True:
            qmp = QEMUMonitorProtocol(str(self.qmp_path))
            try:
                qmp.connect(negotiate=True)  # reads the greeting, sends qmp_capabilities
                break
            except ConnectError:
                qmp.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not start: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        self._qmp = qmp
        return self

    def qmp(self, command: str, **arguments) -> dict:
        try:
            return self._qmp.cmd(command, **arguments)
        except ExecuteError as e:
            raise RuntimeError(f"QMP {command}: {e}") from None

    def migrate_to_null(self, timeout: float = 60) -> dict:
        self.qmp("migrate", uri="exec:cat > /dev/null")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.qmp("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            time.sleep(0.05)
        raise RuntimeError("migration did not finish")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.qmp("quit")
            except (QMPError, OSError, EOFError):  # QEMU may close the socket before it answers
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._qmp:
            try:
                self._qmp.close()
            except EOFError:  # qemu.qmp re-raises QEMU's own hang-up after quit: expected
                pass

    def __enter__(self) -> "QemuVM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`python -m tests.qemu_vm migrate WORKDIR`: start QEMU under KVM (firmware only), let it run,
    migrate it to `exec:cat > /dev/null`, quit. The workload behind the bundled real run."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.qemu_vm")
    ap.add_argument("action", choices=["migrate"])
    ap.add_argument("workdir", type=Path)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with QemuVM(args.workdir) as vm:
        time.sleep(1.0)
        status = vm.migrate_to_null()["status"]
    print(f"migration {status}; QEMU trace log: {vm.log}")
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
