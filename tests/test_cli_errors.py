"""Every failure through the real CLI: a truthful exit code and one line naming what and where.

Bad inputs are real files (binary text, truncated and corrupt gzip of a real QEMU log, damaged
Parquet chunks of a real run, a full and a read-only file system), not mocks.
"""

import gzip
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require, write_jsonl

REPO = Path(__file__).resolve().parent.parent
DEMO = FIXTURES / "demo" / "vfio-balloon.jsonl"
QEMU_LOG = FIXTURES / "real" / "balloon" / "qemu" / "qemu-trace.log.gz"


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    return lines[0]


@pytest.fixture
def demo_run(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", DEMO, "--run", run).exit_code == 0
    return run


def test_binary_input_is_bad_input_naming_the_file(tmp_path, cli):
    trace = tmp_path / "blob.jsonl"
    trace.write_bytes(b"\xff\xfe\x00binary" * 100)
    res = cli("import", "jsonl", trace, "--run", tmp_path / "run")
    assert res.exit_code == 2
    assert str(trace) in one_error_line(res) and "UTF-8" in res.stderr


def test_truncated_gzip_names_the_file(tmp_path, cli):
    cut = tmp_path / "qemu-trace.log.gz"
    cut.write_bytes(QEMU_LOG.read_bytes()[: QEMU_LOG.stat().st_size // 2])
    res = cli("import", "qemu-log", cut, "--run", tmp_path / "run")
    assert res.exit_code == 2
    line = one_error_line(res)
    assert str(cut) in line and "Compressed file ended before the end-of-stream marker" in line
    assert "Aborted" not in res.stderr


def test_corrupt_gzip_names_the_file(tmp_path, cli):
    bad = tmp_path / "trace.gz"
    data = bytearray(gzip.compress(b"x" * 100_000))
    data[20:40] = b"\xff" * 20
    bad.write_bytes(bytes(data))
    res = cli("import", "ftrace", bad, "--run", tmp_path / "run")
    assert res.exit_code == 2
    assert str(bad) in one_error_line(res)


@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "not parquet"])
@pytest.mark.parametrize("command", ["detect", "info"])
def test_damaged_chunk_is_named(demo_run, cli, damage, command):
    chunk = sorted((demo_run / "dma").glob("*.parquet"))[0]
    data = chunk.read_bytes()
    chunk.write_bytes({"zero bytes": b"", "truncated": data[: len(data) // 2],
                       "not parquet": b"PAR1 this is not a parquet file"}[damage])
    res = cli(command, demo_run)
    assert res.exit_code == 2
    line = one_error_line(res)
    assert str(chunk) in line and "damaged" in line


@pytest.mark.parametrize("manifest", ["{not json", "[1, 2]", ""])
def test_malformed_manifest(demo_run, cli, manifest):
    (demo_run / "manifest.json").write_text(manifest)
    for command in ("detect", "info", "report"):
        res = cli(command, demo_run)
        assert res.exit_code == 2, (command, res.output)
        assert "manifest.json" in one_error_line(res)


def test_a_file_given_as_run(tmp_path, cli):
    f = tmp_path / "not-a-run"
    f.write_text("hello")
    for argv in (("detect", f), ("info", f), ("import", "jsonl", DEMO, "--run", f)):
        res = cli(*argv)
        assert res.exit_code == 2, argv
        assert str(f) in one_error_line(res)


def test_missing_input_file(tmp_path, cli):
    res = cli("import", "jsonl", tmp_path / "nope.jsonl", "--run", tmp_path / "run")
    assert res.exit_code == 2
    assert "nope.jsonl" in one_error_line(res)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_bad_baseline(demo_run, tmp_path, cli):
    base = tmp_path / "base.json"
    base.write_text('[{"detector": "D1"}]')
    res = cli("detect", demo_run, "--baseline", base)
    assert res.exit_code == 2 and "entry 0" in one_error_line(res) and str(base) in res.stderr
    base.write_text("{")
    assert cli("detect", demo_run, "--baseline", base).exit_code == 2


def test_a_bug_is_exit_3_with_the_traceback_in_a_file(demo_run, cli, monkeypatch, tmp_path):
    import queries.runner

    def broken(*a, **k):
        return {}["no such key"]  # a real bug's exception, raised where detect calls the runner

    monkeypatch.setattr(queries.runner, "run_detectors", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    res = cli("detect", demo_run)
    assert res.exit_code == 3
    line = one_error_line(res)
    assert "internal error" in line and "bug" in line and "KeyError" in line
    crash = Path(line.rsplit("traceback written to ", 1)[1])
    assert crash.parent == tmp_path and "Traceback" in crash.read_text() and "broken" in crash.read_text()


@pytest.fixture
def small_mount(tmp_path):
    """A real file system of our own: a 64 KiB tmpfs (unmounted afterwards)."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _many_discards(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"kind": "discard", "ts_ns": i + 1, "pid": 7, "comm": f"q{i:06d}" + "x" * 8,
                               "syscall": "madvise", "hva_start": 4096 * (i * 7919 % 1000003), "size": 4096,
                               "advice": 4, "ret": 0} for i in range(n)])


def test_disk_full_is_a_clear_error(small_mount, tmp_path, cli):
    trace = _many_discards(tmp_path / "big.jsonl", 40_000)  # well over 64 KiB of chunks however encoded
    res = cli("import", "jsonl", trace, "--run", small_mount / "run")
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "no space left" in line and str(small_mount) in line


def test_read_only_file_system(small_mount, demo_run, tmp_path, cli):
    shutil.copytree(demo_run, small_mount / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    res = cli("import", "jsonl", _many_discards(tmp_path / "more.jsonl", 10), "--run", small_mount / "run")
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "read-only file system" in line.lower() and str(small_mount / "run") in line


def _vmemtrace(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "vmemtrace", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_ctrl_c_exits_130_quietly(tmp_path):
    """A real SIGINT while the importer waits on its input (a FIFO nobody writes yet)."""
    fifo = tmp_path / "trace.jsonl"
    os.mkfifo(fifo)
    proc = _vmemtrace("import", "jsonl", fifo, "--run", tmp_path / "run")
    writer = os.open(fifo, os.O_WRONLY)  # returns once the importer opened the FIFO to read
    try:
        os.write(writer, b'{"kind": "discard", "ts_ns": 1, "pid": 1, "syscall": "madvise", '
                         b'"hva_start": 0, "size": 4096, "advice": 4}\n')
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(writer)
    assert proc.returncode == 130
    assert stderr.decode().strip() == "vmemtrace: interrupted"


def test_closed_pipe_ends_quietly(tmp_path, cli):
    # 250 deletes and same-size re-creates of a memslot: 250 D4 findings (info), far more JSON than a
    # pipe buffer holds.
    slot = {"kind": "memslot", "pid": 100, "comm": "qemu-system-x86", "ioctl": "region", "vm_fd": 11, "as_id": 0,
            "slot": 0, "flags": 0, "gpa": "0x0", "hva": "0x7f0000000000", "ret": 0}
    events = [{**slot, "ts_ns": 1000, "size": "0x40000000"}]
    for i in range(250):
        events += [{**slot, "ts_ns": 2000 + 10 * i, "size": 0}, {**slot, "ts_ns": 2005 + 10 * i, "size": "0x40000000"}]
    run = tmp_path / "run"
    assert cli("import", "jsonl", write_jsonl(tmp_path / "t.jsonl", events), "--run", run).exit_code == 0
    res = subprocess.run(["bash", "-c", '"$0" -m vmemtrace detect "$1" --json --fail-on info 2>"$2" | head -1; '
                          'echo "status ${PIPESTATUS[0]}"', sys.executable, run, tmp_path / "stderr"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.stdout == "[\nstatus 0\n"
    assert (tmp_path / "stderr").read_text() == ""
    # the same command into a pipe that stays open writes it all: the output was big enough to matter
    full = subprocess.run([sys.executable, "-m", "vmemtrace", "detect", str(run), "--json", "--fail-on", "info"], cwd=REPO,
                          capture_output=True)
    assert len(full.stdout) > 1 << 17 and full.returncode == 1  # so exit 0 above came from the closed pipe


def test_usage_errors_are_2(cli):
    assert cli("detect", "--format", "xml", "x").exit_code == 2
    assert cli("detect", "--no-such-option").exit_code == 2
    assert cli("frobnicate").exit_code == 2


def test_read_only_run_is_detected_with_findings_elsewhere(small_mount, demo_run, tmp_path, cli):
    shutil.copytree(demo_run, small_mount / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    res = cli("detect", small_mount / "run")
    assert res.exit_code == 2 and "read-only file system" in one_error_line(res).lower()
    res = cli("detect", small_mount / "run", "--out", tmp_path / "findings")
    assert res.exit_code == 1 and f"findings written to {tmp_path / 'findings'}" in res.stdout
    assert (tmp_path / "findings" / "findings.parquet").is_file()
