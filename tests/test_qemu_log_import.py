"""QEMU trace log import: every prefix form QEMU writes, every catalogue event, time, process,
provenance and the error contract (file, line, field; nothing written on a rejected input)."""

import gzip
import hashlib
import json
import shutil

import pyarrow.compute as pc
import pytest

from pipeline.importers import TraceFormatError
from pipeline.importers import qemu_log
from pipeline.importers.host_clock import offset_from_collector_sessions
from pipeline.importers.qemu_catalogue import CATALOGUE
from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import RunWriter, open_run
from tests.conftest import FIXTURES

LOG = FIXTURES / "qemu-log" / "formats.log"
MEMSLOT = "kvm_set_user_memory Slot#2 flags=0x2 gpa=0xfffc0000 size=0x40000 ua=0x7f3b14600000 ret=0"
ROW = {"as_id": 0, "slot": 2, "flags": 2, "gpa": 0xFFFC0000, "size": 0x40000, "hva": 0x7F3B14600000, "ret": 0}
T = 1795262400_123456_000        # 2026-11-21T12:00:00.123456Z

# One line per prefix form, built from QEMU's own format of that form (see qemu_prefixes), and
# what it says: (time, clock domain, tid, comm, pid).
FORMS = {
    "log backend, no -msg timestamp (7.2..10.0)": (MEMSLOT, None, "untimed", 0, "qemu-system", 0),
    "log backend TID@SEC.USEC (7.2..10.0)": ("4242@1795262400.123456:" + MEMSLOT, T, "realtime", 4242,
                                             "qemu-system", 0),   # a thread id, not proven the main one
    "qemu_log ISO-8601 (10.1+)": ("2026-11-21T12:00:00.123456Z " + MEMSLOT, T, "realtime", 0, "qemu-system", 0),
    "qemu_log ISO-8601, zero microseconds (glib drops the fraction)":
        ("2026-11-21T12:00:00Z " + MEMSLOT, T - 123456_000, "realtime", 0, "qemu-system", 0),
    "message context, defaults": ("qemu-system-x86_64: (4243:main): " + MEMSLOT, None, "untimed", 4243, "main", 4243),
    "message context, all parts": ("2026-11-21T12:00:00.123456Z [vm 1] qemu-system-x86_64: (4244:CPU 0/KVM): "
                                   + MEMSLOT, T, "realtime", 4244, "CPU 0/KVM", 0),
    "message context, thread-info=off": ("qemu-system-x86_64: " + MEMSLOT, None, "untimed", 0, "qemu-system", 0),
    "leading whitespace": ("   \t" + MEMSLOT, None, "untimed", 0, "qemu-system", 0),
    "syslog RFC 3164 / journalctl short": ("Nov 21 12:00:00 hv7 qemu-system-x86_64[4245]: " + MEMSLOT,
                                           (325 * 86400 + 12 * 3600) * 10**9, "relative", 0, "qemu-system-x86", 4245),
    "syslog RFC 3339 / journalctl short-iso-precise": (
        "2026-11-21T13:00:00.123456+01:00 hv7 qemu-system-x86_64[4245]: " + MEMSLOT, T, "realtime", 0,
        "qemu-system-x86", 4245),
    "journalctl short-iso": ("2026-11-21T12:00:00+0000 hv7 qemu-system-x86_64[4245]: " + MEMSLOT, T - 123456_000,
                             "realtime", 0, "qemu-system-x86", 4245),
    "journalctl short-monotonic": ("[ 1234.500000] hv7 qemu-system-x86_64[4245]: " + MEMSLOT, 1234_500_000_000,
                                   "monotonic", 0, "qemu-system-x86", 4245),
    "journalctl json": (json.dumps({"__REALTIME_TIMESTAMP": "1795262400123456", "_PID": "4245", "_HOSTNAME": "hv7",
                                    "SYSLOG_IDENTIFIER": "qemu-system-x86_64", "MESSAGE": MEMSLOT}),
                        T, "realtime", 0, "qemu-system-x86", 4245),
    "journal of the log backend's stderr": (
        "Nov 21 12:00:00 hv7 qemu-system-x86_64[4245]: 4246@1795262400.123456:" + MEMSLOT, T, "realtime", 4246,
        "qemu-system-x86", 4245),
}


