"""The event schema: the one contract between collectors, importers and queries.

Every event family is one table. Every row carries the same envelope
(event_id, ts_ns, pid, tid, comm, source). Field lists live here and nowhere
else: writers build Arrow tables from `Family.schema`, importers validate
against it, the detection layer gets its DuckDB views from it, and the README's
column tables are generated from the `doc` of each field.

Addresses and sizes are uint64 as the kernel passes them; ranges are
half-open [start, start + size). Times are CLOCK_MONOTONIC nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 2


def _field(name: str, type_: pa.DataType, doc: str, *, nullable: bool = True,
           enum: tuple[str, ...] = ()) -> pa.Field:
    meta = {b"doc": doc.encode()}
    if enum:
        meta[b"enum"] = ",".join(enum).encode()
    return pa.field(name, type_, nullable=nullable, metadata=meta)


def field_doc(f: pa.Field) -> str:
    return (f.metadata or {}).get(b"doc", b"").decode()


def field_enum(f: pa.Field) -> tuple[str, ...]:
    raw = (f.metadata or {}).get(b"enum")
    return tuple(raw.decode().split(",")) if raw else ()


ENVELOPE = (
    _field("event_id", pa.int64(), "Unique id of the event within the run.", nullable=False),
    _field("ts_ns", pa.int64(), "CLOCK_MONOTONIC time of the event (syscall entry for syscalls).",
           nullable=False),
    _field("pid", pa.int32(), "Process (thread-group) id; 0 for rows about no process.",
           nullable=False),
    _field("tid", pa.int32(), "Thread id.", nullable=False),
    _field("comm", pa.string(), "Thread name at the time of the event.", nullable=False),
    _field("source", pa.string(), "Collector or importer that produced the row, e.g. bpf:discards.",
           nullable=False),
)

RET = _field("ret", pa.int64(), "Return value (negative errno on failure); null if the exit was not seen.")
END_NS = _field("end_ns", pa.int64(), "CLOCK_MONOTONIC time of the syscall's exit; null if not seen.")


@dataclass(frozen=True)
class Family:
    """One event family: a table of the run and a `kind` in JSON Lines traces."""

    name: str
    kind: str
    doc: str
    fields: tuple[pa.Field, ...]

    @cached_property
    def schema(self) -> pa.Schema:
        return pa.schema(ENVELOPE + self.fields,
                         metadata={b"vmemtrace.family": self.name.encode(),
                                   b"vmemtrace.schema_version": str(SCHEMA_VERSION).encode()})


FAMILIES: tuple[Family, ...] = (
    Family("discards", "discard",
           "Host-side discards of memory: madvise / process_madvise that drop page contents, "
           "fallocate(PUNCH_HOLE).",
           (
               _field("syscall", pa.string(), "Which call discarded.", nullable=False,
                      enum=("madvise", "process_madvise", "fallocate")),
               _field("hva_start", pa.uint64(), "First host-virtual address (madvise, one process_madvise iovec); "
                      "null for fallocate, which works on a file offset."),
               _field("size", pa.uint64(), "Bytes discarded as requested.", nullable=False),
               _field("advice", pa.int32(), "madvise behaviour (4 DONTNEED, 8 FREE, 9 REMOVE, 24 DONTNEED_LOCKED)."),
               _field("fd", pa.int32(), "fallocate file descriptor; process_madvise pidfd."),
               _field("offset", pa.uint64(), "fallocate file offset."),
               _field("mode", pa.int32(), "fallocate mode bits (3 = PUNCH_HOLE|KEEP_SIZE)."),
               RET, END_NS,
           )),
    Family("dma", "dma",
           "Long-term pins of host memory for a device: VFIO type1 MAP_DMA/UNMAP_DMA, iommufd "
           "IOAS_MAP/UNMAP, io_uring registered buffers, QEMU's own view of its device mappings from its "
           "trace log (vfio listener, iommufd backend, vhost-vdpa), and the kernel's iommu:map/unmap "
           "tracepoints (api=iommu, which carry the physical address given to the device).",
           (
               _field("api", pa.string(), "Interface the mapping came through.", nullable=False,
                      enum=("vfio_type1", "iommufd", "iommu", "io_uring", "qemu_vfio", "qemu_iommufd",
                            "vhost_vdpa")),
               _field("op", pa.string(), "Map or unmap.", nullable=False, enum=("map", "unmap")),
               _field("fd", pa.int32(), "VFIO container or iommufd file descriptor."),
               _field("ioas_id", pa.uint32(), "iommufd IOAS id."),
               _field("vaddr", pa.uint64(), "Host-virtual address of the mapped memory (map only)."),
               _field("iova", pa.uint64(), "I/O virtual address the device uses."),
               _field("size", pa.uint64(), "Bytes requested."),
               _field("flags", pa.uint32(), "Flags word of the request (VFIO_DMA_MAP_FLAG_*, "
                      "VFIO_DMA_UNMAP_FLAG_*, IOMMU_IOAS_MAP_*)."),
               _field("paddr", pa.uint64(), "Host-physical address programmed into the IOMMU (iommu:map)."),
               _field("unmapped", pa.uint64(), "Bytes the kernel reports as unmapped (unmap only)."),
               _field("buf_index", pa.uint32(), "io_uring registered-buffer index (map, and an update's "
                      "unmap); null on an unmap of every buffer of the ring fd."),
               RET, END_NS,
           )),
    Family("vfio_groups", "vfio_group",
           "VFIO groups attached to and detached from a container "
           "(VFIO_GROUP_SET_CONTAINER / VFIO_GROUP_UNSET_CONTAINER).",
           (
               _field("op", pa.string(), "Attach or detach.", nullable=False, enum=("attach", "detach")),
               _field("group_fd", pa.int32(), "File descriptor of the group (/dev/vfio/N).", nullable=False),
               _field("container_fd", pa.int32(), "Container file descriptor (attach only)."),
               RET, END_NS,
           )),
    Family("mmu_notifier", "mmu_notifier",
           "KVM MMU-notifier callbacks: the host mm told KVM that an HVA range changed.",
           (
               _field("event", pa.string(), "Which callback.", nullable=False,
                      enum=("unmap_hva_range", "age_hva", "test_age_hva")),
               _field("hva_start", pa.uint64(), "First host-virtual address.", nullable=False),
               _field("hva_end", pa.uint64(), "End of the range (exclusive); null for test_age_hva, "
                      "which names one address."),
           )),
    Family("memslots", "memslot",
           "KVM_SET_USER_MEMORY_REGION(2) calls: a memslot created, deleted (size 0), moved or re-flagged.",
           (
               _field("ioctl", pa.string(), "Which ioctl.", nullable=False, enum=("region", "region2")),
               _field("vm_fd", pa.int32(), "VM file descriptor the ioctl was issued on."),
               _field("as_id", pa.uint16(), "Address-space id (bits 16-31 of the slot word).", nullable=False),
               _field("slot", pa.uint16(), "Slot id (bits 0-15 of the slot word).", nullable=False),
               _field("flags", pa.uint32(), "KVM_MEM_* flags (1 LOG_DIRTY_PAGES, 2 READONLY, 4 GUEST_MEMFD).",
                      nullable=False),
               _field("gpa", pa.uint64(), "Guest-physical base address.", nullable=False),
               _field("size", pa.uint64(), "Bytes; 0 deletes the slot.", nullable=False),
               _field("hva", pa.uint64(), "Host-virtual address backing gpa.", nullable=False),
               _field("gmem_fd", pa.int32(), "guest_memfd (region2 only)."),
               _field("gmem_offset", pa.uint64(), "Offset into guest_memfd (region2 only)."),
               RET, END_NS,
           )),
    Family("dirty_log", "dirty_log",
           "Dirty-log harvests and device dirty tracking: KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG, "
           "KVM_RESET_DIRTY_RINGS, VFIO_IOMMU_DIRTY_PAGES.",
           (
               _field("op", pa.string(), "Which operation.", nullable=False,
                      enum=("kvm_get_dirty_log", "kvm_clear_dirty_log", "kvm_reset_dirty_rings",
                            "vfio_dirty_start", "vfio_dirty_stop", "vfio_dirty_get_bitmap")),
               _field("fd", pa.int32(), "VM fd (KVM) or container fd (VFIO)."),
               _field("as_id", pa.uint16(), "Address-space id of the slot (KVM)."),
               _field("slot", pa.uint16(), "Slot id (KVM)."),
               _field("first_page", pa.uint64(), "First page of the range (KVM_CLEAR_DIRTY_LOG)."),
               _field("num_pages", pa.uint32(), "Pages in the range (KVM_CLEAR_DIRTY_LOG)."),
               _field("iova", pa.uint64(), "Start of the range (vfio_dirty_get_bitmap)."),
               _field("size", pa.uint64(), "Bytes in the range (vfio_dirty_get_bitmap)."),
               RET, END_NS,
           )),
    Family("guest_accesses", "guest_access",
           "Guest memory accesses the host can see: KVM page faults, SPTE installs and changes, "
           "dirty-ring pushes, MMIO exits, QEMU writes into guest RAM.",
           (
               _field("via", pa.string(), "What showed the access.", nullable=False,
                      enum=("page_fault", "spte_requested", "spte_set", "spte_changed", "spte_zap",
                            "dirty_ring_push", "mmio", "userspace_exit", "qemu_write")),
               _field("vcpu", pa.int32(), "vCPU id."),
               _field("gpa", pa.uint64(), "Guest-physical address (page-aligned where the source gives a gfn)."),
               _field("gva", pa.uint64(), "Guest-virtual address, where the source gives one instead of a GPA "
                      "(kvm_page_fault after a #PF intercept)."),
               _field("write", pa.bool_(), "True for a write, false for a read; null if unknown."),
               _field("pfn", pa.uint64(), "Host page frame now backing gpa, where the source exposes it."),
               _field("as_id", pa.uint16(), "Address-space id (dirty ring, TDP MMU)."),
               _field("slot", pa.uint16(), "Slot id (dirty ring)."),
               _field("level", pa.uint8(), "Page-table level of the mapping (1 = 4 KiB)."),
               _field("error_code", pa.uint64(), "Page-fault error code (page_fault); exit reason (userspace_exit)."),
               _field("page_offset", pa.uint64(), "Page offset within the slot (dirty_ring_push; "
                      "the GPA follows from the memslot)."),
           )),
    Family("vcpu_runs", "vcpu_run",
           "vCPU threads inside KVM_RUN: the ioctl's entry and exit per vCPU thread (collector), or QEMU's "
           "kvm_vcpu_ioctl / kvm_run_exit log lines.",
           (
               _field("op", pa.string(), "run: one KVM_RUN from entry (ts_ns) to exit (end_ns); enter / exit: "
                      "only one end was seen (QEMU's log).", nullable=False, enum=("run", "enter", "exit")),
               _field("vcpu", pa.int32(), "vCPU index (QEMU's cpu_index), where known."),
               _field("vcpu_fd", pa.int32(), "vCPU file descriptor the ioctl was issued on."),
               _field("exit_reason", pa.int32(), "KVM_EXIT_* reason of the exit, where known."),
               RET, END_NS,
           )),
    Family("file_mappings", "file_mapping",
           "Which host-virtual ranges of a process map which file ranges (mmap / munmap calls, or "
           "/proc/PID/maps read at attach time), so that a hole punched in a file (fallocate) can be "
           "placed in guest memory.",
           (
               _field("event", pa.string(), "How the mapping was seen.", nullable=False,
                      enum=("mmap", "munmap", "proc_maps")),
               _field("hva_start", pa.uint64(), "First host-virtual address.", nullable=False),
               _field("size", pa.uint64(), "Bytes.", nullable=False),
               _field("fd", pa.int32(), "File descriptor mapped (mmap); null when unknown."),
               _field("file_offset", pa.uint64(), "Offset in the file of hva_start."),
               _field("flags", pa.uint32(), "mmap flags (MAP_SHARED = 1, MAP_PRIVATE = 2)."),
               _field("path", pa.string(), "File path, where known (/proc/PID/maps, /proc/PID/fd)."),
               _field("inode", pa.uint64(), "Inode of the file, where known: the same file in two "
                      "processes (memfd shared with a vhost-user backend)."),
               RET,
           )),
    Family("qemu", "qemu",
           "QEMU's own view: discard inhibitor calls, RAM block discards, balloon, free page hints and "
           "reports, migration bitmap syncs (from uprobes or QEMU's trace log).",
           (
               _field("event", pa.string(), "What QEMU did.", nullable=False,
                      enum=("discard_disable", "uncoordinated_discard_disable", "discard_require",
                            "coordinated_discard_require", "balloon_inhibit", "discard_is_disabled",
                            "balloon_is_inhibited", "ram_block_discard_range",
                            "free_page_hint", "free_page_hint_start", "free_page_hint_stop",
                            "free_page_report", "balloon_inflate", "balloon_deflate", "balloon_target",
                            "balloon_page", "balloon_get_config", "balloon_set_config",
                            "virtio_mem_plug", "virtio_mem_unplug", "virtio_mem_unplug_all",
                            "ram_discard_range", "bitmap_sync_start", "bitmap_sync_end",
                            "bitmap_clear_dirty", "precopy_notify",
                            "dirty_log_start", "dirty_log_stop", "dirty_log_sync",
                            "memory_commit", "ioctl_inhibit_begin", "ioctl_inhibit_end",
                            "pci_cfg_write")),
               _field("state", pa.bool_(), "The bool argument (true = disable/require/inhibit)."),
               # ret of discard_is_disabled / balloon_is_inhibited is QEMU's own answer: 1 = inhibited.
               _field("hva", pa.uint64(), "Host-virtual address the call names."),
               _field("gpa", pa.uint64(), "Guest-physical address the call names."),
               _field("size", pa.uint64(), "Bytes the call names."),
               _field("rb_offset", pa.uint64(), "Offset into the RAM block (ram_block_discard_range)."),
               _field("count", pa.int64(), "A count the event carries (pages, dirty pages, target)."),
               _field("detail", pa.string(), "Free text the source gave (RAM block name, PCI device, ...)."),
               _field("cfg_offset", pa.uint32(), "PCI config-space offset written (pci_cfg_write; 4 = PCI_COMMAND)."),
               _field("cfg_value", pa.uint32(), "Value written there (pci_cfg_write)."),
               RET, END_NS,
           )),
    Family("lost_events", "lost",
           "Events a source knows it lost: ring buffer full, lines an importer could not parse.",
           (
               _field("family", pa.string(), "Family whose events were lost (or the source's name).",
                      nullable=False),
               _field("count", pa.uint64(), "How many.", nullable=False),
               _field("reason", pa.string(), "Why.", nullable=False),
           )),
)

FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
FAMILY_BY_KIND = {f.kind: f for f in FAMILIES}


# -- the write gate ---------------------------------------------------------------------------
# Every row that reaches disk passes check_rows: writers hand in tables whose integer columns may be
# wider than the schema's (int64, uint64, decimal256 from loose_int_array), so that a value out of
# range is seen and named here, with its row, instead of failing inside an Arrow cast.

@dataclass(frozen=True)
class Violation:
    """One thing the schema forbids: `row` is the index within the table checked (None: the whole column)."""

    row: int | None
    column: str
    value: Any
    message: str

    def __str__(self) -> str:
        where = "" if self.row is None else f"row {self.row}: "
        return f"{where}field {self.column!r}: {self.message}"


def int_bounds(t: pa.DataType) -> tuple[int, int]:
    """Smallest and largest value of an Arrow integer type."""
    bits = t.bit_width
    if pa.types.is_unsigned_integer(t):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


_WIDE = pa.decimal256(76, 0)
_WIDE_CAP = 10 ** 75


def loose_int_array(values: list[int | None]) -> pa.Array:
    """Python ints as an Arrow array wide enough to hold every one, for check_rows to range-check.

    int64 when they fit, else uint64, else decimal256; beyond +-10^75 a value is clamped to that
    bound (it is out of every column's range either way, so the gate still refuses its row).
    """
    for t in (pa.int64(), pa.uint64(), _WIDE):
        try:
            return pa.array(values, t)
        except (pa.ArrowInvalid, OverflowError):
            continue
    # Error path only: some value is beyond decimal256.
    return pa.array([None if v is None else max(-_WIDE_CAP, min(_WIDE_CAP, v)) for v in values], _WIDE)


def _outside(col: pa.Array, lo: int, hi: int) -> pa.Array | None:
    """Mask of values outside lo..hi (nulls false), or None when col's type cannot hold such values."""
    t = col.type
    conds = []
    if pa.types.is_integer(t):
        tlo, thi = int_bounds(t)
        if tlo < lo:
            conds.append(pc.less(col, pa.scalar(lo, t)))
        if thi > hi:
            conds.append(pc.greater(col, pa.scalar(hi, t)))
    elif pa.types.is_decimal(t):
        conds = [pc.less(col, pa.scalar(Decimal(lo), t)), pc.greater(col, pa.scalar(Decimal(hi), t))]
    if not conds:
        return None
    mask = conds[0] if len(conds) == 1 else pc.or_(conds[0], conds[1])
    return pc.fill_null(mask, False)


def _type_ok(want: pa.DataType, got: pa.DataType) -> bool:
    if pa.types.is_null(got):
        return True
    if pa.types.is_integer(want):
        return pa.types.is_integer(got) or (pa.types.is_decimal(got) and got.scale == 0)
    if pa.types.is_string(want):
        if pa.types.is_dictionary(got):  # collectors hand in strings dictionary-encoded, as chunks store them
            got = got.value_type
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return got == want


def _one_array(col: pa.ChunkedArray) -> pa.Array:
    # combine_chunks() copies even a single chunk: ~0.3 ms per column of a 262,144-row drain batch.
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _dense_if_unusual(col: pa.Array) -> pa.Array:
    """A dictionary column the checks below can take as it is, or its plain values.

    Index nulls are the column's nulls; a null inside the dictionary is rare (the error path),
    so such a column is decoded and checked value by value."""
    if pa.types.is_dictionary(col.type) and col.dictionary.null_count:
        return col.cast(col.type.value_type)
    return col


@lru_cache(maxsize=None)
def _enum_values(allowed: tuple[str, ...]) -> pa.Array:
    return pa.array(allowed, pa.string())


def _row_violations(mask: pa.Array, col: pa.Array, name: str, message) -> list[Violation]:
    rows = pc.indices_nonzero(mask)
    if len(rows) == 0:
        return []
    values = pc.take(col, rows).to_pylist()
    return [Violation(r, name, v, message(v)) for r, v in zip(rows.to_pylist(), values)]


def check_rows(fam: Family, table: pa.Table) -> list[Violation]:
    """Everything in `table` that family `fam` forbids, sorted by row; [] when every row may be written.

    Checked, vectorised per column: unknown and missing required columns, column types, nulls in
    required columns, enum values, integer ranges of the column's type (event_id: 1 and up).
    event_id may be absent or null (the run store assigns it). String columns may come
    dictionary-encoded (pa.DictionaryArray of strings): their enum values are checked per
    distinct value.
    """
    out: list[Violation] = []
    schema = fam.schema
    known, given = set(schema.names), set(table.column_names)
    for name in table.column_names:
        if name not in known:
            out.append(Violation(None, name, None, f"not a column of {fam.name}"))
    for f in schema:
        if f.name not in given:
            if not f.nullable and f.name != "event_id":
                out.append(Violation(None, f.name, None, f"required column missing from {fam.name}"))
            continue
        col = _one_array(table.column(f.name))
        if not _type_ok(f.type, col.type):
            out.append(Violation(None, f.name, None, f"has type {col.type}, expected {f.type}"))
            continue
        col = _dense_if_unusual(col)
        if not f.nullable and f.name != "event_id" and col.null_count:
            out += _row_violations(pc.is_null(col), col, f.name, lambda v: "must not be null")
        if pa.types.is_integer(f.type):
            lo, hi = int_bounds(f.type)
            if f.name == "event_id":
                lo = 1
            mask = _outside(col, lo, hi)
            if mask is not None:
                out += _row_violations(mask, col, f.name, lambda v, t=f.type, lo=lo, hi=hi:
                                       f"{v} is outside {t} ({lo}..{hi})")
        allowed = field_enum(f)
        if allowed and pa.types.is_dictionary(col.type):
            # The few distinct values checked once each, not every row's copy of them; a value not
            # allowed (the error path) is then looked for row by row.
            if not pc.all(pc.is_in(col.dictionary, value_set=_enum_values(allowed))).as_py():
                col = col.cast(col.type.value_type)
        if allowed and not pa.types.is_null(col.type) and not pa.types.is_dictionary(col.type):
            # null is the null check's business, not the enum's
            mask = pc.and_(pc.invert(pc.is_in(col, value_set=_enum_values(allowed))), pc.is_valid(col))
            if pc.any(mask).as_py():
                out += _row_violations(mask, col, f.name,
                                       lambda v, a=allowed: f"{v!r} is not one of {', '.join(a)}")
    if not out:
        return out
    order = {n: i for i, n in enumerate(schema.names)}
    return sorted(out, key=lambda v: (-1 if v.row is None else v.row, order.get(v.column, -1)))


def drop_invalid_rows(fam: Family, table: pa.Table) -> tuple[pa.Table, list[Violation]]:
    """The rows of `table` check_rows accepts, and the violations of the others (for --skip-bad).

    A whole-column violation (unknown column, wrong type) cannot be skipped row by row: it is
    returned with the table unfiltered, for the caller to refuse.
    """
    violations = check_rows(fam, table)
    if not violations or any(v.row is None for v in violations):
        return table, violations
    bad = pa.array(sorted({v.row for v in violations}), pa.int64())
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=bad))
    return table.filter(keep), violations

