"""Collector decoders on hand-built numpy records: exact Arrow rows, and tables the run store accepts.

No root and no BPF: the records are what the kernel side would write (collectors/*.h, whose layout
tests/test_record_layouts.py checks against these dtypes).
"""

import ctypes
import mmap
import os

import numpy as np
import pyarrow as pa
import pytest

from collectors import accesses, discards, file_maps, io_uring, kvm, mmu_notifier, vcpu_run, vfio
from collectors.base import comm_strings, labels
from collectors.program import COLLECTORS
from pipeline import constants as k
from pipeline.runstore import conform
from pipeline.schema import FAMILY_BY_NAME, field_enum

SRC = "bpf:test"
ENV = ("ts_ns", "pid", "tid", "comm", "source")


def records(dtype: np.dtype, rows: list[dict]) -> np.ndarray:
    """Records as the ring holds them: zeroed, then the given fields; ts_ns 1000 + i, pid 7, tid 8."""
    rec = np.zeros(len(rows), dtype)
    for i, row in enumerate(rows):
        rec[i]["ts_ns"], rec[i]["pid"], rec[i]["tid"], rec[i]["comm"] = 1000 + i, 7, 8, b"qemu-kvm"
        for name, value in row.items():
            rec[i][name] = value
    return rec


def decoded(decode, dtype, rows: list[dict]) -> dict[str, list[dict]]:
    """{family: rows without the envelope}; every table must pass the run store's conform()."""
    out = {}
    for family, table in decode(records(dtype, rows), SRC).items():
        fam = FAMILY_BY_NAME[family]
        conform(fam, table)
        for f in fam.schema:
            if field_enum(f) and f.name in table.column_names:
                assert set(table[f.name].drop_null().to_pylist()) <= set(field_enum(f)), (family, f.name)
        got = table.to_pylist()
        assert [(r["ts_ns"], r["pid"], r["tid"], r["comm"], r["source"]) for r in got] == \
               [(r["ts_ns"], 7, 8, "qemu-kvm", SRC) for r in got]
        out[family] = [{c: v for c, v in r.items() if c not in ENV} for r in got]
    return out


def test_discards_madvise_fallocate_process_madvise():
    got = decoded(discards.decode, discards.DTYPE, [
        {"syscall": 0, "start": 0x7f0000000000, "len": 8192, "advice": k.MADV_DONTNEED, "fd": -1, "ret": 0,
         "end_ns": 2000},
        {"syscall": 2, "start": 4096, "len": 4096, "advice": 3, "fd": 9, "ret": -95},
        {"syscall": 1, "start": 0x7f0000002000, "len": 4096, "advice": k.MADV_FREE, "fd": 5, "ret": 4096,
         "iov_total": 1, "end_ns": 2100},
    ])
    assert got == {"discards": [
        {"syscall": "madvise", "hva_start": 0x7f0000000000, "size": 8192, "advice": 4, "fd": None,
         "offset": None, "mode": None, "ret": 0, "end_ns": 2000},
        {"syscall": "fallocate", "hva_start": None, "size": 4096, "advice": None, "fd": 9, "offset": 4096,
         "mode": 3, "ret": -95, "end_ns": None},  # end_ns 0: the exit was not seen
        {"syscall": "process_madvise", "hva_start": 0x7f0000002000, "size": 4096, "advice": 8, "fd": 5,
         "offset": None, "mode": None, "ret": 4096, "end_ns": 2100},
    ]}


