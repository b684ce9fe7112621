import gzip
import shutil

import pyarrow.compute as pc
import pytest

from pipeline.importers.jsonl import TraceFormatError
from pipeline.importers.qemu_log import import_qemu_log, parse
from pipeline.runstore import open_run
from tests.conftest import FIXTURES

LOG = FIXTURES / "qemu-log" / "formats.log"


def test_every_format_generation_and_event(tmp_path):
    res = import_qemu_log([LOG], tmp_path / "run", clock_offset_ns=1_000_000_000)
    assert res["rows"] == {"memslots": 4, "qemu": 5}
    assert res["unknown"] == {"virtio_balloon_get_config": 1}
    run = open_run(tmp_path / "run")
    m = run.read_family("memslots").to_pylist()
    # first generation: the raw slot word (as_id << 16 | slot); time = wall clock - offset
    assert (m[0]["as_id"], m[0]["slot"], m[0]["size"], m[0]["ts_ns"]) == (0, 0, 0x8000000, 1795263919840692000)
    assert (m[1]["as_id"], m[1]["slot"], m[1]["flags"]) == (1, 1, 2)
    assert (m[2]["as_id"], m[2]["slot"], m[2]["ret"]) == (1, 3, -22)       # second generation
    assert (m[3]["ioctl"], m[3]["gmem_fd"], m[3]["gmem_offset"]) == ("region2", 12, 0x1000)
    assert all(r["pid"] == 8010 and r["source"] == "qemu-log" for r in m)  # smallest thread id
    assert [r["tid"] for r in m] == [8010, 8010, 8010, 8012]
    q = run.read_family("qemu").to_pylist()
    assert [r["event"] for r in q] == ["ram_block_discard_range", "ram_block_discard_range", "balloon_target",
                                       "bitmap_sync_start", "bitmap_sync_end"]
    assert (q[0]["detail"], q[0]["hva"], q[0]["size"]) == ("pc.ram", 0x7F8AEFE00000, 0x200000)
    assert q[0]["ts_ns"] == 1795262400_123456000 - 1_000_000_000  # 2026-11-21T12:00:00.123456Z
    assert q[1]["ret"] == -22 and q[2]["size"] == 0x10000000 and q[2]["count"] == 65536
    assert q[4]["count"] == 1234
    session = run.manifest["sessions"][0]
    assert session["clock"]["alignment"] == "given" and session["pid_from"] == "smallest thread id"


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.log"
    lines = LOG.read_text().splitlines()
    lines.insert(2, "8010@1795263920.851000:kvm_set_user_memory Slot#zz flags=0x0")
    lines.insert(4, "qemu-system-x86_64: warning: not a trace line")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError, match=rf"^{bad}:3: kvm_set_user_memory: arguments 'Slot#zz"):
        parse([bad])
    assert not (tmp_path / "run").exists()
    with pytest.raises(TraceFormatError):
        import_qemu_log([bad], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    res = import_qemu_log([bad], tmp_path / "run", skip_bad=True, clock_offset_ns=0)
    assert res["bad"] == 2 and res["rows"]["memslots"] == 4
    run = open_run(tmp_path / "run")
    assert run.manifest["lost"] == {"qemu-log": 2}
    assert run.manifest["sessions"][0]["bad_lines"][1].startswith(f"{bad}:5: not a QEMU trace line")


def test_gzip_and_pid_override(tmp_path):
    gz = tmp_path / "log.gz"
    with open(LOG, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    import_qemu_log([gz], tmp_path / "run", pid=4242, clock_offset_ns=0)
    t = open_run(tmp_path / "run").read_family("memslots")
    assert t.num_rows == 4 and pc.all(pc.equal(t["pid"], 4242)).as_py()
