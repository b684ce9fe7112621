"""Collector of QEMU's own guest-memory decisions through uprobes on exported functions.

Which functions exist depends on the QEMU build: each is looked up in the binary, attached
where present and listed as missing otherwise (QEMU < 5.0 has qemu_balloon_inhibit instead of
the ram_block_discard_* counters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from collectors.base import Collector, Ring, envelope_columns, labels, nullable, record_dtype

DEFAULT_BINARY = "/usr/bin/qemu-system-x86_64"

# (symbol, event, kind of arguments). The index is the uprobe handler qemu_enter_N.
FUNCTIONS = (
    ("ram_block_discard_disable", "discard_disable", "bool"),
    ("ram_block_uncoordinated_discard_disable", "uncoordinated_discard_disable", "bool"),
    ("ram_block_discard_require", "discard_require", "bool"),
    ("ram_block_coordinated_discard_require", "coordinated_discard_require", "bool"),
    ("qemu_balloon_inhibit", "balloon_inhibit", "bool_void"),
    ("ram_block_discard_is_disabled", "discard_is_disabled", "query"),    # QEMU's own answer, bool
    ("qemu_balloon_is_inhibited", "balloon_is_inhibited", "query"),
    ("ram_block_discard_range", "ram_block_discard_range", "rb_range"),   # (RAMBlock *, start, length)
    ("qemu_guest_free_page_hint", "free_page_hint", "hva_len"),           # (void *addr, size_t len)
    ("precopy_notify", "precopy_notify", "reason"),                       # (PrecopyNotifyReason, Error **)
    ("memory_global_dirty_log_start", "dirty_log_start", "flags"),        # (unsigned int flags)
    ("memory_global_dirty_log_stop", "dirty_log_stop", "flags"),
    ("memory_global_dirty_log_sync", "dirty_log_sync", "none"),
)
PRECOPY_REASONS = ("setup", "before_bitmap_sync", "after_bitmap_sync", "complete", "cleanup")

DTYPE = record_dtype([("arg0", "<u8"), ("arg1", "<u8"), ("arg2", "<u8"), ("ret", "<i8"),
                      ("fn", "<u4"), ("pad", "<u4")])


def _kind_mask(fn: np.ndarray, *kinds: str) -> np.ndarray:
    return np.isin(fn, [i for i, f in enumerate(FUNCTIONS) if f[2] in kinds])


def decode(rec: np.ndarray, source: str) -> dict[str, pa.Table]:
    fn = rec["fn"]
    a0, a1, a2 = rec["arg0"], rec["arg1"], rec["arg2"]
    is_bool = _kind_mask(fn, "bool", "bool_void")
    has_ret = _kind_mask(fn, "bool", "rb_range", "reason", "query")
    rb = _kind_mask(fn, "rb_range")
    hint = _kind_mask(fn, "hva_len")
    reason = _kind_mask(fn, "reason")
    flags = _kind_mask(fn, "flags")
    # precopy_notify before/after the bitmap sync is what bounds a free-page-hint round.
    events = np.array([f[1] for f in FUNCTIONS] + ["bitmap_sync_start", "bitmap_sync_end"])
    code = fn.astype(np.int64)
    code = np.where(reason & (a0 == 1), len(FUNCTIONS), code)
    code = np.where(reason & (a0 == 2), len(FUNCTIONS) + 1, code)
    reason_names = np.array(PRECOPY_REASONS + ("unknown",))
    detail = np.where(reason, reason_names[np.minimum(a0, len(PRECOPY_REASONS))], "")
    detail = np.where(rb, np.char.add("RAMBlock@0x", np.char.mod("%x", a0)), detail)
    cols = envelope_columns(rec, source)
    cols.update(
        event=labels(tuple(events), code),
        state=nullable((a0 & 0xFF) != 0, ~is_bool),
        hva=nullable(a0, ~hint),
        size=nullable(np.where(rb, a2, a1), ~(rb | hint)),
        rb_offset=nullable(a1, ~rb),
        count=nullable(a0.astype(np.int64), ~flags),
        detail=nullable(detail.astype(object), ~(rb | reason)),
        # int-returning QEMU functions use the low 32 bits of rax, bool ones the low 8.
        ret=nullable(np.where(_kind_mask(fn, "query"), rec["ret"].astype(np.int64) & 0xFF,
                              rec["ret"].astype(np.int64).astype(np.int32).astype(np.int64)), ~has_ret),
    )
    return {"qemu": pa.table(cols)}


def attach(bpf, binary: str | None) -> tuple[list[str], list[str]]:
    """Attach every FUNCTIONS entry the binary exports; (attached, missing) as uprobe:PATH:SYMBOL."""
    from bcc import BPF

    binary = binary or DEFAULT_BINARY
    if not Path(binary).exists():
        return [], [f"uprobe:{binary} (no such file)"]
    attached, missing = [], []
    for i, (sym, _, _) in enumerate(FUNCTIONS):
        name = f"uprobe:{binary}:{sym}"
        if not BPF.get_user_functions_and_addresses(binary.encode(), f"^{sym}$".encode()):
            missing.append(name)
            continue
        bpf.attach_uprobe(name=binary, sym=sym, fn_name=f"qemu_enter_{i}")
        bpf.attach_uretprobe(name=binary, sym=sym, fn_name="qemu_return")
        attached.append(name)
    return attached, missing


COLLECTOR = Collector(
    name="qemu", families=("qemu",), source="qemu.bpf.c", attach=attach,
    rings=(Ring("qemu", DTYPE, decode, "qemu.h", "qemu_rec", pages=4096, inflight=True),),
)