def test_kvm_memslots_and_dirty_log():
    got = decoded(kvm.decode, kvm.DTYPE, [
        {"cmd": k.KVM_SET_USER_MEMORY_REGION, "fd": 11, "slot": (1 << 16) | 3, "flags": 1, "gpa": 0x100000,
         "size": 0x200000, "hva": 0x7f0000000000, "gmem_fd": -1, "ret": 0, "end_ns": 1500},
        {"cmd": k.KVM_SET_USER_MEMORY_REGION2, "fd": 11, "slot": 4, "flags": 4, "gpa": 0, "size": 4096,
         "hva": 0x7f0000100000, "gmem_fd": 20, "gmem_offset": 8192, "ret": 0, "end_ns": 1600},
        {"cmd": k.KVM_CLEAR_DIRTY_LOG, "fd": 11, "slot": 3, "flags": 64, "gpa": 128, "ret": 0, "end_ns": 1700},
        {"cmd": k.KVM_RESET_DIRTY_RINGS, "fd": 11, "ret": 12, "end_ns": 1800},
    ])
    assert got["memslots"] == [
        {"ioctl": "region", "vm_fd": 11, "as_id": 1, "slot": 3, "flags": 1, "gpa": 0x100000, "size": 0x200000,
         "hva": 0x7f0000000000, "gmem_fd": None, "gmem_offset": None, "ret": 0, "end_ns": 1500},
        {"ioctl": "region2", "vm_fd": 11, "as_id": 0, "slot": 4, "flags": 4, "gpa": 0, "size": 4096,
         "hva": 0x7f0000100000, "gmem_fd": 20, "gmem_offset": 8192, "ret": 0, "end_ns": 1600},
    ]
    assert got["dirty_log"] == [
        {"op": "kvm_clear_dirty_log", "fd": 11, "as_id": 0, "slot": 3, "first_page": 128, "num_pages": 64,
         "ret": 0, "end_ns": 1700},
        {"op": "kvm_reset_dirty_rings", "fd": 11, "as_id": None, "slot": None, "first_page": None,
         "num_pages": None, "ret": 12, "end_ns": 1800},
    ]


def test_vfio_and_iommufd_dma_groups_dirty():
    got = decoded(vfio.decode, vfio.DTYPE, [
        {"cmd": k.VFIO_IOMMU_MAP_DMA, "fd": 5, "flags": 3, "vaddr": 0x7f0000000000, "iova": 0x1000,
         "size": 0x4000, "ret": 0, "container_fd": -1},
        {"cmd": k.IOMMU_IOAS_MAP, "fd": 6, "flags": 6, "ioas_id": 2, "vaddr": 0x7f0000010000, "iova": 0,
         "size": 0x2000, "out": 0x9000, "ret": 0, "container_fd": -1},   # kernel-chosen IOVA written back
        {"cmd": k.VFIO_IOMMU_UNMAP_DMA, "fd": 5, "iova": 0x1000, "size": 0x4000, "out": 0x4000, "ret": 0,
         "container_fd": -1},
        {"cmd": k.VFIO_GROUP_SET_CONTAINER, "fd": 4, "container_fd": 5, "ret": 0},
        {"cmd": k.VFIO_IOMMU_DIRTY_PAGES, "fd": 5, "flags": k.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
         "iova": 0x1000, "size": 0x1000, "ret": 0, "container_fd": -1},
    ])
    strip = lambda r: {c: r[c] for c in ("api", "op", "fd", "ioas_id", "vaddr", "iova", "size", "unmapped")}
    assert [strip(r) for r in got["dma"]] == [
        {"api": "vfio_type1", "op": "map", "fd": 5, "ioas_id": None, "vaddr": 0x7f0000000000, "iova": 0x1000,
         "size": 0x4000, "unmapped": None},
        {"api": "iommufd", "op": "map", "fd": 6, "ioas_id": 2, "vaddr": 0x7f0000010000, "iova": 0x9000,
         "size": 0x2000, "unmapped": None},
        {"api": "vfio_type1", "op": "unmap", "fd": 5, "ioas_id": None, "vaddr": None, "iova": 0x1000,
         "size": 0x4000, "unmapped": 0x4000},
    ]
    assert [(r["op"], r["group_fd"], r["container_fd"]) for r in got["vfio_groups"]] == [("attach", 4, 5)]
    assert [(r["op"], r["iova"], r["size"]) for r in got["dirty_log"]] == [("vfio_dirty_get_bitmap", 0x1000, 0x1000)]