def _one(tmp_path, text, **kw):
    src = tmp_path / "in.log"
    src.write_text(text + "\n")
    res = import_qemu_log([src], tmp_path / "run", **kw)
    return res, open_run(tmp_path / "run")


@pytest.mark.parametrize("form", FORMS)
def test_every_prefix_form(tmp_path, form):
    line, ts, domain, tid, comm, pid = FORMS[form]
    res, run = _one(tmp_path, "qemu-system-x86_64: warning: host doesn't support requested feature\n" + line)
    row = run.read_family("memslots").to_pylist()
    assert len(row) == 1 and {k: row[0][k] for k in ROW} == ROW
    assert row[0]["ts_ns"] == (2 if ts is None else ts)   # untimed: the line's sequence number
    assert (row[0]["tid"], row[0]["comm"], row[0]["pid"]) == (tid, comm, pid)
    session = run.manifest["sessions"][0]
    assert session["clock"]["domain"] == domain and session["clock"]["alignment"] == "none"
    assert session["non_trace_lines"] == {"count": 1, "first": [1]}
    if "hv7" in line:
        assert session["traced"]["host"] == "hv7"


# (arguments as QEMU prints them, family, expected columns) for every catalogue event.
EXPECTED = {
    "kvm_set_user_memory": ("Slot#65537 flags=0x2 gpa=0xfffc0000 size=0x40000 ua=0x7f8b04400000 ret=0", "memslots",
                            {"ioctl": "region", "as_id": 1, "slot": 1, "flags": 2, "size": 0x40000}),
    "vfio_listener_region_add_ram": ("region_add [ram] 0x100000 - 0x7fffffff [0x7f3b17b00000]", "dma",
                                     {"api": "qemu_vfio", "op": "map", "iova": 0x100000, "size": 0x7FF00000,
                                      "vaddr": 0x7F3B17B00000}),
    "vfio_listener_region_add_iommu": ("region_add [iommu] 0x0 - 0xffffffffffffffff", "dma",
                                       {"op": "map", "iova": 0, "size": 2**64 - 1, "vaddr": None}),
    "vfio_listener_region_del": ("region_del 0xa0000 - 0xbffff", "dma",
                                 {"api": "qemu_vfio", "op": "unmap", "iova": 0xA0000, "size": 0x20000}),
    "vfio_iommu_map_notify": ("iommu UNMAP @ 0xfffff000 - 0xffffffff", "dma",
                              {"op": "unmap", "iova": 0xFFFFF000, "size": 0x1000}),
    "iommufd_backend_map_dma": (" iommufd=3 ioas=2 iova=0x0 size=0x80000000 addr=0x7f3b17a00000 readonly=0 (0)",
                                "dma", {"api": "qemu_iommufd", "fd": 3, "ioas_id": 2, "vaddr": 0x7F3B17A00000,
                                        "size": 0x80000000, "ret": 0}),
    "iommufd_backend_map_file_dma": (" iommufd=303 ioas=2 iova=0x30000000000 size=0xb90000 fd=306 start=0 "
                                     "readonly=0 (0)", "dma", {"api": "qemu_iommufd", "op": "map", "fd": 303,
                                                               "iova": 0x30000000000, "size": 0xB90000}),
    "iommufd_backend_unmap_dma": (" iommufd=3 ioas=2 iova=0x0 size=0x80000000 (0)", "dma",
                                  {"api": "qemu_iommufd", "op": "unmap", "size": 0x80000000}),
    "iommufd_backend_unmap_dma_non_exist": (" Unmap nonexistent mapping: iommufd=3 ioas=2 iova=0x0 size=0x1000 (-2)",
                                            "dma", {"op": "unmap", "ret": -2}),
    "vhost_vdpa_dma_map": ("vdpa:0x55d0c8a3e2a0 fd: 17 msg_type: 2 asid: 0 iova: 0x1000 size: 0x2000 "
                           "uaddr: 0x7f3b17a00000 perm: 0x3 type: 2", "dma",
                           {"api": "vhost_vdpa", "op": "map", "fd": 17, "iova": 0x1000, "size": 0x2000,
                            "vaddr": 0x7F3B17A00000, "flags": 3}),
    "vhost_vdpa_dma_unmap": ("vdpa:0x55d0c8a3e2a0 fd: 17 msg_type: 2 iova: 0x1000 size: 0x2000 type: 3", "dma",
                             {"api": "vhost_vdpa", "op": "unmap", "iova": 0x1000}),
    "virtio_balloon_handle_output": ("section name: pc.ram gpa: 0x7ffc000", "qemu",
                                     {"event": "balloon_page", "gpa": 0x7FFC000, "size": 4096, "detail": "pc.ram"}),
    "virtio_balloon_get_config": ("num_pages: 65536 actual: 2", "qemu",
                                  {"event": "balloon_get_config", "count": 65536, "size": 8192}),
    "virtio_balloon_set_config": ("actual: 3 oldactual: 2", "qemu",
                                  {"event": "balloon_set_config", "count": 3, "detail": "oldactual=2"}),
    "virtio_balloon_to_target": ("balloon target: 0x10000000 num_pages: 65536", "qemu",
                                 {"event": "balloon_target", "size": 0x10000000, "count": 65536}),
    "virtio_mem_plug_request": ("addr=0x140000000 nb_blocks=3", "qemu",
                                {"event": "virtio_mem_plug", "gpa": 0x140000000, "count": 3}),
    "virtio_mem_unplug_request": ("addr=0x140000000 nb_blocks=1", "qemu", {"event": "virtio_mem_unplug"}),
    "virtio_mem_unplug_all_request": ("", "qemu", {"event": "virtio_mem_unplug_all"}),
    "ram_block_discard_range": ("pc.ram@0x7f8aefe00000 + 0x200000: madvise: 1 fallocate: 0 ret: 0", "qemu",
                                {"detail": "pc.ram", "hva": 0x7F8AEFE00000, "size": 0x200000, "ret": 0}),
    "ram_discard_range": ("pc.ram: start: 7ffc000 1000", "qemu", {"rb_offset": 0x7FFC000, "size": 0x1000}),
    "kvm_run_exit": ("cpu_index 1, reason 2", "vcpu_runs", {"op": "exit", "vcpu": 1, "exit_reason": 2}),
    "kvm_vcpu_ioctl": ("cpu_index 1, type 0xae80, arg (nil)", "vcpu_runs", {"op": "enter", "vcpu": 1}),
    "kvm_clear_dirty_log": ("slot#65537 start 0x40 size 0x40", "dirty_log",
                            {"op": "kvm_clear_dirty_log", "as_id": 1, "slot": 1, "first_page": 0x40, "num_pages": 64}),
    "kvm_dirty_ring_reap": ("reaped 12 pages (took 5 us)", "dirty_log", {"op": "kvm_reset_dirty_rings",
                                                                         "num_pages": 12}),
    "kvm_dirty_ring_page": ("vcpu 0 fetch 17 offset 0x7ffc", "guest_accesses",
                            {"via": "dirty_ring_push", "vcpu": 0, "page_offset": 0x7FFC}),
    "migration_bitmap_sync_start": ("", "qemu", {"event": "bitmap_sync_start"}),
    "migration_bitmap_sync_end": ("dirty_pages 1234", "qemu", {"event": "bitmap_sync_end", "count": 1234}),
    "migration_bitmap_clear_dirty": ("rb pc.ram start 0x40000 size 0x40000 page 0x40", "qemu",
                                     {"event": "bitmap_clear_dirty", "detail": "pc.ram", "rb_offset": 0x40000,
                                      "count": 0x40}),
    "pci_cfg_write": ("vfio-pci 00:04.0 @0x4 <- 0x0", "qemu",
                      {"event": "pci_cfg_write", "detail": "vfio-pci 00:04.0", "cfg_offset": 4, "cfg_value": 0}),
}


