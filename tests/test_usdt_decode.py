"""USDT records to rows, for every catalogue event (the real probe test covers four of them):
each probe's arguments land in the columns the QEMU-log importer fills for the same event."""

import numpy as np
import pytest

from collectors.qemu import USDT_BY_NAME, USDT_DTYPE, USDT_EVENTS, decode_usdt
from collectors.qemu_binaries import QemuBinary, read_version
from pipeline.schema import FAMILY_BY_NAME

NEG22 = (1 << 64) - 22  # -22 as a register holds it


def _records(*hits):
    rec = np.zeros(len(hits), USDT_DTYPE)
    for i, (probe, args, text) in enumerate(hits):
        rec[i]["probe"] = USDT_BY_NAME[probe]
        rec[i]["args"][:len(args)] = args
        rec[i]["str"] = text.encode()
        rec[i]["pid"], rec[i]["tid"], rec[i]["ts_ns"] = 10, 11, 1000 + i
        rec[i]["comm"] = b"qemu-system-x86"
    return rec


@pytest.mark.parametrize("probe, args, text, family, want", [
    ("ram_block_discard_range", [0x1234, 0x7f0000000000, 0x200000, 1, 0, NEG22], "pc.ram", "qemu",
     {"event": "ram_block_discard_range", "detail": "pc.ram", "hva": 0x7f0000000000, "size": 0x200000, "ret": -22}),
    ("ram_discard_range", [0x1234, 0x10000, 0x2000], "pc.ram", "qemu",
     {"event": "ram_discard_range", "detail": "pc.ram", "rb_offset": 0x10000, "size": 0x2000}),
    ("virtio_balloon_handle_output", [0x1234, 0x5000], "pc.ram", "qemu",
     {"event": "balloon_page", "detail": "pc.ram", "gpa": 0x5000}),
    ("virtio_balloon_to_target", [1 << 28, 65536], "", "qemu",
     {"event": "balloon_target", "size": 1 << 28, "count": 65536}),
    ("virtio_mem_unplug_request", [0x140000000, 3], "", "qemu",
     {"event": "virtio_mem_unplug", "gpa": 0x140000000, "count": 3}),
    ("migration_bitmap_sync_end", [4321], "", "qemu", {"event": "bitmap_sync_end", "count": 4321}),
    ("pci_cfg_write", [0x1234, 0, 3, 0, 4, 0x103], "virtio-balloon", "qemu",
     {"event": "pci_cfg_write", "detail": "virtio-balloon", "cfg_offset": 4, "cfg_value": 0x103}),
    ("vfio_listener_region_add_ram", [0x100000, 0x1fffff, 0x7f0000100000], "", "dma",
     {"api": "qemu_vfio", "op": "map", "iova": 0x100000, "size": 0x100000, "vaddr": 0x7f0000100000}),
    ("vfio_listener_region_del", [0x100000, 0x1fffff], "", "dma",
     {"api": "qemu_vfio", "op": "unmap", "iova": 0x100000, "size": 0x100000, "vaddr": None}),
    ("iommufd_backend_map_dma", [7, 2, 0x4000, 0x1000, 0x7f0000004000, 0, 0], "", "dma",
     {"api": "qemu_iommufd", "op": "map", "fd": 7, "ioas_id": 2, "iova": 0x4000, "size": 0x1000,
      "vaddr": 0x7f0000004000, "ret": 0}),
    ("iommufd_backend_unmap_dma", [7, 2, 0x4000, 0x1000, NEG22], "", "dma",
     {"api": "qemu_iommufd", "op": "unmap", "fd": 7, "ioas_id": 2, "iova": 0x4000, "size": 0x1000, "ret": -22}),
    ("vhost_vdpa_dma_map", [0xabc, 9, 2, 0x8000, 0x2000, 0x7f0000008000, 3, 2], "", "dma",
     {"api": "vhost_vdpa", "op": "map", "fd": 9, "iova": 0x8000, "size": 0x2000, "vaddr": 0x7f0000008000}),
])
def test_each_probe_fills_its_family(probe, args, text, family, want):
    tables = decode_usdt(_records((probe, args, text)), "bpf:qemu")
    assert set(tables) == {family}
    assert tables[family].schema.names == FAMILY_BY_NAME[family].schema.names
    (row,) = tables[family].to_pylist()
    assert {k: row[k] for k in want} == want
    assert (row["pid"], row["tid"], row["source"]) == (10, 11, "bpf:qemu")


def test_a_batch_of_mixed_probes_keeps_every_row():
    rec = _records(("vfio_listener_region_del", [0, 0xfff], ""), ("migration_bitmap_sync_start", [], ""),
                   ("vfio_listener_region_add_ram", [0, 0xfff, 0x7f00], ""))
    tables = decode_usdt(rec, "bpf:qemu")
    assert sorted(tables["dma"]["ts_ns"].to_pylist()) == [1000, 1002]
    assert tables["qemu"]["event"].to_pylist() == ["bitmap_sync_start"]


def test_every_catalogue_event_has_a_known_family():
    assert {e.family for e in USDT_EVENTS} <= {"qemu", "dma"}
    assert len({e.probe for e in USDT_EVENTS}) == len(USDT_EVENTS)


def test_version_from_the_file_and_version_ranges(tmp_path):
    exe = tmp_path / "qemu"
    exe.write_bytes(b"\x7fELF..." + b"\x00QEMU emulator version 5.0.1 (custom)\n\x00" + b"rest")
    text, (major, minor) = read_version(str(exe))
    assert text == "5.0.1 (custom)" and (major, minor) == (5, 0)
    b = QemuBinary(str(exe), 1, 2, text, (major, minor))
    assert b.in_version(None, (5, 1)) is True         # qemu_balloon_inhibit: still there in 5.0
    assert b.in_version((5, 1), None) is False        # ram_block_discard_disable: not yet
    assert QemuBinary("x", 1, 2, None, None).in_version((5, 1), None) is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_version(str(tmp_path / "empty")) is None


def test_uprobe_batches_of_one_kind_decode():
    """A batch holding only QEMU's answers (no detail anywhere) and one of commits and discards."""
    from collectors.qemu import DTYPE, FUNCTIONS, decode

    index = {f.symbol: i for i, f in enumerate(FUNCTIONS)}
    only = np.zeros(3, DTYPE)
    only["fn"] = index["ram_block_discard_is_disabled"]
    only["ret"] = [1, 0, 0x101]
    assert decode(only, "bpf:qemu")["qemu"]["ret"].to_pylist() == [1, 0, 1]
    mixed = np.zeros(2, DTYPE)
    mixed["fn"] = [index["memory_region_transaction_commit"], index["ram_block_discard_range"]]
    mixed["arg0"], mixed["arg2"] = [0, 0xabc0], [0, 4096]
    rows = decode(mixed, "bpf:qemu")["qemu"].to_pylist()
    assert [(r["event"], r["detail"], r["size"]) for r in rows] == [
        ("memory_commit", "memory_region_transaction_commit", None),
        ("ram_block_discard_range", "RAMBlock@0xabc0", 4096)]