# Findings are stored in the run too; their columns are the public JSON contract.
FINDING_SCHEMA = pa.schema([
    _field("finding_id", pa.string(), "Stable id: detector, kind and a digest of the evidence.", nullable=False),
    _field("detector", pa.string(), "Detector id (D1 ...).", nullable=False),
    _field("kind", pa.string(), "Finding type within the detector.", nullable=False),
    _field("severity", pa.string(), "critical, high, medium or info.", nullable=False,
           enum=("critical", "high", "medium", "info")),
    _field("pid", pa.int32(), "Process the finding is about."),
    _field("comm", pa.string(), "Its name."),
    _field("ts_start_ns", pa.int64(), "First evidence event (CLOCK_MONOTONIC ns)."),
    _field("ts_end_ns", pa.int64(), "Last evidence event (CLOCK_MONOTONIC ns)."),
    _field("gpa_start", pa.uint64(), "Guest-physical range, half-open."),
    _field("gpa_end", pa.uint64(), ""),
    _field("hva_start", pa.uint64(), "Host-virtual range, half-open."),
    _field("hva_end", pa.uint64(), ""),
    _field("iova_start", pa.uint64(), "I/O virtual range, half-open."),
    _field("iova_end", pa.uint64(), ""),
    _field("event_ids", pa.list_(pa.int64()), "Events that prove the finding.", nullable=False),
    _field("related", pa.list_(pa.string()), "Other findings sharing evidence events.", nullable=False),
    _field("message", pa.string(), "One sentence a hypervisor engineer can act on.", nullable=False),
])

SEVERITIES = ("critical", "high", "medium", "info")


def severity_rank(severity: str) -> int:
    """0 for critical ... 3 for info; lower is worse."""
    return SEVERITIES.index(severity)