def test_expectations_cover_the_catalogue():
    assert set(EXPECTED) == {e.name for e in CATALOGUE}


@pytest.mark.parametrize("event", EXPECTED)
def test_every_catalogue_event(tmp_path, event):
    args, family, expected = EXPECTED[event]
    res, run = _one(tmp_path, f"7@1795262400.123456:{event} {args}".rstrip())
    assert res["rows"] == {family: 1} and res["unknown"] == {}
    row = run.read_family(family).to_pylist()[0]
    assert {k: row[k] for k in expected} == expected
    assert (row["ts_ns"], row["tid"], row["source"]) == (T, 7, "qemu-log")


def test_catalogue_examples_parse(tmp_path):
    """The README's example line of every event is one of QEMU's real formats."""
    src = tmp_path / "in.log"
    src.write_text("".join(f"{e.name} {e.example}\n" for e in CATALOGUE))
    res = import_qemu_log([src], tmp_path / "run")
    assert sum(res["rows"].values()) == len(CATALOGUE) and res["bad"] == 0


def test_kvm_vcpu_ioctl_other_than_kvm_run_is_counted(tmp_path):
    res, run = _one(tmp_path, "kvm_vcpu_ioctl cpu_index 0, type 0x8090ae81, arg 0x7ffd0000\n"
                    "kvm_vcpu_ioctl cpu_index 0, type 0x2000ae80, arg (nil)")   # ppc64's KVM_RUN
    assert res["rows"] == {"vcpu_runs": 1}
    assert run.manifest["sessions"][0]["catalogue_events_outside_family"] == {"kvm_vcpu_ioctl": 1}