def test_iommu_tracepoints():
    got = decoded(vfio.decode_iommu, vfio.IOMMU_DTYPE, [
        {"op": 0, "iova": 0x1000, "paddr": 0xabc000, "size": 4096},
        {"op": 1, "iova": 0x1000, "size": 4096, "unmapped": 4096}])
    assert [(r["api"], r["op"], r["iova"], r["paddr"], r["unmapped"]) for r in got["dma"]] == [
        ("iommu", "map", 0x1000, 0xabc000, None), ("iommu", "unmap", 0x1000, None, 4096)]


def test_mmu_notifier_events():
    got = decoded(mmu_notifier.decode, mmu_notifier.DTYPE, [
        {"event": 0, "start": 0x7f0000000000, "end": 0x7f0000002000}, {"event": 2, "start": 0x7f0000001000}])
    assert got == {"mmu_notifier": [
        {"event": "unmap_hva_range", "hva_start": 0x7f0000000000, "hva_end": 0x7f0000002000},
        {"event": "test_age_hva", "hva_start": 0x7f0000001000, "hva_end": None}]}


NONE64 = 0xFFFFFFFFFFFFFFFF


def access(via: int, **fields) -> dict:
    """An access record as access_init() leaves it: unknown fields at their sentinels."""
    return {"via": via, "gpa": NONE64, "pfn": NONE64, "page_offset": NONE64, "vcpu": -1, "slot": 0xFFFFFFFF,
            "write": 2, "as_id": 0xFF, **fields}


def test_accesses_zaps_and_non_present_sptes_carry_no_pfn():
    got = decoded(accesses.decode, accesses.DTYPE, [
        access(0, gpa=0x5000, error_code=k.PFERR_WRITE_MASK, write=1, vcpu=1),
        access(3, gpa=0x6000, pfn=0x1234, level=1, as_id=0),   # changed to a present SPTE
        access(3, gpa=0x6000, level=1, as_id=0),               # zapped: BPF left pfn at the sentinel
        access(7, gpa=0x200000, level=2),                      # kvm_mmu_prepare_zap_page
    ])["guest_accesses"]
    keep = ("via", "gpa", "pfn", "write", "vcpu", "level", "error_code")
    assert [{c: r[c] for c in keep} for r in got] == [
        {"via": "page_fault", "gpa": 0x5000, "pfn": None, "write": True, "vcpu": 1, "level": None, "error_code": 2},
        {"via": "spte_changed", "gpa": 0x6000, "pfn": 0x1234, "write": None, "vcpu": None, "level": 1,
         "error_code": None},
        {"via": "spte_changed", "gpa": 0x6000, "pfn": None, "write": None, "vcpu": None, "level": 1,
         "error_code": None},
        {"via": "spte_zap", "gpa": 0x200000, "pfn": None, "write": None, "vcpu": None, "level": 2,
         "error_code": None},
    ]


def test_io_uring_register_update_unregister():
    base = {"fd": 3, "opcode": k.IORING_REGISTER_BUFFERS, "ret": 0, "end_ns": 5000}
    got = decoded(io_uring.decode, io_uring.DTYPE, [
        {**base, "index": 0, "vaddr": 0x7f0000000000, "len": 65536, "iov_total": 2},
        {**base, "index": 1, "vaddr": 0x7f0000100000, "len": 4096, "iov_total": 2},
        {**base, "opcode": k.IORING_REGISTER_BUFFERS_UPDATE, "index": 1, "unmap": 1, "vaddr": 0x7f0000200000,
         "len": 8192},
        {**base, "opcode": k.IORING_REGISTER_BUFFERS_UPDATE, "index": 1, "vaddr": 0x7f0000200000, "len": 8192},
        {**base, "opcode": k.IORING_UNREGISTER_BUFFERS, "index": io_uring.NO_INDEX, "unmap": 1},
    ])["dma"]
    keep = ("api", "op", "fd", "vaddr", "iova", "size", "buf_index", "ret", "end_ns")
    row = lambda op, vaddr, size, idx: {"api": "io_uring", "op": op, "fd": 3, "vaddr": vaddr, "iova": None,
                                        "size": size, "buf_index": idx, "ret": 0, "end_ns": 5000}
    assert [{c: r.get(c) for c in keep} for r in got] == [
        row("map", 0x7f0000000000, 65536, 0), row("map", 0x7f0000100000, 4096, 1),
        row("unmap", None, None, 1), row("map", 0x7f0000200000, 8192, 1), row("unmap", None, None, None)]


