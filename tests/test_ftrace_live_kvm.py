"""Live: a real QEMU under KVM traced through a private tracefs instance (kvm events and the ioctl
syscalls, no TGID column), imported: KVM_RUN calls become vcpu_runs of QEMU's process, found from
QEMU's thread names alone, and every line of the real trace is accounted for."""

import os
import time

from pipeline.constants import KVM_RUN
from pipeline.importers.ftrace import import_ftrace
from pipeline.runstore import open_run
from tests.conftest import require, tracefs_instance
from tests.qemu_vm import QEMU, QemuVM

EVENTS = ("kvm/kvm_exit", "kvm/kvm_page_fault", "kvm/kvm_mmio", "kvm/kvm_userspace_exit",
          "syscalls/sys_enter_ioctl", "syscalls/sys_exit_ioctl")


def test_qemu_under_kvm(tmp_path):
    require(os.path.exists("/dev/kvm") and os.path.exists(QEMU), "needs /dev/kvm and QEMU")
    with tracefs_instance("vmemtrace-kvm") as inst:
        (inst / "buffer_size_kb").write_text("8192")
        for e in EVENTS:
            (inst / "events" / e / "enable").write_text("1")
        (inst / "events" / "syscalls" / "sys_enter_ioctl" / "filter").write_text(f"cmd == {KVM_RUN}")
        with QemuVM(tmp_path, extra=("-name", "live,debug-threads=on")) as vm:
            qemu_pid = vm.proc.pid
            time.sleep(1.5)
        (inst / "tracing_on").write_text("0")
        (tmp_path / "trace.txt").write_text((inst / "trace").read_text())
    res = import_ftrace([tmp_path / "trace.txt"], tmp_path / "run", trace_clock="mono")
    run = open_run(tmp_path / "run")
    session = run.manifest["sessions"][0]
    lines = session["ftrace"]["lines"]
    assert lines["read"] == sum(n for k, n in lines.items() if k != "read") and res["bad"] == 0
    assert res["non_trace"] == 0
    runs = [r for r in run.read_family("vcpu_runs").to_pylist() if r["comm"] == "CPU 0/KVM"]
    assert runs, "QEMU's vCPU thread ran KVM_RUN"
    assert {(r["pid"], r["vcpu"], r["op"]) for r in runs} == {(qemu_pid, 0, "run")}
    assert all(r["end_ns"] >= r["ts_ns"] for r in runs if r["end_ns"] is not None)
    assert sum(r["end_ns"] is not None for r in runs) >= len(runs) - 1  # only the last may lack its exit
    # (kvm_exit / kvm_page_fault do not fire on these nested-KVM hosts; their pairing is tested on f8/f9)
    exits = [r for r in run.read_family("guest_accesses").to_pylist() if r["via"] == "userspace_exit"]
    assert exits and {(r["pid"], r["vcpu"]) for r in exits} == {(qemu_pid, 0)}
