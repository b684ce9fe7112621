"""Each ring's C record struct (collectors/*.h) and its numpy dtype agree on size and every offset.

gcc compiles the very headers the BPF programs include and prints sizeof/offsetof for each field
the dtype names; natural alignment is the same for the BPF target and x86-64.
"""

import shutil
import subprocess

import pytest

from collectors.program import COLLECTORS, HERE

RINGS = [(c, r) for c in COLLECTORS for r in c.rings]


@pytest.mark.parametrize("collector, ring", RINGS, ids=[r.name for _, r in RINGS])
def test_c_struct_matches_numpy_dtype(tmp_path, collector, ring):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    fields = ring.dtype.names
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;\n"
        "typedef int32_t s32; typedef int64_t s64;\n"
        f'#include "{ring.header}"\n'
        "int main(void) {\n"
        f'    printf("@sizeof %zu\\n", sizeof(struct {ring.struct}));\n'
        + "".join(f'    printf("{f} %zu %zu\\n", offsetof(struct {ring.struct}, {f}), '
                  f'sizeof(((struct {ring.struct} *)0)->{f}));\n' for f in fields)
        + "    return 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run(["gcc", f"-I{HERE}", "-o", str(exe), str(src)], check=True)
    out = dict(line.split(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                            check=True).stdout.splitlines())
    assert int(out.pop("@sizeof")) == ring.dtype.itemsize
    for f in fields:
        offset, size = map(int, out[f].split())
        assert (offset, size) == (ring.dtype.fields[f][1], ring.dtype.fields[f][0].itemsize), f


def test_every_qemu_function_has_its_uprobe_handler():
    import re

    from collectors.qemu import FUNCTIONS

    handlers = {int(n) for n in re.findall(r"QEMU_FN\((\d+)\)", (HERE / "qemu.bpf.c").read_text())}
    assert set(range(len(FUNCTIONS))) <= handlers
