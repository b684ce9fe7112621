"""How the run store encodes chunks (pipeline/runstore.py write_chunk), and that readers see no change.

Collectors hand the store dictionary-encoded strings; chunks are LZ4_RAW with integer columns
BYTE_STREAM_SPLIT. Whatever the encoding, a chunk reads back with exactly the family's schema
(types and metadata), through pyarrow and DuckDB, beside chunks written the old way (zstd).
"""

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collectors import discards
from pipeline.runstore import InvalidRowsError, RunWriter, open_run
from pipeline.schema import FAMILY_BY_NAME, check_rows
from tests.conftest import FIXTURES

FAM = FAMILY_BY_NAME["discards"]


def _records(n: int, comm: bytes = b"qemu-kvm", start: int = 0) -> np.ndarray:
    rec = np.zeros(n, discards.DTYPE)
    rec["ts_ns"] = np.arange(start, start + n) * 1000 + 10**12
    rec["end_ns"] = rec["ts_ns"] + 500
    rec["pid"] = rec["tid"] = 4242
    rec["comm"] = comm
    rec["start"] = 0x7F0000000000 + np.arange(n, dtype=np.uint64) * 4096
    rec["len"] = 4096
    rec["advice"] = 4
    rec["fd"] = -1
    rec["syscall"] = np.arange(n) % 3  # madvise, process_madvise, fallocate
    return rec


def _decoded(n: int, **kw) -> pa.Table:
    return discards.decode(_records(n, **kw), "bpf:discards")["discards"]


def test_dictionary_strings_read_back_as_the_family_schema(tmp_path):
    first, second = _decoded(1000), _decoded(500, comm=b"CPU 0/KVM", start=1000)
    with RunWriter(tmp_path / "run", source="bpf", kind="collector", chunk_rows=1 << 20) as w:
        w.write("discards", first)
        w.write("discards", second)  # another dictionary of names: one chunk, one dictionary
    run = open_run(tmp_path / "run")
    [chunk] = run.chunk_files("discards")
    got = run.read_family("discards")
    assert got.schema.equals(FAM.schema, check_metadata=True)
    assert pq.read_schema(chunk).equals(FAM.schema, check_metadata=True)
    assert got.drop_columns("event_id").to_pylist() == first.to_pylist() + second.to_pylist()
    assert got["event_id"].to_pylist() == list(range(1, 1501))

    meta = pq.ParquetFile(chunk).metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert {c.compression for c in cols.values()} == {"LZ4"}
    for name in ("event_id", "ts_ns", "hva_start", "size", "ret"):
        assert "BYTE_STREAM_SPLIT" in cols[name].encodings, name
        assert cols[name].statistics.has_min_max, name
    for name in ("comm", "source", "syscall"):
        assert "RLE_DICTIONARY" in cols[name].encodings and "PLAIN" not in cols[name].encodings[1:], name
    assert cols["event_id"].statistics.max == 1500  # what Run.max_event_id reads

    con = duckdb.connect()
    run.create_views(con)
    assert con.execute("SELECT comm, count(*), min(event_id), max(hva_start) FROM discards "
                       "GROUP BY comm ORDER BY comm").fetchall() == [
        ("CPU 0/KVM", 500, 1001, 0x7F0000000000 + 499 * 4096),
        ("qemu-kvm", 1000, 1, 0x7F0000000000 + 999 * 4096)]
    assert con.execute("SELECT syscall, count(*) FROM discards GROUP BY 1 ORDER BY 1").fetchall() == [
        ("fallocate", 333 + 166), ("madvise", 334 + 167), ("process_madvise", 333 + 167)]


def test_plain_and_dictionary_writes_share_a_chunk(tmp_path):
    plain = _decoded(10).cast(pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f
                                         for f in _decoded(10).schema]))
    with RunWriter(tmp_path / "run", source="bpf", kind="collector", chunk_rows=1 << 20) as w:
        w.write("discards", _decoded(10))
        w.write("discards", plain)
    got = open_run(tmp_path / "run").read_family("discards")
    assert got.schema.equals(FAM.schema) and got.num_rows == 20
    assert got.drop_columns("event_id").to_pylist() == _decoded(10).to_pylist() * 2


def test_a_foreign_dictionary_with_repeated_values_is_stored_right(tmp_path):
    """Parquet takes a dictionary as given: one holding a value twice is decoded before writing."""
    table = _decoded(4)
    comm = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 1], pa.int32()), pa.array(["a", "b", "a"]))
    table = table.set_column(table.schema.get_field_index("comm"), "comm", comm)
    with RunWriter(tmp_path / "run", source="bpf", kind="collector") as w:
        w.write("discards", table)
    assert open_run(tmp_path / "run").read_family("discards")["comm"].to_pylist() == ["a", "b", "a", "b"]


def test_the_gate_names_bad_values_inside_dictionaries(tmp_path):
    table = _decoded(4)
    syscall = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1, 0], pa.int32()), pa.array(["madvise", "mmap"]))
    table = table.set_column(table.schema.get_field_index("syscall"), "syscall", syscall)
    [v] = check_rows(FAM, table)
    assert (v.row, v.column, v.value) == (2, "syscall", "mmap")
    # A null inside the dictionary of a required column is a null row.
    comm = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0, 0], pa.int32()), pa.array(["a", None]))
    table = _decoded(4).set_column(table.schema.get_field_index("comm"), "comm", comm)
    [v] = check_rows(FAM, table)
    assert (v.row, v.column) == (1, "comm") and "must not be null" in v.message
    with pytest.raises(InvalidRowsError), RunWriter(tmp_path / "run", source="bpf", kind="collector") as w:
        w.write("discards", table)
    # Dictionaries of other value types are not strings.
    table = _decoded(2)
    table = table.set_column(table.schema.get_field_index("syscall"), "syscall",
                             pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array([1])))
    assert [v.message for v in check_rows(FAM, table)] == [
        "has type dictionary<values=int64, indices=int32, ordered=0>, expected string"]


def test_old_zstd_chunks_and_new_chunks_read_together(tmp_path):
    """A run written before this encoding (the bundled real run: zstd, PLAIN integers) takes a new
    session; readers see both."""
    shutil.copytree(FIXTURES / "real" / "kvm-boot" / "run", tmp_path / "run")
    old = open_run(tmp_path / "run")
    old_rows = old.read_family("discards").num_rows
    old_codecs = {pq.ParquetFile(p).metadata.row_group(0).column(1).compression
                  for fam in ("discards", "memslots") for p in old.chunk_files(fam)}
    with RunWriter(tmp_path / "run", source="bpf", kind="collector") as w:
        w.write("discards", _decoded(100))
    run = open_run(tmp_path / "run")
    got = run.read_family("discards")
    assert got.schema.equals(FAM.schema) and got.num_rows == old_rows + 100
    con = duckdb.connect()
    run.create_views(con)
    assert con.execute("SELECT count(*) FROM discards").fetchall() == [(old_rows + 100,)]
    assert "ZSTD" in old_codecs  # the fixture really is of the old encoding