def test_unknown_trailing_arguments_are_kept(tmp_path):
    res, run = _one(tmp_path, MEMSLOT + " restricted_fd=19 restricted_offset=0x0\n"
                    "ram_block_discard_range pc.ram@0x7f00 + 0x1000: madvise: 1 fallocate: 0 ret: 0 why=test")
    assert res["rows"] == {"memslots": 1, "qemu": 1}
    session = run.manifest["sessions"][0]
    assert session["extra_arguments"] == {"kvm_set_user_memory": ["restricted_fd", "restricted_offset"],
                                          "ram_block_discard_range": ["why"]}
    assert run.read_family("qemu")["detail"].to_pylist() == ["pc.ram why=test"]


def test_formats_fixture_realtime_unaligned(tmp_path):
    res = import_qemu_log([LOG], tmp_path / "run")
    assert res["rows"] == {"memslots": 4, "qemu": 6}
    assert res["unknown"] == {"virtio_rng_request": 1}
    run = open_run(tmp_path / "run")
    m = run.read_family("memslots").to_pylist()
    assert (m[0]["as_id"], m[0]["slot"], m[0]["ts_ns"]) == (0, 0, 1795263920840692000)   # wall clock, as logged
    assert (m[1]["as_id"], m[1]["slot"], m[1]["flags"]) == (1, 1, 2)
    assert (m[2]["as_id"], m[2]["slot"], m[2]["ret"]) == (1, 3, -22)
    assert (m[3]["ioctl"], m[3]["gmem_fd"], m[3]["gmem_offset"]) == ("region2", 12, 0x1000)
    # the first line creates a memslot: QEMU's main thread, so the process
    assert all(r["pid"] == 8010 and r["comm"] == "qemu-system" for r in m)
    session = run.manifest["sessions"][0]
    assert session["clock"] == {"domain": "realtime", "source": session["clock"]["source"], "alignment": "none",
                                "offset_ns": None, "residual_ns": None, "matched_events": 0}
    assert session["pid"] == 8010 and "first memslot" in session["pid_from"]
    assert session["traced"] == {"host": "unknown", "kernel": "unknown", "qemu_version": None, "qemu_binaries": []}
    assert session["inputs"] == [{"path": str(LOG), "sha256": hashlib.sha256(LOG.read_bytes()).hexdigest(),
                                  "bytes": LOG.stat().st_size}]
    assert session["formats"] == {"tid@sec.usec": 11}