def test_vcpu_runs():
    got = decoded(vcpu_run.decode, vcpu_run.DTYPE, [{"vcpu_fd": 14, "ret": 0, "end_ns": 9000},
                                                     {"vcpu_fd": 15, "ret": -4, "end_ns": 9100}])
    assert [{c: r.get(c) for c in ("op", "vcpu_fd", "vcpu", "ret", "end_ns")} for r in got["vcpu_runs"]] == [
        {"op": "run", "vcpu_fd": 14, "vcpu": None, "ret": 0, "end_ns": 9000},
        {"op": "run", "vcpu_fd": 15, "vcpu": None, "ret": -4, "end_ns": 9100}]


def test_file_maps_mmap_failed_mmap_munmap():
    got = decoded(file_maps.decode, file_maps.DTYPE, [
        {"event": 0, "addr": 0, "len": 1 << 20, "offset": 4096, "flags": k.MAP_SHARED, "prot": 3, "fd": 12,
         "ret": 0x7f1234560000},
        {"event": 0, "addr": 0x7f0000000000, "len": 4096, "flags": k.MAP_PRIVATE, "fd": 99, "ret": -9},
        {"event": 1, "addr": 0x7f1234560000, "len": 1 << 20, "fd": -1, "ret": 0},
    ])["file_mappings"]
    keep = ("event", "hva_start", "size", "fd", "file_offset", "flags", "path", "inode", "ret")
    assert [{c: r[c] for c in keep} for r in got] == [
        {"event": "mmap", "hva_start": 0x7f1234560000, "size": 1 << 20, "fd": 12, "file_offset": 4096,
         "flags": 1, "path": None, "inode": None, "ret": 0x7f1234560000},
        {"event": "mmap", "hva_start": 0x7f0000000000, "size": 4096, "fd": 99, "file_offset": 0, "flags": 2,
         "path": None, "inode": None, "ret": -9},      # failed: the address asked for, and the errno
        {"event": "munmap", "hva_start": 0x7f1234560000, "size": 1 << 20, "fd": None, "file_offset": None,
         "flags": None, "path": None, "inode": None, "ret": 0},
    ]


