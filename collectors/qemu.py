"""Collector of QEMU's own guest-memory decisions, from the QEMU binaries the traced processes run.

Two kinds of probe, per binary (collectors/qemu_tracker.py decides and attaches):
- uprobes on exported functions (FUNCTIONS): the discard inhibitor, RAM block discards, free page
  hints, bitmap-sync notifications, memory transaction commits, vCPU ioctl inhibition. Which exist
  depends on the build and version (QEMU < 5.1 has qemu_balloon_inhibit instead of the
  ram_block_discard_* counters; accel_ioctl_inhibit_* came with 8.0).
- USDT probes (USDT_EVENTS) in builds with the dtrace trace backend: the catalogue events of QEMU's
  trace-events files, under the same names the QEMU-log importer reads, into the same families.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, envelope_columns, labels, nullable, record_dtype
from pipeline.runstore import conform
from pipeline.schema import FAMILY_BY_NAME

# The distribution's QEMU: what `vmemtrace doctor` inspects by default. Collect probes whatever
# binary the traced processes run (collectors/qemu_tracker.py).
DEFAULT_BINARY = "/usr/bin/qemu-system-x86_64"


class Function(NamedTuple):
    symbol: str
    event: str
    args: str                             # how to read arguments and ret (see decode)
    since: tuple[int, int] | None = None  # first QEMU version that has it
    until: tuple[int, int] | None = None  # first QEMU version that no longer has it


# The index is the uprobe handler pair qemu_enter_N / qemu_return_N.
FUNCTIONS = (
    Function("ram_block_discard_disable", "discard_disable", "bool", (5, 1)),
    Function("ram_block_uncoordinated_discard_disable", "uncoordinated_discard_disable", "bool", (6, 0)),
    Function("ram_block_discard_require", "discard_require", "bool", (5, 1)),
    Function("ram_block_coordinated_discard_require", "coordinated_discard_require", "bool", (6, 0)),
    Function("qemu_balloon_inhibit", "balloon_inhibit", "bool_void", None, (5, 1)),
    Function("ram_block_discard_is_disabled", "discard_is_disabled", "query", (5, 1)),  # QEMU's answer
    Function("qemu_balloon_is_inhibited", "balloon_is_inhibited", "query", None, (5, 1)),
    Function("ram_block_discard_range", "ram_block_discard_range", "rb_range"),  # (RAMBlock *, start, len)
    Function("qemu_guest_free_page_hint", "free_page_hint", "hva_len", (3, 1)),  # (void *addr, size_t len)
    Function("precopy_notify", "precopy_notify", "reason", (3, 1)),             # (PrecopyNotifyReason, ..)
    Function("memory_global_dirty_log_start", "dirty_log_start", "flags"),      # (unsigned int flags)
    Function("memory_global_dirty_log_stop", "dirty_log_stop", "flags"),
    Function("memory_global_dirty_log_sync", "dirty_log_sync", "none"),
    # Transaction boundaries: memslot ioctls issued inside one outermost commit belong to one update.
    Function("memory_region_transaction_commit", "memory_commit", "commit"),
    Function("kvm_region_commit", "memory_commit", "commit", (8, 0)),   # static in most builds
    Function("accel_ioctl_inhibit_begin", "ioctl_inhibit_begin", "none", (8, 0)),
    Function("accel_ioctl_inhibit_end", "ioctl_inhibit_end", "none", (8, 0)),
)
PRECOPY_REASONS = ("setup", "before_bitmap_sync", "after_bitmap_sync", "complete", "cleanup")

DTYPE = record_dtype([("arg0", "<u8"), ("arg1", "<u8"), ("arg2", "<u8"), ("ret", "<i8"),
                      ("fn", "<u4"), ("depth", "<u4")])
USDT_DTYPE = record_dtype([("args", "<u8", (8,)), ("probe", "<u4"), ("pad", "<u4"), ("str", "S48")])


def _kind_mask(fn: np.ndarray, *kinds: str) -> np.ndarray:
    return np.isin(fn, [i for i, f in enumerate(FUNCTIONS) if f.args in kinds])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    fn = rec["fn"]
    a0, a1, a2 = rec["arg0"], rec["arg1"], rec["arg2"]
    is_bool = _kind_mask(fn, "bool", "bool_void")
    has_ret = _kind_mask(fn, "bool", "rb_range", "reason", "query")
    rb = _kind_mask(fn, "rb_range")
    hint = _kind_mask(fn, "hva_len")
    reason = _kind_mask(fn, "reason")
    flags = _kind_mask(fn, "flags")
    commit = _kind_mask(fn, "commit")
    # precopy_notify before/after the bitmap sync is what bounds a free-page-hint round.
    events = np.array([f.event for f in FUNCTIONS] + ["bitmap_sync_start", "bitmap_sync_end"])
    code = fn.astype(np.int64)
    code = np.where(reason & (a0 == 1), len(FUNCTIONS), code)
    code = np.where(reason & (a0 == 2), len(FUNCTIONS) + 1, code)
    reason_names = np.array(PRECOPY_REASONS + ("unknown",))
    detail = np.where(reason, reason_names[np.minimum(a0, len(PRECOPY_REASONS))], "")
    detail = np.where(rb, np.char.add("RAMBlock@0x", np.char.mod("%x", a0)), detail)
    # Which commit: the memory API's (all listeners) or KVM's listener (QEMU >= 8.0).
    symbols = np.array([f.symbol for f in FUNCTIONS])
    detail = np.where(commit, symbols[fn], detail)
    cols = envelope_columns(rec, source)
    cols.update(
        event=labels(tuple(events), code),
        state=nullable((a0 & 0xFF) != 0, ~is_bool),
        hva=nullable(a0, ~hint),
        size=nullable(np.where(rb, a2, a1), ~(rb | hint)),
        rb_offset=nullable(a1, ~rb),
        count=nullable(a0.astype(np.int64), ~flags),
        detail=nullable(detail, ~(rb | reason | commit)),
        # int-returning QEMU functions use the low 32 bits of rax, bool ones the low 8.
        ret=nullable(np.where(_kind_mask(fn, "query"), rec["ret"].astype(np.int64) & 0xFF,
                              rec["ret"].astype(np.int64).astype(np.int32).astype(np.int64)), ~has_ret),
    )
    return {"qemu": pa.table(cols)}


# -- USDT ------------------------------------------------------------------------------------------

Columns = dict[str, object]
Builder = Callable[[np.ndarray, np.ndarray], Columns]  # (args (n, 8) uint64, first string arg) -> columns


class UsdtEvent(NamedTuple):
    probe: str          # QEMU trace event name (provider qemu), as in its trace-events file and log
    family: str
    string_arg: int     # index of the C-string argument, -1 for none
    build: Builder
    replaces: str | None = None  # the exported function this probe records better (no double rows)


def _i32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int64).astype(np.int32).astype(np.int64)


def _discard(a, s):  # (const char *rbname, void *hva, size_t length, bool madvise, bool fallocate, int ret)
    return {"event": "ram_block_discard_range", "detail": s, "hva": a[:, 1], "size": a[:, 2], "ret": _i32(a[:, 5])}


def _vfio_range(op):  # (uint64 start, uint64 end[, void *vaddr]); the end is inclusive
    def build(a, s):
        cols = {"api": "qemu_vfio", "op": op, "iova": a[:, 0], "size": a[:, 1] - a[:, 0] + 1}
        if op == "map":
            cols["vaddr"] = a[:, 2]
        return cols
    return build


def _iommufd(op):  # map (int fd, u32 ioas, u64 iova, u64 size, void *vaddr, bool ro, int ret); unmap (fd, ioas, iova, size, ret)
    def build(a, s):
        cols = {"api": "qemu_iommufd", "op": op, "fd": _i32(a[:, 0]), "ioas_id": a[:, 1], "iova": a[:, 2],
                "size": a[:, 3]}
        if op == "map":
            cols.update(vaddr=a[:, 4], ret=_i32(a[:, 6]))
        else:
            cols["ret"] = _i32(a[:, 4])
        return cols
    return build


def _vdpa(op):  # map (void *v, int fd, u32 msg_type, u64 iova, u64 size, u64 uaddr, u8 perm, u8 type); unmap (.., iova, size, type)
    def build(a, s):
        cols = {"api": "vhost_vdpa", "op": op, "fd": _i32(a[:, 1]), "iova": a[:, 3], "size": a[:, 4]}
        if op == "map":
            cols["vaddr"] = a[:, 5]
        return cols
    return build


USDT_EVENTS = (
    UsdtEvent("ram_block_discard_range", "qemu", 0, _discard, replaces="ram_block_discard_range"),
    UsdtEvent("ram_block_discard_shared_range", "qemu", 0, _discard, replaces="ram_block_discard_range"),
    UsdtEvent("ram_discard_range", "qemu", 0,   # (const char *rbname, uint64 start, size_t len)
              lambda a, s: {"event": "ram_discard_range", "detail": s, "rb_offset": a[:, 1], "size": a[:, 2]}),
    UsdtEvent("virtio_balloon_handle_output", "qemu", 0,   # (const char *name, uint64 gpa)
              lambda a, s: {"event": "balloon_page", "detail": s, "gpa": a[:, 1]}),
    UsdtEvent("virtio_balloon_to_target", "qemu", -1,      # (uint64 target, uint32 num_pages)
              lambda a, s: {"event": "balloon_target", "size": a[:, 0], "count": a[:, 1] & 0xFFFFFFFF}),
    UsdtEvent("virtio_balloon_get_config", "qemu", -1,     # (uint32 num_pages, uint32 actual)
              lambda a, s: {"event": "balloon_get_config", "count": a[:, 1] & 0xFFFFFFFF}),
    UsdtEvent("virtio_balloon_set_config", "qemu", -1,     # (uint32 actual, uint32 oldactual)
              lambda a, s: {"event": "balloon_set_config", "count": a[:, 0] & 0xFFFFFFFF}),
    UsdtEvent("virtio_mem_plug_request", "qemu", -1,       # (uint64 addr, uint32 nb_blocks)
              lambda a, s: {"event": "virtio_mem_plug", "gpa": a[:, 0], "count": a[:, 1] & 0xFFFFFFFF}),
    UsdtEvent("virtio_mem_unplug_request", "qemu", -1,
              lambda a, s: {"event": "virtio_mem_unplug", "gpa": a[:, 0], "count": a[:, 1] & 0xFFFFFFFF}),
    UsdtEvent("virtio_mem_unplug_all_request", "qemu", -1, lambda a, s: {"event": "virtio_mem_unplug_all"}),
    UsdtEvent("migration_bitmap_sync_start", "qemu", -1, lambda a, s: {"event": "bitmap_sync_start"}),
    UsdtEvent("migration_bitmap_sync_end", "qemu", -1,     # (uint64 dirty_pages)
              lambda a, s: {"event": "bitmap_sync_end", "count": a[:, 0].astype(np.int64)}),
    UsdtEvent("migration_bitmap_clear_dirty", "qemu", 0,   # (char *rb, uint64 start, uint64 size, ulong page)
              lambda a, s: {"event": "bitmap_clear_dirty", "detail": s, "rb_offset": a[:, 1], "size": a[:, 2]}),
    UsdtEvent("pci_cfg_write", "qemu", 0,   # (const char *dev, uint32 bus, uint32 slot, uint32 fn, uint32 offset, uint32 val)
              lambda a, s: {"event": "pci_cfg_write", "detail": s, "cfg_offset": a[:, 4] & 0xFFFFFFFF,
                            "cfg_value": a[:, 5] & 0xFFFFFFFF}),
    UsdtEvent("vfio_listener_region_add_ram", "dma", -1, _vfio_range("map")),
    UsdtEvent("vfio_listener_region_del", "dma", -1, _vfio_range("unmap")),
    UsdtEvent("iommufd_backend_map_dma", "dma", -1, _iommufd("map")),
    UsdtEvent("iommufd_backend_unmap_dma", "dma", -1, _iommufd("unmap")),
    UsdtEvent("vhost_vdpa_dma_map", "dma", -1, _vdpa("map")),
    UsdtEvent("vhost_vdpa_dma_unmap", "dma", -1, _vdpa("unmap")),
)
# kvm_set_user_memory is left out on purpose: the kvm collector records the very ioctl from the
# kernel side, exactly; a second copy from QEMU would double every memslot update.
USDT_BY_NAME = {e.probe: i for i, e in enumerate(USDT_EVENTS)}


def decode_usdt(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    """Rows of each probe built column-wise; one pass per probe present in the batch."""
    env = pa.table(envelope_columns(rec, source, with_end=False))
    strings = np.char.decode(rec["str"], "utf-8", "replace").astype(object)
    parts: dict[str, list[pa.Table]] = {}
    for probe in np.unique(rec["probe"]):
        ev = USDT_EVENTS[int(probe)]
        rows = np.flatnonzero(rec["probe"] == probe)
        cols = ev.build(rec["args"][rows], strings[rows])
        table = env.take(pa.array(rows))
        for name, values in cols.items():
            array = pa.repeat(pa.scalar(values), len(rows)) if isinstance(values, str) else pa.array(values)
            table = table.append_column(name, array)
        parts.setdefault(ev.family, []).append(conform(FAMILY_BY_NAME[ev.family], table))
    return {family: pa.concat_tables(tables) for family, tables in parts.items()}


COLLECTOR = Collector(
    name="qemu", families=("qemu", "dma"), source="qemu.bpf.c",
    rings=(Ring("qemu", DTYPE, decode, "qemu.h", "qemu_rec", pages=4096),
           # USDT hits are at most one per balloon page: 1 MiB holds 6,500 per drain.
           Ring("qemu_usdt", USDT_DTYPE, decode_usdt, "qemu.h", "qemu_usdt_rec", pages=256)),
)
