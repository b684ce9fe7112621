"""detect refuses, before it starts, a run that cannot fit in DuckDB's memory limit plus the
free disk it spills to; the sizes come from the run's own Parquet footers."""

import pyarrow.parquet as pq
import pytest

from pipeline.runstore import RunWriter, open_run
from queries.runner import DetectorError, _size_bytes, capacity_shortfall, decoded_bytes, run_detectors


def _run(path, n=50_000):
    with RunWriter(path, source="synthetic", kind="importer") as w:
        w.write("discards", {"ts_ns": list(range(n)), "pid": [1] * n, "tid": [1] * n, "comm": ["qemu"] * n,
                             "source": ["synthetic"] * n, "syscall": ["madvise"] * n,
                             "hva_start": [4096 * i for i in range(n)], "size": [4096] * n, "advice": [4] * n})
    return open_run(path)


def test_decoded_bytes_sum_the_footers(tmp_path):
    run = _run(tmp_path / "run")
    files = run.good_chunks("discards")
    expected = sum(pq.ParquetFile(f).metadata.row_group(i).total_byte_size
                   for f in files for i in range(pq.ParquetFile(f).metadata.num_row_groups))
    assert decoded_bytes(run) == expected > 50_000 * 8   # ts_ns alone is 8 bytes a row


def test_shortfall_names_the_sizes_and_the_remedy():
    assert capacity_shortfall(10 << 30, 6 << 30, 5 << 30) is None
    msg = capacity_shortfall(10 << 30, 6 << 30, 3 << 30)
    assert "10.0 GiB" in msg and "6.0 GiB" in msg and "3.0 GiB" in msg and "VMEMTRACE_DETECT_TMP" in msg


@pytest.mark.parametrize("text, size", [("6144MB", 6144 * 10**6), ("4GB", 4 * 10**9),
                                        ("512MiB", 512 << 20), ("2GiB", 2 << 30)])
def test_size_notation_as_duckdb_reads_it(text, size):
    assert _size_bytes(text) == size


def test_detect_refuses_a_run_larger_than_memory_and_spill(tmp_path, monkeypatch):
    run = _run(tmp_path / "run")
    monkeypatch.setenv("VMEMTRACE_DETECT_TMP", str(tmp_path / "spill"))
    # This machine has room for it: detection runs.
    assert run_detectors(run).statuses
    # A 1 KB memory limit and a spill disk with no room left: refused before any detector runs.
    monkeypatch.setenv("VMEMTRACE_DETECT_MEMORY", "1KB")
    monkeypatch.setattr("queries.runner.shutil.disk_usage", lambda p: type("Usage", (), {"free": 0})())
    with pytest.raises(DetectorError, match="not started: this run's columns take"):
        run_detectors(run)
