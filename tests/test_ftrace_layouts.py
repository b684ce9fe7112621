"""Every line layout the kernel and trace-cmd print, header and loss lines, clocks, processes, streaming.

Lines are written from the printf formats of kernel/trace/trace_output.c (trace_print_context:
'%16s-%-7d ', '(%7s) ' with record-tgid, '[%03d] ', flags, '%5lu.%06lu: ') and trace-cmd's
tracecmd/trace-read.c ('%*s: ' file prefix when several files are read, '%16s-%-5d [%03d]', and
'%8.8s-%-5d %3d' plus latency flags with -l), with the events' own TP_printk formats after them.
"""

import gzip
import json

import pytest

from pipeline.constants import KVM_RUN, PID_MAX_LIMIT
from pipeline.importers import TraceFormatError
from pipeline.importers import ftrace_lines
from pipeline.importers.ftrace import import_ftrace
from pipeline.runstore import open_run
from tests.conftest import FIXTURES

PF = "kvm_page_fault: vcpu {v} rip 0xffffffff81040f72 address 0x{a:016x} error_code 0x182"


def tracefs(comm: str, tid: int, cpu: int, ts: str, body: str, *, flags: str = ".....", tgid: int | None = None):
    tg = "" if tgid is None else f"({tgid:>7}) "
    return f"{comm:>16}-{tid:<7} {tg}[{cpu:03d}] {flags} {ts}: {body}"