def test_clock_offset_gives_monotonic(tmp_path):
    res = import_qemu_log([LOG], tmp_path / "run", clock_offset_ns=1795263000_000000000)
    t = open_run(tmp_path / "run").read_family("memslots")["ts_ns"].to_pylist()
    assert t[0] == 920840692000 and res["clock"]["domain"] == "monotonic" and res["clock"]["alignment"] == "given"


def test_aligned_on_kernel_side_memslots_and_pid_from_kernel(tmp_path):
    run = tmp_path / "run"
    with RunWriter(run, source="bpf", kind="collector") as w:   # the same two ioctls, seen by the kernel
        w.write("memslots", {"ts_ns": [5_000_000, 15_000_000], "end_ns": [5_000_100, 15_000_200],
                             "pid": [9000, 9000], "tid": [8010, 8010], "comm": ["qemu-system-x86"] * 2,
                             "source": ["bpf:memslots"] * 2, "ioctl": ["region"] * 2, "as_id": [0, 1],
                             "slot": [0, 1], "flags": [0, 2], "gpa": [0, 0xFFFC0000], "size": [0x8000000, 0x40000],
                             "hva": [0x7F8AEFE00000, 0x7F8B04400000], "ret": [0, 0]})
    res = import_qemu_log([LOG], run)
    session = open_run(run).manifest["sessions"][-1]
    assert res["alignment"].method == "memslots" and res["alignment"].matched == 2
    assert session["clock"]["domain"] == "monotonic" and session["memslots_already_in_run"] == 2
    assert res["rows"]["memslots"] == 4 and res["written"]["memslots"] == 2 and res["pid"] == 9000 and "kernel-side" in res["pid_from"]
    qemu = open_run(run).read_family("qemu")
    assert pc.all(pc.equal(qemu["pid"], 9000)).as_py() and pc.min(qemu["ts_ns"]).as_py() > 0


def _collector_run(run, realtime_start_ns, seconds, drift_ns=0):
    """A run with one collector session that traced `seconds` from `realtime_start_ns` (wall
    clock) = 5 s monotonic on its host; the wall clock gains `drift_ns` by the stop."""
    with RunWriter(run, source="bpf", kind="collector") as w:
        w.write("discards", {"ts_ns": [6_000_000_000], "pid": [9000], "tid": [9000], "comm": ["qemu-system-x86"],
                             "source": ["bpf:discards"], "syscall": ["madvise"], "hva_start": [0x7F0000000000],
                             "size": [4096], "advice": [4], "ret": [0]})
    m = json.loads((run / "manifest.json").read_text())
    m["sessions"][0].update(realtime_start_ns=realtime_start_ns, monotonic_start_ns=5_000_000_000,
                            realtime_end_ns=realtime_start_ns + seconds * 10**9 + drift_ns,
                            monotonic_end_ns=5_000_000_000 + seconds * 10**9,
                            clock={"domain": "monotonic", "source": "bpf_ktime_get_ns (CLOCK_MONOTONIC)",
                                   "alignment": "none", "offset_ns": None, "residual_ns": None, "matched_events": 0})
    (run / "manifest.json").write_text(json.dumps(m))


