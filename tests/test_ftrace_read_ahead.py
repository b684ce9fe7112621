"""The ftrace importer reads, splits and cuts blocks on a second thread: errors from either side
stop the import with the same message as before, and leave no thread behind."""

import gzip
import threading

import pytest

from pipeline.importers import TraceFormatError, ftrace_lines
from pipeline.importers.ftrace import import_ftrace

GOOD = "  qemu-system-x86-1000    [000] ..... {t}.000001: kvm_mmio: mmio write len 4 gpa 0xfee000b0 val 0x0"
BAD = "  qemu-system-x86-1000    [000] ..... {t}.000001: kvm_mmio: mmio write len four gpa 0xfee000b0 val 0x0"


def _threads_settle(before: int) -> None:
    for t in threading.enumerate():
        if t.name != "MainThread" and t.daemon:
            t.join(timeout=5)
    assert threading.active_count() <= before


def test_bad_line_in_an_early_block_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(ftrace_lines, "BLOCK_BYTES", 4096)
    lines = [GOOD.format(t=1000 + i) for i in range(2000)]
    lines[50] = BAD.format(t=1050)
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(lines) + "\n")
    before = threading.active_count()
    with pytest.raises(TraceFormatError) as err:
        import_ftrace([path], tmp_path / "run")
    assert err.value.line == 51 and str(err.value).startswith(f"{path}:51: ")
    assert not (tmp_path / "run").exists()
    _threads_settle(before)


def test_damaged_gzip_after_good_blocks_stops_the_import(tmp_path, monkeypatch):
    monkeypatch.setattr(ftrace_lines, "BLOCK_BYTES", 4096)
    text = "\n".join(GOOD.format(t=1000 + i) for i in range(20000)) + "\n"
    path = tmp_path / "trace.txt.gz"
    path.write_bytes(gzip.compress(text.encode())[:-2000])
    before = threading.active_count()
    with pytest.raises(TraceFormatError, match="gzip stream"):
        import_ftrace([path], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    _threads_settle(before)


def test_many_blocks_import_every_line(tmp_path, monkeypatch):
    monkeypatch.setattr(ftrace_lines, "BLOCK_BYTES", 4096)
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(GOOD.format(t=1000 + i) for i in range(3000)) + "\n")
    res = import_ftrace([path], tmp_path / "run")
    assert res["rows"] == {"guest_accesses": 3000}
