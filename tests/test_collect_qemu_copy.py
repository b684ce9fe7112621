"""The QEMU that runs is the QEMU that is traced: a copy of Debian's QEMU under another path, started
after the collector, driven through a migration over QMP, gets uprobes on its own file (a copy is
another inode), and the manifest names it, not /usr/bin's."""

import os
import shutil
import time

import duckdb
import pyarrow.compute as pc
import pytest

from pipeline.runstore import open_run
from tests.conftest import background_collector, require_qemu_kvm
from tests.qemu_vm import QEMU, QemuVM


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    require_qemu_kvm(QEMU)
    work = tmp_path_factory.mktemp("qemu-copy")
    binary = work / "bin" / "qemu-copy"
    binary.parent.mkdir()
    shutil.copy2(QEMU, binary)
    run = work / "run"
    with background_collector(run, "qemu-copy", 300, start_timeout=120) as collector:
        # Debian's firmware path is relative to the binary (relocatable build): -L gives it back.
        with QemuVM(work, binary=str(binary), extra=("-L", "/usr/share/qemu", "-L", "/usr/share/seabios")) as vm:
            pid = vm.proc.pid
            time.sleep(1.0)
            migration = vm.migrate_to_null()
        time.sleep(0.5)
    err = collector["stderr"]
    assert collector["returncode"] == 0, err
    print(f"collector stopped {collector['stopped_in']:.2f} s after SIGINT")  # figure for the README, not asserted
    return {"run": open_run(run), "binary": str(binary), "pid": pid, "migration": migration, "stderr": err}

def test_the_copy_is_the_traced_binary(copied):
    session = copied["run"].manifest["sessions"][-1]
    (binary,) = session["traced"]["qemu_binaries"]
    assert binary["path"] == copied["binary"]
    assert binary["inode"] == os.stat(copied["binary"]).st_ino != os.stat(QEMU).st_ino
    assert binary["version"].startswith("7.2")
    assert copied["pid"] in binary["pids"]
    assert binary["probes"]["qemu_guest_free_page_hint"] == "uprobe"
    assert "accel_ioctl_inhibit_begin" in binary["not_in_version"]  # QEMU 8.0's
    assert not any(QEMU in a for a in session["attached"])
    assert f"QEMU {copied['binary']} (7.2" in copied["stderr"]

def test_migration_seen_through_the_copy(copied):
    q = copied["run"].read_family("qemu")
    q = q.filter(pc.equal(q["pid"], copied["pid"])).sort_by("ts_ns").to_pylist()
    events = [r["event"] for r in q]
    assert copied["migration"]["status"] == "completed"
    assert events.index("dirty_log_start") < events.index("dirty_log_stop")
    notify = [r["detail"] for r in q if r["event"] == "precopy_notify"]
    assert notify[0] == "setup" and notify[-1] == "cleanup"

def test_memslot_updates_fall_inside_memory_transaction_commits(copied):
    """Transaction boundaries: each memslot ioctl of the copy is issued inside an outermost
    memory_region_transaction_commit on the same thread, from the start of that thread's first
    recorded commit on (a commit running while the probes went in has no record; a thread's
    outermost commits do not overlap)."""
    run = copied["run"]
    con = duckdb.connect()
    con.register("m", run.read_family("memslots"))
    con.register("q", run.read_family("qemu"))
    inside, outside = con.execute("""
        WITH c AS (SELECT * FROM q WHERE event = 'memory_commit' AND pid = $pid),
             seen AS (SELECT tid, min(ts_ns) AS first_start FROM c GROUP BY tid),
             mm AS (SELECT m.* FROM m JOIN seen USING (tid) WHERE m.pid = $pid AND m.ts_ns >= seen.first_start)
        SELECT count(*) FILTER (WHERE c.ts_ns IS NOT NULL), count(*) FILTER (WHERE c.ts_ns IS NULL)
        FROM mm LEFT JOIN c ON c.tid = mm.tid AND mm.ts_ns BETWEEN c.ts_ns AND c.end_ns
    """, {"pid": copied["pid"]}).fetchone()
    assert inside > 0 and outside == 0