def test_proc_maps_snapshot_of_this_process(tmp_path):
    """The real /proc/self/maps: a shared file mapping at a known offset, with its fd, path and inode."""
    path = tmp_path / "backing"
    path.write_bytes(b"\0" * (4 * mmap.PAGESIZE))
    fd = os.open(path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 2 * mmap.PAGESIZE, mmap.MAP_SHARED, offset=mmap.PAGESIZE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        table = file_maps.snapshot(os.getpid())["file_mappings"]
        conform(FAMILY_BY_NAME["file_mappings"], table)
        mine = [r for r in table.to_pylist() if r["hva_start"] == addr]
        assert [{c: r[c] for c in ("event", "size", "fd", "file_offset", "flags", "path", "inode", "source")}
                for r in mine] == [
            {"event": "proc_maps", "size": 2 * mmap.PAGESIZE, "fd": fd, "file_offset": mmap.PAGESIZE,
             "flags": k.MAP_SHARED, "path": str(path), "inode": os.stat(path).st_ino, "source": "proc:maps"}]
        m.close()
    finally:
        os.close(fd)


def test_snapshot_of_a_process_gone_is_empty():
    assert file_maps.snapshot(2**22 + 1) == {}  # above pid_max's default: no such process


@pytest.mark.parametrize("ring", [r for c in COLLECTORS for r in c.rings], ids=lambda r: r.name)
def test_every_ring_decodes_an_empty_batch_and_sizes_are_powers_of_two(ring):
    for family, table in ring.decode(np.zeros(0, ring.dtype), SRC).items():
        assert table.num_rows == 0
        conform(FAMILY_BY_NAME[family], table)
    assert ring.pages > 0 and ring.pages & (ring.pages - 1) == 0


def test_comm_names_decode_once_per_distinct_name():
    rec = records(vcpu_run.DTYPE, [{}, {}, {}])
    rec["comm"] = [b"CPU 0/KVM", b"qemu-system-x86", b"CPU 0/KVM"]
    table = vcpu_run.decode(rec, SRC)["vcpu_runs"]
    assert table["comm"].to_pylist() == ["CPU 0/KVM", "qemu-system-x86", "CPU 0/KVM"]
    comm = table["comm"].combine_chunks()
    assert pa.types.is_string(comm.type.value_type) and sorted(comm.dictionary.to_pylist()) == [
        "CPU 0/KVM", "qemu-system-x86"]


def test_names_equal_after_decoding_share_one_dictionary_value():
    """Parquet stores a dictionary as given: each value must be there once, or rows would read back
    as the wrong name. Garbage after a thread name's NUL, and an event name listed twice, merge."""
    rec = records(vcpu_run.DTYPE, [{}, {}, {}])
    rec["comm"] = [b"CPU 0/KVM", b"CPU 0/KVM\0old", b"qemu"]
    comm = vcpu_run.decode(rec, SRC)["vcpu_runs"]["comm"].combine_chunks()
    assert comm.to_pylist() == ["CPU 0/KVM", "CPU 0/KVM", "qemu"]
    assert sorted(comm.dictionary.to_pylist()) == ["CPU 0/KVM", "qemu"]
    got = labels(("commit", "hint", "commit"), np.array([2, 1, 0, 2]))
    assert got.to_pylist() == ["commit", "hint", "commit", "commit"] and len(got.dictionary) == 2
    with pytest.raises(IndexError):
        labels(("a", "b"), np.array([0, 2]))  # a code outside the names: a bad record, refused


@pytest.mark.parametrize("run_length", [1, 3, 1000])
def test_thread_names_in_runs_and_alone(run_length):
    """Names are hashed once per run of one name (collectors/base.py comm_strings): rows come out the
    same as decoding every record by itself, whether names alternate or come in long runs."""
    rng = np.random.default_rng(run_length)
    pool = [b"CPU 0/KVM", b"CPU 1/KVM", b"qemu-system-x86", b"", b"\xff\xfebad utf8", b"x" * 16]
    comm = np.repeat(np.array(pool, "S16")[rng.integers(0, len(pool), 5000 // run_length + 1)], run_length)
    want = [bytes(c).split(b"\0", 1)[0].decode("utf-8", "replace") for c in comm]
    assert comm_strings(comm).to_pylist() == want
    assert comm_strings(comm[:0]).to_pylist() == []


@pytest.mark.parametrize("ring", [r for c in COLLECTORS for r in c.rings], ids=lambda r: r.name)
def test_decoded_tables_do_not_share_memory_with_the_records(ring):
    """The drain decodes straight from the ring's memory and hands it back to the producer right
    after (collectors/session.py): no Arrow column may still point into it."""
    rec = records(ring.dtype, [{}, {}, {}])
    before = {family: table.to_pylist() for family, table in ring.decode(rec, SRC).items()}
    tables = ring.decode(rec, SRC)
    rec.view(np.uint8)[:] = 0xA5  # the producer writes new records over the old
    assert {family: table.to_pylist() for family, table in tables.items()} == before
