"""The USDT path for real: a program built here from <sys/sdt.h> fires probes named and typed like
QEMU's (provider qemu, semaphores as dtrace generates them) and writes what it fired; `vmemtrace
collect -- PROGRAM` must record exactly that, in the families the QEMU-log importer uses.

Debian's QEMU has no USDT notes, so this is the only real test of collectors/usdt.py; it also
covers attaching to a binary that appears after the collector started (the traced command's
exec), QEMU's version read from the file, and the exported-function uprobes beside USDT."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.runstore import open_run
from tests.conftest import require, require_bcc

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_name("usdt_fake_qemu.c")
SDT_H = ("/usr/include/sys/sdt.h", "/usr/include/x86_64-linux-gnu/sys/sdt.h")


def _requirements() -> None:
    require(os.geteuid() == 0, "needs root")
    require(shutil.which("gcc") is not None, "gcc is not installed")
    require(any(Path(p).exists() for p in SDT_H), "sys/sdt.h is missing (apt-get install systemtap-sdt-dev)")
    require_bcc()


@pytest.fixture(scope="module", params=["-O2", "-O0"], ids=["args-in-registers", "args-on-stack"])
def fired(request, tmp_path_factory):
    _requirements()
    work = tmp_path_factory.mktemp("usdt")
    exe = work / "fake-qemu"
    subprocess.run(["gcc", request.param, "-rdynamic", "-o", str(exe), str(SOURCE)], check=True)
    out, run = work / "fired.jsonl", work / "run"
    proc = subprocess.run([sys.executable, "-m", "vmemtrace", "collect", "--run", str(run), "-f", "qemu",
                           "--", str(exe), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {"exe": exe, "run": open_run(run), "lines": lines, "stderr": proc.stderr}


def _rows(run, family, **equal):
    t = run.read_family(family)
    for column, value in equal.items():
        t = t.filter(pc.equal(t[column], value))
    return t.sort_by("event_id").to_pylist()


def test_discards_equal_what_was_fired(fired):
    want = [(d["rbname"], d["hva"], d["length"], d["ret"]) for d in fired["lines"]
            if d["probe"] == "ram_block_discard_range"]
    got = [(r["detail"], r["hva"], r["size"], r["ret"])
           for r in _rows(fired["run"], "qemu", event="ram_block_discard_range")]
    assert len(want) == 50 and got == want


def test_vfio_listener_rows_are_qemu_vfio_mappings(fired):
    maps = [(d["iova_start"], d["iova_end"] - d["iova_start"] + 1, d["vaddr"]) for d in fired["lines"]
            if d["probe"] == "vfio_listener_region_add_ram"]
    unmaps = [(d["start"], d["end"] - d["start"] + 1) for d in fired["lines"]
              if d["probe"] == "vfio_listener_region_del"]
    dma = _rows(fired["run"], "dma", api="qemu_vfio")
    assert [(r["iova"], r["size"], r["vaddr"]) for r in dma if r["op"] == "map"] == maps
    assert [(r["iova"], r["size"]) for r in dma if r["op"] == "unmap"] == unmaps
    assert len(maps) == len(unmaps) == 50


def test_balloon_pages(fired):
    want = [(d["name"], d["gpa"]) for d in fired["lines"] if d["probe"] == "virtio_balloon_handle_output"]
    got = [(r["detail"], r["gpa"]) for r in _rows(fired["run"], "qemu", event="balloon_page")]
    assert len(want) == 50 and got == want


def test_exported_functions_beside_usdt(fired):
    """Nested transaction commits are one event each; the inhibit pair is seen."""
    summary = next(d for d in fired["lines"] if d["probe"] == "commits")
    events = [r["event"] for r in _rows(fired["run"], "qemu")]
    assert events.count("memory_commit") == summary["outermost"]
    assert events.count("ioctl_inhibit_begin") == events.count("ioctl_inhibit_end") == summary["inhibits"]


def test_manifest_names_the_binary_its_version_and_probes(fired):
    session = fired["run"].manifest["sessions"][-1]
    (binary,) = session["traced"]["qemu_binaries"]
    assert binary["path"] == str(fired["exe"])
    assert binary["version"] == "8.1.0 (vmemtrace usdt test)"
    assert session["traced"]["qemu_version"] == binary["version"]
    probes = binary["probes"]
    for p in ("ram_block_discard_range", "vfio_listener_region_add_ram", "vfio_listener_region_del",
              "virtio_balloon_handle_output"):
        assert probes[p] == "usdt", p
    for p in ("memory_region_transaction_commit", "accel_ioctl_inhibit_begin", "accel_ioctl_inhibit_end"):
        assert probes[p] == "uprobe", p
    assert "qemu_balloon_inhibit" in binary["not_in_version"] and "qemu_balloon_inhibit" not in probes  # gone in 5.1
    assert probes["ram_block_discard_disable"] == "missing"               # 8.1 should have it
    assert probes["virtio_mem_plug_request"] == "missing"                 # a USDT build without it
    assert f"usdt:{fired['exe']}:ram_block_discard_range" in session["attached"]
    assert binary["attach_delay_ms"] is not None and binary["pids"]
