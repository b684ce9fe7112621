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

from collectors import usdt

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
            found = VERSION_STRING.search(m)
            if not found:
                return None
            text = bytes(found.group(0))[len(b"QEMU emulator version "):].decode("utf-8", "replace").strip()
            return text, (int(found.group(1)), int(found.group(2)))
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
        return None


def inspect(path: str, symbols: tuple[str, ...], *, force: bool = False) -> QemuBinary | None:
    """The binary at `path` with the `symbols` it exports and its qemu USDT probes.

    None when it is not a QEMU (no version string, no qemu USDT probe) unless `force` (--qemu).
    """
    from bcc import BPF

    dev, ino = file_key(path)
    version = read_version(path)
    probes = usdt.sites(path, "qemu")
    if version is None and not probes and not force:
        return None
    pattern = ("^(" + "|".join(re.escape(s) for s in symbols) + ")$").encode()
    try:
        found = BPF.get_user_functions_and_addresses(path.encode(), pattern)
    except Exception:  # bcc: "Error N enumerating symbols" for a file without a symbol table
        found = []
    return QemuBinary(path, dev, ino, version[0] if version else None, version[1] if version else None,
                      {name.decode(): addr for name, addr in found}, probes)
