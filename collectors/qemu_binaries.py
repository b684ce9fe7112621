"""What a QEMU executable is and which probes it offers, read from the file (never by running it).

A binary is known by its (device, inode): the same file under two paths, or two processes of one
build, is one binary; a copy is another. Its version comes from the "QEMU emulator version ..."
string that `--version` prints, which QEMU builds into .rodata. Its probes are its exported
functions (uprobes) and its `qemu` USDT notes (dtrace trace backend).
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from collectors import usdt

VERSION_PREFIX = b"QEMU emulator version "
VERSION_STRING = re.compile(rb"QEMU emulator version (\d+)\.(\d+)(\.\d+)?([^\n\x00]*)")


@dataclass
class QemuBinary:
    path: str                       # the path a traced process executes it under
    dev: int
    inode: int
    version: str | None             # "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    version_tuple: tuple[int, int] | None
    functions: dict[str, int] = field(default_factory=dict)   # exported symbol -> address
    usdt: dict[str, list[usdt.UsdtSite]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return self.dev, self.inode

    def in_version(self, since: tuple[int, int] | None, until: tuple[int, int] | None) -> bool | None:
        """Whether a probe that exists in versions [since, until) exists here; None if unknown."""
        if self.version_tuple is None:
            return None
        return (since is None or self.version_tuple >= since) and (until is None or self.version_tuple < until)


def file_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def read_version(path: str) -> tuple[str, tuple[int, int]] | None:
    """QEMU's version from its own --version string in the file, or None if the file has none."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(VERSION_PREFIX)  # a plain search: a regex scan of 18 MB takes 45 ms
            found = VERSION_STRING.match(m, at) if at >= 0 else None
            if not found:
                return None
            text = bytes(found.group(0))[len(b"QEMU emulator version "):].decode("utf-8", "replace").strip()
            return text, (int(found.group(1)), int(found.group(2)))
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
        return None


ELF64_SYM = np.dtype([("st_name", "<u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "<u2"),
                      ("st_value", "<u8"), ("st_size", "<u8")])
STT_FUNC = 2


def functions(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """Address of each of `names` that the binary defines as a function (.symtab, else .dynsym).

    The symbol table is read as one numpy array: QEMU has ~40k symbols, and a Python callback
    per symbol (bcc's enumeration) takes 100 ms, which a QEMU started after attach spends
    unprobed.
    """
    found: dict[str, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        tables = {sec.name: sec for sec in elf.iter_sections() if sec["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM")}
        for table in (".symtab", ".dynsym"):
            sec = tables.get(table)
            if sec is None or sec["sh_entsize"] != ELF64_SYM.itemsize:
                continue
            syms = np.frombuffer(sec.data(), ELF64_SYM)
            strtab = elf.get_section(sec["sh_link"]).data()
            defined = syms[((syms["st_info"] & 0xF) == STT_FUNC) & (syms["st_shndx"] != 0) & (syms["st_value"] != 0)]
            for name in names:
                if name in found:
                    continue
                at = strtab.find(b"\0" + name.encode() + b"\0")  # a name is NUL-delimited in the table
                hit = defined[defined["st_name"] == at + 1] if at >= 0 else defined[:0]
                if len(hit):
                    found[name] = int(hit[0]["st_value"])
    return found


def inspect(path: str, symbols: tuple[str, ...], *, force: bool = False) -> QemuBinary | None:
    """The binary at `path` with the `symbols` it exports and its qemu USDT probes.

    None when it is not a QEMU (no version string, no qemu USDT probe) unless `force` (--qemu).
    """
    dev, ino = file_key(path)
    version = read_version(path)
    probes = usdt.sites(path, "qemu")
    if version is None and not probes and not force:
        return None
    try:
        found = functions(path, symbols)
    except (OSError, ValueError, ELFError):  # not an ELF file we can read: no functions to probe
        found = {}
    return QemuBinary(path, dev, ino, version[0] if version else None, version[1] if version else None,
                      found, probes)