def write(tmp_path, lines, name="trace.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(run_dir, family):
    return open_run(run_dir).read_family(family).sort_by("ts_ns").to_pylist()


def session(run_dir):
    return open_run(run_dir).manifest["sessions"][-1]


@pytest.mark.parametrize("flags", ["", "....", "d..2.", "dNh2.", "d..2..", "Xnhs1f."])
def test_flag_columns_of_every_width(tmp_path, flags):
    line = tracefs("CPU 0/KVM", 4145, 2, "86.581928", PF.format(v=0, a=0x1000), flags=flags)
    import_ftrace([write(tmp_path, [line])], tmp_path / "run")
    (r,) = rows(tmp_path / "run", "guest_accesses")
    assert (r["tid"], r["comm"], r["gpa"], r["ts_ns"], r["vcpu"]) == (4145, "CPU 0/KVM", 0x1000, 86_581_928_000, 0)


def test_vcpu_thread_without_leading_blanks_is_an_event(tmp_path):
    """'CPU 5/KVM-4145 ...' at the start of a line was once taken for the 'CPU 0 is empty' header."""
    lines = ["cpus=8", "CPU 0 is empty", "version = 6", "# tracer: nop",
             "CPU 5/KVM-4145    [002] .....    86.581928: " + PF.format(v=5, a=0x113600000)]
    import_ftrace([write(tmp_path, lines)], tmp_path / "run")
    assert [r["tid"] for r in rows(tmp_path / "run", "guest_accesses")] == [4145]
    assert session(tmp_path / "run")["ftrace"]["lines"]["header"] == 4
    assert session(tmp_path / "run")["non_trace_lines"]["count"] == 0


def test_comms_with_spaces_dashes_and_unknown(tmp_path):
    lines = [tracefs("tdxvm-13694", 13714, 65, "807.856265",
                     "kvm_mmu_set_spte: gfn 1151b spte 86000080a5669b37 (rwxu) level 1 at 80b34fc8d8", flags="...."),
             tracefs("<...>", 35788, 37, "2825.959082", "kvm_page_fault: address fd000 error_code 14", flags="...."),
             tracefs("IO mon_iothread", 900, 1, "2825.959090", "kvm_mmio: mmio read len 4 gpa 0xfed00000 val 0x0")]
    import_ftrace([write(tmp_path, lines)], tmp_path / "run")
    got = {r["tid"]: r for r in rows(tmp_path / "run", "guest_accesses")}
    assert got[13714]["comm"] == "tdxvm-13694" and got[13714]["pfn"] == 0x80A5669 and got[13714]["write"]
    assert got[35788]["comm"] == "<...>" and got[35788]["error_code"] == 0x14
    assert got[900]["comm"] == "IO mon_iothread" and got[900]["write"] is False


def test_trace_cmd_multi_file_report_keeps_host_and_guest_apart(tmp_path):
    """`trace-cmd report -i host.dat -i guest.dat` prefixes every line with '%*s: ' (trace-read.c,
    print_handle_file); the same thread id in both files is two threads of two machines."""
    lines = [" host.dat: cpus=2", "guest.dat: cpus=1",
             " host.dat:  qemu-system-x86-1000  [001]   100.000001: " + PF.format(v=0, a=0x2000),
             "guest.dat:             bash-1000  [000]   100.000002: sys_madvise(start: 7f0000200000, len_in: 1000, "
             "behavior: 4)",
             "guest.dat:             bash-1000  [000]   100.000003: sys_madvise -> 0x0"]
    import_ftrace([write(tmp_path, lines)], tmp_path / "run")
    (fault,) = rows(tmp_path / "run", "guest_accesses")
    (discard,) = rows(tmp_path / "run", "discards")
    assert fault["tid"] == 1000 and discard["tid"] == 1000 + PID_MAX_LIMIT
    assert fault["pid"] != discard["pid"] and discard["ret"] == 0
    ns = session(tmp_path / "run")["ftrace"]["namespaces"]
    assert ns == {"host.dat": {"index": 0, "id_offset": 0, "file": True},
                  "guest.dat": {"index": 1, "id_offset": PID_MAX_LIMIT, "file": True}}


def test_trace_cmd_latency_layout(tmp_path):
    """trace-cmd report -l: '%8.8s-%-5d %3d' with the latency flags glued to the CPU number."""
    lines = ["qemu-sys-1000    1d..1   100.000001: kvm_mmio: mmio write len 4 gpa 0xfee000b0 val 0x0"]
    import_ftrace([write(tmp_path, lines)], tmp_path / "run")
    (r,) = rows(tmp_path / "run", "guest_accesses")
    assert (r["comm"], r["tid"], r["gpa"], r["write"]) == ("qemu-sys", 1000, 0xFEE000B0, True)


def test_lost_events_lines(tmp_path):
    """tracefs prints 'CPU:%d [LOST %lu EVENTS]', trace-cmd 'CPU:%d [%lld EVENTS DROPPED]' or, when it
    cannot count, 'CPU:%d [EVENTS DROPPED]': lost events for that CPU, ending at its next event."""
    lines = [tracefs("CPU 0/KVM", 10, 0, "5.000000", PF.format(v=0, a=0x1000)),
             "CPU:1 [LOST 17 EVENTS]",
             tracefs("CPU 1/KVM", 11, 1, "6.000000", PF.format(v=1, a=0x2000)),
             "CPU:0 [5 EVENTS DROPPED]",
             tracefs("CPU 0/KVM", 10, 0, "7.000000", PF.format(v=0, a=0x3000)),
             "CPU:1 [EVENTS DROPPED]",
             tracefs("CPU 1/KVM", 11, 1, "8.000000", PF.format(v=1, a=0x4000))]
    res = import_ftrace([write(tmp_path, lines)], tmp_path / "run")
    lost = rows(tmp_path / "run", "lost_events")
    assert [(r["count"], r["ts_ns"]) for r in lost] == [(17, 6 * 10**9), (5, 7 * 10**9), (1, 8 * 10**9)]
    assert "CPU 1" in lost[0]["reason"] and "at least 1" in lost[2]["reason"]
    assert res["lost"] == 23 and open_run(tmp_path / "run").manifest["lost"] == {"ftrace": 23}
    assert res["non_trace"] == 0 and res["bad"] == 0


def test_clock_stated_in_the_trace(tmp_path):
    """A pasted tracefs trace_clock file names the clock in brackets; it wins over no option and
    contradicts a different --trace-clock."""
    lines = ["local global counter uptime perf [mono] mono_raw boot x86-tsc",
             tracefs("CPU 0/KVM", 10, 0, "5.000000", PF.format(v=0, a=0x1000))]
    trace = write(tmp_path, lines)
    res = import_ftrace([trace], tmp_path / "run")
    assert res["clock"]["domain"] == "monotonic" and "stated in the trace" in res["clock"]["source"]
    with pytest.raises(TraceFormatError, match="--trace-clock local but the trace says it was recorded with mono"):
        import_ftrace([trace], tmp_path / "run2", trace_clock="local")
    res = import_ftrace([trace], tmp_path / "run3", trace_clock="mono")
    assert res["clock"]["domain"] == "monotonic"


def test_other_clocks_stay_relative_unless_aligned(tmp_path):
    trace = write(tmp_path, [tracefs("CPU 0/KVM", 10, 0, "5.000000", PF.format(v=0, a=0x1000))])
    assert import_ftrace([trace], tmp_path / "a", trace_clock="local")["clock"]["domain"] == "relative"
    res = import_ftrace([trace], tmp_path / "b", trace_clock="boot", clock_offset_ns=1000)
    assert (res["clock"]["domain"], res["clock"]["alignment"], res["clock"]["offset_ns"]) == ("monotonic", "given", 1000)
    assert rows(tmp_path / "b", "guest_accesses")[0]["ts_ns"] == 5 * 10**9 - 1000


def test_kvm_run_from_ioctl_syscalls(tmp_path):
    """sys_enter_ioctl / sys_exit_ioctl with cmd KVM_RUN: one vcpu_runs 'run' per pair, vCPU index from
    QEMU's thread name; other ioctls of the same thread pair but are not imported."""
    lines = [tracefs("CPU 1/KVM", 1011, 1, "10.000000", f"sys_ioctl(fd: 1c, cmd: {KVM_RUN:x}, arg: 0)", tgid=1000),
             tracefs("CPU 1/KVM", 1011, 1, "10.000500", "sys_ioctl -> 0x0", tgid=1000),
             tracefs("CPU 1/KVM", 1011, 1, "10.000600", "sys_ioctl(fd: 1c, cmd: 4090ae82, arg: 7ffd0000)",
                     tgid=1000),
             tracefs("CPU 1/KVM", 1011, 1, "10.000700", "sys_ioctl -> 0xfffffffffffffffc", tgid=1000),
             tracefs("CPU 1/KVM", 1011, 1, "10.000800", f"sys_ioctl(fd: 1c, cmd: {KVM_RUN:x}, arg: 0)", tgid=1000)]
    res = import_ftrace([write(tmp_path, lines)], tmp_path / "run", trace_clock="mono")
    runs = rows(tmp_path / "run", "vcpu_runs")
    assert [(r["op"], r["vcpu"], r["vcpu_fd"], r["pid"], r["ret"], r["end_ns"]) for r in runs] == [
        ("run", 1, 0x1C, 1000, 0, 10_000_500_000), ("run", 1, 0x1C, 1000, None, None)]
    assert session(tmp_path / "run")["ftrace"]["not_imported"] == {"sys_ioctl": 1}
    assert res["pid_from"]["summary"] == "tgid column"


def test_processes_from_qemu_thread_names_and_pid_options(tmp_path):
    lines = [tracefs("qemu-system-x86", 5000, 0, "1.000001", "kvm_mmio: mmio write len 4 gpa 0x1000 val 0x0"),
             tracefs("CPU 0/KVM", 5010, 0, "1.000002", PF.format(v=0, a=0x1000)),
             tracefs("vhost-5000", 5020, 1, "1.000003", "kvm_mmio: mmio read len 4 gpa 0x2000 val 0x0"),
             tracefs("kworker/1:2", 77, 1, "1.000004", "kvm_mmio: mmio read len 4 gpa 0x3000 val 0x0")]
    trace = write(tmp_path, lines)
    import_ftrace([trace], tmp_path / "a")
    pid = {r["tid"]: r["pid"] for r in rows(tmp_path / "a", "guest_accesses")}
    assert pid == {5000: 5000, 5010: 5000, 5020: 5000, 77: 77}
    account = session(tmp_path / "a")["pid_from"]
    assert account["threads"] == {"tgid column": 0, "--pid": 0, "qemu thread names": 3, "thread id": 1}
    assert account["qemu_processes"][0]["from"] == "the vhost worker named after QEMU's process"
    import_ftrace([trace], tmp_path / "b", pids=["4000", "kworker/1:2=12", "5020=4001"])
    pid = {r["tid"]: r["pid"] for r in rows(tmp_path / "b", "guest_accesses")}
    assert pid == {5000: 4000, 5010: 4000, 5020: 4001, 77: 12}
    with pytest.raises(TraceFormatError, match="expected PID, TID=PID or COMM=PID"):
        import_ftrace([trace], tmp_path / "c", pids=["qemu=x"])


def test_streaming_in_tiny_blocks_gives_the_same_rows(tmp_path, monkeypatch):
    """Blocks cut anywhere (here: every few bytes) change nothing: pairing, read-ahead of wrapped lines
    and counts carry over from block to block."""
    traces = [FIXTURES / "ftrace" / "formats.txt", FIXTURES / "third-party" / "f3-vannapurve-2022-upm-thp.txt",
              FIXTURES / "third-party" / "f8-kvm-example-2017-realmode-pf.txt"]
    whole = {}
    for t in traces:
        import_ftrace([t], tmp_path / f"whole-{t.stem}")
        whole[t] = open_run(tmp_path / f"whole-{t.stem}")
    monkeypatch.setattr(ftrace_lines, "BLOCK_BYTES", 61)
    for t in traces:
        import_ftrace([t], tmp_path / f"tiny-{t.stem}")
        tiny = open_run(tmp_path / f"tiny-{t.stem}")
        for family, n in whole[t].row_counts().items():
            a = whole[t].read_family(family).drop_columns(["event_id"]).sort_by("ts_ns").to_pylist()
            b = tiny.read_family(family).drop_columns(["event_id"]).sort_by("ts_ns").to_pylist()
            assert sorted(map(json.dumps, a)) == sorted(map(json.dumps, b)), (t, family)
        s1, s2 = whole[t].manifest["sessions"][0], tiny.manifest["sessions"][0]
        assert s1["ftrace"]["lines"] == s2["ftrace"]["lines"] and s1["unknown_events"] == s2["unknown_events"]


def test_gzip_and_binary_inputs(tmp_path):
    src = (FIXTURES / "third-party" / "f1-seanjc-2022-kvm_page_fault.txt").read_bytes()
    gz = tmp_path / "trace.txt.gz"
    gz.write_bytes(gzip.compress(src))
    res = import_ftrace([gz], tmp_path / "run")
    assert res["rows"] == {"guest_accesses": 7}
    assert session(tmp_path / "run")["inputs"][0]["bytes"] == gz.stat().st_size
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(TraceFormatError, match="gzip stream is truncated"):
        import_ftrace([cut], tmp_path / "run2")
    dat = tmp_path / "trace.dat"
    dat.write_bytes(b"\x17\x08\x44tracing6\x00" + bytes(64))
    with pytest.raises(TraceFormatError, match="trace-cmd report"):
        import_ftrace([dat], tmp_path / "run3")
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


def test_numbers_out_of_range_name_line_and_field(tmp_path):
    lines = [tracefs("CPU 0/KVM", 10, 0, "5.000000", PF.format(v=0, a=0x1000)),
             tracefs("CPU 0/KVM", 10, 0, "5.000001", "kvm_mmio: mmio write len 4 gpa 0x1fffffffffffffffff val 0x0"),
             tracefs("CPU 0/KVM", 5000000, 0, "5.000002", PF.format(v=0, a=0x1000)),
             tracefs("q", 10, 0, "5.000003", "unmap: IOMMU: iova=0x1000 size=99999999999999999999 unmapped_size=0")]
    trace = write(tmp_path, lines)
    with pytest.raises(TraceFormatError, match=rf"^{trace}:2: kvm_mmio: .*field 'gpa'"):
        import_ftrace([trace], tmp_path / "run")
    res = import_ftrace([trace], tmp_path / "run", skip_bad=True)
    assert res["bad"] == 3 and res["rows"] == {"guest_accesses": 1}
    bad = session(tmp_path / "run")["bad_lines"]
    assert [b.split(":")[1] for b in bad] == ["2", "3", "4"]
    assert "PID_MAX_LIMIT" in bad[1] and "field 'size'" in bad[2]