def test_aligned_on_the_clocks_a_collector_session_recorded(tmp_path):
    # The log (12:25:20-12:25:21 UTC) was written while the session traced (12:25:00 for 60 s).
    run = tmp_path / "run"
    _collector_run(run, 1795263900_000000000, 60, drift_ns=3000)
    res = import_qemu_log([LOG], run, pid=9000)   # with --pid, no other statement runs in between
    clock = open_run(run).manifest["sessions"][-1]["clock"]
    assert (clock["domain"], clock["alignment"], clock["from_session"]) == ("monotonic", "host", 1)
    assert (clock["offset_ns"], clock["residual_ns"]) == (1795263900_000000000 - 5_000_000_000, 3000)
    first = open_run(run).read_family("memslots")["ts_ns"][0].as_py()
    assert first == 1795263920840692000 - clock["offset_ns"] == 25_840_692_000
    assert res["written"]["memslots"] == 4   # no kernel-side memslots: nothing matched, all kept


def test_a_log_outside_every_collector_session_stays_on_the_wall_clock(tmp_path):
    run = tmp_path / "run"
    _collector_run(run, 1795263930_000000000, 60)   # started 10 s after the log's last line
    import_qemu_log([LOG], run)
    clock = open_run(run).manifest["sessions"][-1]["clock"]
    assert (clock["domain"], clock["alignment"], clock["offset_ns"]) == ("realtime", "none", None)


def test_the_steadiest_of_two_sessions_gives_the_offset():
    sessions = [{"session": n, "kind": "collector", "clock": {"domain": "monotonic"}, "realtime_start_ns": 100,
                 "monotonic_start_ns": 10, "realtime_end_ns": 1000 + drift, "monotonic_end_ns": 910}
                for n, drift in ((1, 50), (2, 5))]
    sessions.append({"session": 3, "kind": "collector", "clock": {"domain": "monotonic"}})   # no clocks: skipped
    found = offset_from_collector_sessions({"sessions": sessions}, 200, 900)
    assert (found.offset_ns, found.residual_ns, found.session) == (90, 5, 2)
    assert offset_from_collector_sessions({"sessions": sessions}, 50, 900) is None


def test_untimed_log_keeps_order(tmp_path):
    res, run = _one(tmp_path, "Some prose from a mail\n" + MEMSLOT + "\n{\"return\": {}}\n"
                    "virtio_balloon_to_target balloon target: 0x1000 num_pages: 1")
    assert run.read_family("memslots")["ts_ns"].to_pylist() == [2]
    assert run.read_family("qemu")["ts_ns"].to_pylist() == [4]
    session = run.manifest["sessions"][0]
    assert session["clock"]["domain"] == "untimed" and session["non_trace_lines"] == {"count": 2, "first": [1, 3]}
    assert session["lost"] == {} and session["pid"] is None and session["pid_from"].startswith("unknown")
    assert run.read_family("memslots")["pid"].to_pylist() == [0]


def test_bad_line_names_file_line_field_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.log"
    lines = LOG.read_text().splitlines()
    lines.insert(2, "8010@1795263920.851000:kvm_set_user_memory Slot#0 flags=0x0 gpa=0xzz size=0x0 ua=0x0 ret=0")
    lines.insert(4, "qemu-system-x86_64: warning: not a trace line")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError, match=rf"^{bad}:3: field 'gpa': kvm_set_user_memory: arguments") as e:
        import_qemu_log([bad], tmp_path / "run")
    assert (e.value.line, e.value.field) == (3, "gpa")
    assert not (tmp_path / "run").exists()
    res = import_qemu_log([bad], tmp_path / "run", skip_bad=True)
    assert res["bad"] == 1 and res["rows"]["memslots"] == 4 and res["non_trace"] == 1
    run = open_run(tmp_path / "run")
    assert run.manifest["lost"] == {"qemu-log": 1}
    assert run.manifest["sessions"][0]["bad_lines"][0].startswith(f"{bad}:3: field 'gpa'")


