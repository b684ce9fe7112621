"""QEMU 7.2 on this machine under KVM with `-trace` for every catalogue event 7.2 has (a balloon
device that is inflated and deflated, a migration with dirty logging), its log imported: every
catalogue line of the log is exactly one row (or one counted KVM ioctl that is not KVM_RUN).

The line counts come from the log text itself (Python, independent of the importer's parser)."""

import os
import re
import time
from collections import Counter
from pathlib import Path

from pipeline.importers.qemu_catalogue import CATALOGUE
from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import open_run
from tests.conftest import require
from tests.qemu_vm import QEMU, QemuVM

FAMILY = {e.name: e.family for e in CATALOGUE}
LINE = re.compile(r"^(\d+)@\d+\.\d+:(\w+)")


def test_real_qemu_log_of_the_whole_catalogue(tmp_path):
    require(Path(QEMU).exists(), f"{QEMU} is not installed")
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is not usable")
    with QemuVM(tmp_path, memory_mb=256, traces=tuple(FAMILY),
                extra=("-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on")) as vm:
        qemu_pid = vm.proc.pid
        time.sleep(1.0)
        vm.qmp("balloon", value=192 << 20)   # no guest driver: only QEMU's side of the request
        time.sleep(0.3)
        vm.qmp("balloon", value=256 << 20)
        assert vm.migrate_to_null()["status"] == "completed"
    text = vm.log.read_text()
    per_event = Counter(m[2] for m in map(LINE.match, text.splitlines()) if m and m[2] in FAMILY)
    assert per_event["kvm_set_user_memory"] > 10 and per_event["kvm_run_exit"] > 0
    assert per_event["migration_bitmap_sync_start"] > 0 and per_event["virtio_balloon_to_target"] == 2
    kvm_run = sum(1 for line in text.splitlines()
                  if ":kvm_vcpu_ioctl " in line and re.search(r"type 0xae80,", line))

    res = import_qemu_log([vm.log], tmp_path / "run")
    run = open_run(tmp_path / "run")
    session = run.manifest["sessions"][0]
    expected = Counter()
    for event, n in per_event.items():
        expected[FAMILY[event]] += n
    expected["vcpu_runs"] -= per_event["kvm_vcpu_ioctl"] - kvm_run
    assert res["rows"] == {f: n for f, n in expected.items() if n}
    assert session.get("catalogue_events_outside_family", {}).get("kvm_vcpu_ioctl", 0) == \
        per_event["kvm_vcpu_ioctl"] - kvm_run
    assert res["bad"] == 0 and session["unknown_events"] == {}
    assert session["clock"]["domain"] == "realtime" and session["formats"] == {"tid@sec.usec": sum(per_event.values())}
    # QEMU's first line is its main thread creating slot 0: the process id is proven by the log.
    assert res["pid"] == qemu_pid
    targets = [r["size"] for r in run.read_family("qemu").to_pylist() if r["event"] == "balloon_target"]
    assert targets == [192 << 20, 256 << 20]
