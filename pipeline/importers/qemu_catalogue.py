"""QEMU's guest-memory trace events: the argument formats QEMU compiles in, and the schema row each
becomes.

Formats are QEMU's `trace-events` format strings (7.2: `strings /usr/bin/qemu-system-x86_64`;
later releases: each version's `trace-events` files), written as templates: `{name:x}` is a
`%x`/PRIx64 number (the `0x` stays in the literal text, as in QEMU's string), `{name:d}` a signed
and `{name:u}` an unsigned decimal, `{name:p}` a `%p` pointer (`0x...` or `(nil)`), `{name:s}` a
`%s` string. An event with several generations lists the newest first. Arguments QEMU appends in
releases or branches not listed here (`key=value` after the last one) are accepted and kept.

Each event maps to one schema family; `columns` are DuckDB expressions over `f_<name>` (the parsed
arguments) and `where` (if any) keeps the rows that belong in that family, the others are counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.constants import KVM_RUN, PAGE_SIZE

_TYPES = {  # template type -> (RE2 pattern, DuckDB expression of the captured text `g`)
    "x": (r"[0-9a-fA-F]+", "TRY_CAST('0x' || {g} AS UBIGINT)"),
    "d": (r"-?\d+", "TRY_CAST({g} AS BIGINT)"),
    "u": (r"\d+", "TRY_CAST({g} AS UBIGINT)"),
    "p": (r"0x[0-9a-fA-F]+|\(nil\)", "CASE {g} WHEN '(nil)' THEN 0::UBIGINT ELSE TRY_CAST({g} AS UBIGINT) END"),
    "s": (r".*?", "{g}"),
}
_PLACEHOLDER = re.compile(r"\{(\w+):(\w)\}")
EXTRA = r"(?P<extra>(?:\s+[A-Za-z_]\w*=\S*)*)"   # trailing key=value arguments of other releases


def _escape(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


@dataclass(frozen=True)
class Event:
    name: str
    family: str
    formats: tuple[str, ...]          # newest first
    columns: dict[str, str]           # family column -> DuckDB expression over f_<field>
    example: str                      # arguments of a real-looking line, for the README and tests
    where: str | None = None          # rows outside it are in the catalogue but not in the family
    since: str = "7.2"
    fields: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        fields: dict[str, str] = {}
        for fmt in self.formats:
            for name, typ in _PLACEHOLDER.findall(fmt):
                fields.setdefault(name, typ)
        object.__setattr__(self, "fields", fields)

    def pattern(self) -> str:
        """One anchored RE2 pattern for all generations; group `<field>__<generation>`."""
        alts = []
        for gen, fmt in enumerate(self.formats):
            out, pos = [], 0
            for m in _PLACEHOLDER.finditer(fmt):
                out.append(_escape(fmt[pos:m.start()]))
                out.append(f"(?P<{m[1]}__{gen}>{_TYPES[m[2]][0]})")
                pos = m.end()
            out.append(_escape(fmt[pos:]))
            alts.append("".join(out))
        return r"^\s*(?:" + "|".join(alts) + ")" + EXTRA + r"\s*$"

    def token_plan(self, gen: int) -> list[tuple[str, str, str, str]] | None:
        """The format cut at spaces: per token (literal, "") or (field, type, text before, text after).

        None when a token holds two fields (nothing to cut them apart with but a pattern)."""
        plan = []
        for token in self.formats[gen].split():
            found = _PLACEHOLDER.findall(token)
            if not found:
                plan.append((token, "", "", ""))
            elif len(found) > 1:
                return None
            else:
                before, after = _PLACEHOLDER.split(token)[0], _PLACEHOLDER.split(token)[-1]
                plan.append((found[0][0], found[0][1], before, after))
        return plan

    def field_prefixes(self, gen: int) -> list[tuple[str, str, str]]:
        """(field, pattern of the format up to that field and the text after it (or the line's end),
        pattern of the format up to the text before the field)."""
        fmt, out, pos, res = self.formats[gen], [], 0, []
        for m in _PLACEHOLDER.finditer(fmt):
            out.append(_escape(fmt[pos:m.start()]))
            before = r"^\s*" + "".join(out)
            out.append(f"(?:{_TYPES[m[2]][0]})")
            pos = m.end()
            follow = _PLACEHOLDER.split(fmt[pos:])[0][:1]   # the separator right after the field
            res.append((m[1], r"^\s*" + "".join(out) + (f"(?:{_escape(follow)}|$)" if follow else r"(?:\s|$)"),
                        before))
        return res


def first_bad_field(event: Event, args: str) -> tuple[str, str]:
    """(first argument of `args` that is wrong or missing, the format that got furthest).

    Python re on one line: only for the error message of a line the vectorised parse rejected."""
    best = ("arguments", event.formats[0], -1)
    for gen, fmt in enumerate(event.formats):
        prefixes = event.field_prefixes(gen)
        ok = 0
        while ok < len(prefixes) and re.match(prefixes[ok][1], args):
            ok += 1
        name = prefixes[ok][0] if ok < len(prefixes) else "end of line"
        # progress: whole fields, then whether the text before the next field is right
        score = 2 * ok + (ok < len(prefixes) and re.match(prefixes[ok][2], args) is not None)
        if score > best[2]:
            best = (name, fmt, score)
    return best[0], best[1]


def _token_text(plan: list[tuple[str, str, str, str]], name: str) -> str | None:
    for i, (tok, typ, before, after) in enumerate(plan, 1):
        if typ and tok == name:
            return f"tk[{i}][{len(before) + 1}:{-len(after) - 1 if after else -1}]"
    return None


def token_generation(event: Event) -> str:
    """DuckDB expression: the generation whose spaces and literal tokens a line's `tk` (its arguments
    split at spaces) fits, else NULL (the line then goes through the pattern's capture groups)."""
    cases = []
    for gen in range(len(event.formats)):
        plan = event.token_plan(gen)
        if plan is None:
            continue
        if not plan:
            cases.append(f"WHEN trim(args) = '' THEN {gen}")
            continue
        conds = [f"len(tk) = {len(plan)}"]
        for i, (tok, typ, before, after) in enumerate(plan, 1):
            if not typ:
                conds.append(f"tk[{i}] = '{tok}'")
            else:
                if before:
                    conds.append(f"starts_with(tk[{i}], '{before}')")
                if after:
                    conds.append(f"ends_with(tk[{i}], '{after}')")
                conds.append(f"length(tk[{i}]) > {len(before) + len(after)}")
        cases.append(f"WHEN {' AND '.join(conds)} THEN {gen}")
    return f"CASE {' '.join(cases)} END" if cases else "NULL::INTEGER"


def field_text(event: Event, name: str) -> str:
    """DuckDB expression of a field's text (NULL when the line does not carry it).

    The text comes from the line's tokens when `tgen` (its token generation) is known, else from
    the pattern's capture groups (`m`, extracted only for those lines). One CASE over `tgen`:
    generations that cut the same token share a branch."""
    by_token: dict[str, list[int]] = {}
    captured = []
    for g, fmt in enumerate(event.formats):
        if "{" + name + ":" not in fmt:
            continue
        plan = event.token_plan(g)
        token = _token_text(plan, name) if plan else None
        if token:
            by_token.setdefault(token, []).append(g)
        captured.append(f"nullif(m['{name}__{g}'], '')")
    whens = "".join(f"WHEN tgen IN ({', '.join(map(str, gens))}) THEN {token} " for token, gens in by_token.items())
    from_captures = captured[0] if len(captured) == 1 else "coalesce(" + ", ".join(captured) + ")"
    return f"CASE {whens}WHEN tgen IS NULL THEN {from_captures} END"


def field_value(event: Event, name: str) -> str:
    """DuckDB expression of a field's typed value from its text column t_<name>."""
    typ = event.fields[name]
    return _TYPES[typ][1].format(g=f"t_{name}") if typ != "s" else f"coalesce(t_{name}, '')"


_RUN_NR = KVM_RUN & 0xFFFF   # type 0xAE, nr 0x80
# KVM_RUN is _IO(KVMIO, 0x80): no size; the direction bits differ per architecture (x86 0, ppc64 0x20000000).
_IS_KVM_RUN = f"(f_type & 65535) = {_RUN_NR} AND ((f_type >> 16) & 8191) = 0"
_PAGE = PAGE_SIZE   # virtio-balloon pages are 4 KiB (VIRTIO_BALLOON_PFN_SHIFT 12) on every host

def _range_size(start: str, last: str) -> str:
    """Bytes of [start, last] (QEMU prints a range's last byte); all 2^64 bytes saturate at 2^64 - 1."""
    return f"({last} - {start}) + CASE WHEN {last} - {start} < 18446744073709551615 THEN 1 ELSE 0 END"


_SLOT_WORD = {"as_id": "coalesce(f_as_id, f_slot >> 16)",
              "slot": "CASE WHEN f_as_id IS NULL THEN f_slot & 65535 ELSE f_slot END"}

CATALOGUE: tuple[Event, ...] = (
    Event("kvm_set_user_memory", "memslots", (
        # 9.0+ (guest_memfd): accel/kvm/trace-events
        "AddrSpace#{as_id:d} Slot#{slot:d} flags=0x{flags:x} gpa=0x{gpa:x} size=0x{size:x} ua=0x{hva:x} "
        "guest_memfd={gmem_fd:d} guest_memfd_offset=0x{gmem_offset:x} ret={ret:d}",
        # 8.2: address space apart from the slot
        "AddrSpace#{as_id:d} Slot#{slot:d} flags=0x{flags:x} gpa=0x{gpa:x} size=0x{size:x} ua=0x{hva:x} ret={ret:d}",
        # 7.2 .. 8.1: the raw slot word (as_id << 16 | slot)
        "Slot#{slot:d} flags=0x{flags:x} gpa=0x{gpa:x} size=0x{size:x} ua=0x{hva:x} ret={ret:d}",
    ), {"ioctl": "CASE WHEN coalesce(f_gmem_fd, -1) >= 0 THEN 'region2' ELSE 'region' END", **_SLOT_WORD,
        "flags": "f_flags", "gpa": "f_gpa", "size": "f_size", "hva": "f_hva", "gmem_fd": "f_gmem_fd",
        "gmem_offset": "f_gmem_offset", "ret": "f_ret"},
        "Slot#0 flags=0x0 gpa=0x0 size=0x80000000 ua=0x7f3b17a00000 ret=0"),
    # --- the device's view of guest memory (hw/vfio, backends/iommufd, hw/virtio/vhost-vdpa) ---
    Event("vfio_listener_region_add_ram", "dma", ("region_add [ram] 0x{start:x} - 0x{end:x} [{vaddr:p}]",),
          {"api": "'qemu_vfio'", "op": "'map'", "iova": "f_start", "size": _range_size("f_start", "f_end"),
           "vaddr": "f_vaddr"},
          "region_add [ram] 0x100000 - 0x7fffffff [0x7f3b17b00000]"),
    Event("vfio_listener_region_add_iommu", "dma", ("region_add [iommu] 0x{start:x} - 0x{end:x}",),
          {"api": "'qemu_vfio'", "op": "'map'", "iova": "f_start", "size": _range_size("f_start", "f_end")},
          "region_add [iommu] 0x0 - 0xffffffffff"),
    Event("vfio_listener_region_del", "dma", ("region_del 0x{start:x} - 0x{end:x}",),
          {"api": "'qemu_vfio'", "op": "'unmap'", "iova": "f_start", "size": _range_size("f_start", "f_end")},
          "region_del 0xa0000 - 0xbffff"),
    Event("vfio_iommu_map_notify", "dma", ("iommu {op:s} @ 0x{start:x} - 0x{end:x}",),
          {"api": "'qemu_vfio'", "op": "CASE f_op WHEN 'MAP' THEN 'map' ELSE 'unmap' END",
           "iova": "f_start", "size": _range_size("f_start", "f_end")},
          "iommu MAP @ 0xfffff000 - 0xffffffff", where="f_op IN ('MAP', 'UNMAP')"),
    Event("iommufd_backend_map_dma", "dma", (
        "iommufd={fd:d} ioas={ioas:u} iova=0x{iova:x} size=0x{size:x} addr={vaddr:p} readonly={ro:d} ({ret:d})",),
        {"api": "'qemu_iommufd'", "op": "'map'", "fd": "f_fd", "ioas_id": "f_ioas", "iova": "f_iova",
         "size": "f_size", "vaddr": "f_vaddr", "ret": "f_ret"},
        " iommufd=3 ioas=2 iova=0x0 size=0x80000000 addr=0x7f3b17a00000 readonly=0 (0)", since="8.2"),
    Event("iommufd_backend_map_file_dma", "dma", (
        "iommufd={fd:d} ioas={ioas:u} iova=0x{iova:x} size=0x{size:x} fd={file_fd:d} start={start:d} "
        "readonly={ro:d} ({ret:d})",),
        {"api": "'qemu_iommufd'", "op": "'map'", "fd": "f_fd", "ioas_id": "f_ioas", "iova": "f_iova",
         "size": "f_size", "ret": "f_ret"},
        " iommufd=303 ioas=2 iova=0x30000000000 size=0xb90000 fd=306 start=0 readonly=0 (0)", since="10.0"),
    Event("iommufd_backend_unmap_dma", "dma", (
        "iommufd={fd:d} ioas={ioas:u} iova=0x{iova:x} size=0x{size:x} ({ret:d})",),
        {"api": "'qemu_iommufd'", "op": "'unmap'", "fd": "f_fd", "ioas_id": "f_ioas", "iova": "f_iova",
         "size": "f_size", "ret": "f_ret"},
        " iommufd=3 ioas=2 iova=0x0 size=0x80000000 (0)", since="8.2"),
    Event("iommufd_backend_unmap_dma_non_exist", "dma", (
        "Unmap nonexistent mapping: iommufd={fd:d} ioas={ioas:u} iova=0x{iova:x} size=0x{size:x} ({ret:d})",),
        {"api": "'qemu_iommufd'", "op": "'unmap'", "fd": "f_fd", "ioas_id": "f_ioas", "iova": "f_iova",
         "size": "f_size", "ret": "f_ret"},
        " Unmap nonexistent mapping: iommufd=3 ioas=2 iova=0x0 size=0x1000 (-2)", since="8.2"),
    Event("vhost_vdpa_dma_map", "dma", (
        "vdpa:{vdpa:p} fd: {fd:d} msg_type: {msg:u} asid: {asid:u} iova: 0x{iova:x} size: 0x{size:x} "
        "uaddr: 0x{uaddr:x} perm: 0x{perm:x} type: {type:u}",                      # 8.0+
        "vdpa:{vdpa:p} fd: {fd:d} msg_type: {msg:u} iova: 0x{iova:x} size: 0x{size:x} "
        "uaddr: 0x{uaddr:x} perm: 0x{perm:x} type: {type:u}",),                    # 7.2
        {"api": "'vhost_vdpa'", "op": "'map'", "fd": "f_fd", "iova": "f_iova", "size": "f_size",
         "vaddr": "f_uaddr", "flags": "f_perm"},
        "vdpa:0x55d0c8a3e2a0 fd: 17 msg_type: 2 iova: 0x0 size: 0x80000000 uaddr: 0x7f3b17a00000 perm: 0x3 type: 2"),
    Event("vhost_vdpa_dma_unmap", "dma", (
        "vdpa:{vdpa:p} fd: {fd:d} msg_type: {msg:u} asid: {asid:u} iova: 0x{iova:x} size: 0x{size:x} type: {type:u}",
        "vdpa:{vdpa:p} fd: {fd:d} msg_type: {msg:u} iova: 0x{iova:x} size: 0x{size:x} type: {type:u}",),
        {"api": "'vhost_vdpa'", "op": "'unmap'", "fd": "f_fd", "iova": "f_iova", "size": "f_size"},
        "vdpa:0x55d0c8a3e2a0 fd: 17 msg_type: 2 iova: 0x0 size: 0x80000000 type: 3"),
    # --- balloon, virtio-mem, RAM discards (hw/virtio, system/physmem.c, migration/ram.c) ---
    Event("virtio_balloon_handle_output", "qemu", ("section name: {name:s} gpa: 0x{gpa:x}",),
          {"event": "'balloon_page'", "detail": "f_name", "gpa": "f_gpa", "size": str(_PAGE), "count": "1"},
          "section name: pc.ram gpa: 0x7ffc000"),
    Event("virtio_balloon_get_config", "qemu", ("num_pages: {num_pages:d} actual: {actual:d}",),
          {"event": "'balloon_get_config'", "count": "f_num_pages", "size": f"f_actual * {_PAGE}"},
          "num_pages: 65536 actual: 0"),
    Event("virtio_balloon_set_config", "qemu", ("actual: {actual:d} oldactual: {oldactual:d}",),
          {"event": "'balloon_set_config'", "count": "f_actual", "size": f"f_actual * {_PAGE}",
           "detail": "'oldactual=' || f_oldactual"},
          "actual: 65536 oldactual: 0"),
    Event("virtio_balloon_to_target", "qemu", ("balloon target: 0x{target:x} num_pages: {num_pages:d}",),
          {"event": "'balloon_target'", "size": "f_target", "count": "f_num_pages"},
          "balloon target: 0x10000000 num_pages: 65536"),
    Event("virtio_mem_plug_request", "qemu", ("addr=0x{addr:x} nb_blocks={nb:u}",),
          {"event": "'virtio_mem_plug'", "gpa": "f_addr", "count": "f_nb"}, "addr=0x140000000 nb_blocks=1"),
    Event("virtio_mem_unplug_request", "qemu", ("addr=0x{addr:x} nb_blocks={nb:u}",),
          {"event": "'virtio_mem_unplug'", "gpa": "f_addr", "count": "f_nb"}, "addr=0x140000000 nb_blocks=1"),
    Event("virtio_mem_unplug_all_request", "qemu", ("",), {"event": "'virtio_mem_unplug_all'"}, ""),
    Event("ram_block_discard_range", "qemu", (
        "{rb:s}@{hva:p} + 0x{len:x}: madvise: {madv:d} fallocate: {falloc:d} ret: {ret:d}",),
        {"event": "'ram_block_discard_range'", "detail": "f_rb", "hva": "f_hva", "size": "f_len", "ret": "f_ret"},
        "pc.ram@0x7f8aefe00000 + 0x200000: madvise: 1 fallocate: 0 ret: 0"),
    Event("ram_discard_range", "qemu", ("{rb:s}: start: {start:x} {len:x}",),
          {"event": "'ram_discard_range'", "detail": "f_rb", "rb_offset": "f_start", "size": "f_len"},
          "pc.ram: start: 7ffc000 1000"),
    # --- vCPU activity and dirty tracking (accel/kvm, migration/ram.c) ---
    Event("kvm_run_exit", "vcpu_runs", ("cpu_index {cpu:d}, reason {reason:d}",),
          {"op": "'exit'", "vcpu": "f_cpu", "exit_reason": "f_reason"}, "cpu_index 0, reason 2"),
    Event("kvm_vcpu_ioctl", "vcpu_runs", ("cpu_index {cpu:d}, type 0x{type:x}, arg {arg:p}",),
          {"op": "'enter'", "vcpu": "f_cpu"}, "cpu_index 0, type 0xae80, arg (nil)", where=_IS_KVM_RUN),
    Event("kvm_clear_dirty_log", "dirty_log", ("slot#{slot:d} start 0x{start:x} size 0x{num:x}",),
          {"op": "'kvm_clear_dirty_log'", "as_id": "f_slot >> 16", "slot": "f_slot & 65535",
           "first_page": "f_start", "num_pages": "f_num"}, "slot#65537 start 0x0 size 0x40"),
    Event("kvm_dirty_ring_reap", "dirty_log", ("reaped {pages:u} pages (took {us:d} us)",),
          {"op": "'kvm_reset_dirty_rings'", "num_pages": "f_pages"}, "reaped 12 pages (took 5 us)"),
    Event("kvm_dirty_ring_page", "guest_accesses", ("vcpu {vcpu:d} fetch {fetch:u} offset 0x{offset:x}",),
          {"via": "'dirty_ring_push'", "vcpu": "f_vcpu", "page_offset": "f_offset"},
          "vcpu 0 fetch 17 offset 0x7ffc"),
    Event("migration_bitmap_sync_start", "qemu", ("",), {"event": "'bitmap_sync_start'"}, ""),
    Event("migration_bitmap_sync_end", "qemu", ("dirty_pages {n:u}",),
          {"event": "'bitmap_sync_end'", "count": "f_n"}, "dirty_pages 1234"),
    Event("migration_bitmap_clear_dirty", "qemu", ("rb {rb:s} start 0x{start:x} size 0x{size:x} page 0x{page:x}",),
          {"event": "'bitmap_clear_dirty'", "detail": "f_rb", "rb_offset": "f_start", "size": "f_size",
           "count": "f_page"}, "rb pc.ram start 0x0 size 0x40000 page 0x0"),
    # --- context for memslot changes (hw/pci/pci.c) ---
    Event("pci_cfg_write", "qemu", ("{dev:s} {bus:x}:{slot:x}.{fn:x} @0x{offset:x} <- 0x{value:x}",),
          {"event": "'pci_cfg_write'", "detail": "f_dev || ' ' || printf('%02x:%02x.%x', f_bus, f_slot, f_fn)",
           "cfg_offset": "f_offset", "cfg_value": "f_value"}, "vfio-pci 00:04.0 @0x4 <- 0x0"),
)

EVENTS = {e.name: e for e in CATALOGUE}