@pytest.mark.parametrize("args, field", [
    ("Slot#0 flags=0x0 gpa=0x0 size=0x10000000000000000 ua=0x0 ret=0", "size"),      # beyond uint64
    ("Slot#0 flags=0x0 gpa=0x0 size=0x1000 ua=0x0 ret=99999999999999999999", "ret"),
    ("Slot#0 flags=0x1ffffffff gpa=0x0 size=0x1000 ua=0x0 ret=0", "flags"),           # beyond the column
    ("Slot#0 flags=0x0 gpa=0x0", "size"),                                              # wrapped by a mail client
])
def test_out_of_range_and_truncated_arguments(tmp_path, args, field):
    src = tmp_path / "in.log"
    src.write_text(f"kvm_set_user_memory {args}\n")
    with pytest.raises(TraceFormatError) as e:
        import_qemu_log([src], tmp_path / "run")
    assert (e.value.line, e.value.field) == (1, field)


def test_a_file_without_trace_lines_is_an_error(tmp_path):
    src = tmp_path / "qmp.log"
    src.write_text('{"QMP": {"version": {}}}\nqemu-system-x86_64: -device foo: not found\n')
    with pytest.raises(TraceFormatError, match="no QEMU trace line among its 2 lines"):
        import_qemu_log([src], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_gzip_pid_comm_and_provenance_options(tmp_path):
    gz = tmp_path / "log.gz"
    with open(LOG, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    res = import_qemu_log([gz], tmp_path / "run", pid=4242, comm="qemu-kvm", host="hv3", kernel="6.1.0-13-amd64",
                          qemu_version="7.2.0")
    run = open_run(tmp_path / "run")
    t = run.read_family("memslots")
    assert t.num_rows == 4 and pc.all(pc.equal(t["pid"], 4242)).as_py() and set(t["comm"].to_pylist()) == {"qemu-kvm"}
    session = run.manifest["sessions"][0]
    assert session["traced"]["host"] == "hv3" and session["traced"]["kernel"] == "6.1.0-13-amd64"
    assert session["traced"]["qemu_version"] == "7.2.0" and session["pid_from"] == "--pid"
    assert session["inputs"][0]["sha256"] == hashlib.sha256(gz.read_bytes()).hexdigest()
    assert res["rows"]["memslots"] == 4


def test_qemu_version_from_qmp_greeting(tmp_path):
    _, run = _one(tmp_path, '{"QMP": {"version": {"qemu": {"micro": 50, "minor": 2, "major": 9}, "package": '
                  '"v9.2.0-987-gfd4129a8b9"}, "capabilities": ["oob"]}}\nmigration_bitmap_sync_start')
    assert run.manifest["sessions"][0]["traced"]["qemu_version"] == "9.2.50 (v9.2.0-987-gfd4129a8b9)"


def test_batches_and_files_keep_line_numbers_and_order(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu_log, "BATCH_BYTES", 64)   # many batches, lines cut across reads
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("".join(f"virtio_mem_plug_request addr=0x{i:x} nb_blocks=1\n" for i in range(50)) + "prose\n")
    b.write_text("prose\n" + "migration_bitmap_sync_start\n" * 3 + "kvm_set_user_memory Slot#0 flags=0x0 gpa=0zz\n")
    with pytest.raises(TraceFormatError, match=rf"^{b}:5: field 'gpa'"):
        import_qemu_log([a, b], tmp_path / "run")
    res = import_qemu_log([a, b], tmp_path / "run", skip_bad=True)
    q = open_run(tmp_path / "run").read_family("qemu")
    assert q["gpa"].to_pylist()[:50] == list(range(50))
    assert q["ts_ns"].to_pylist() == list(range(1, 51)) + [53, 54, 55]   # one sequence across both files
    session = open_run(tmp_path / "run").manifest["sessions"][0]
    assert [i["non_trace_lines"] for i in session["inputs"]] == [{"count": 1, "first": [51]},
                                                                {"count": 1, "first": [1]}]
    assert res["bad"] == 1
