"""parse_hex (numpy over the string buffer) against Python's int(s, 16) on many strings."""

import random
import re

import pyarrow as pa

from pipeline.importers.ftrace_template import parse_hex

HEX = re.compile(r"(?:0x)?[0-9a-fA-F]+")


def reference(s: str) -> int | None:
    if not HEX.fullmatch(s):
        return None
    value = int(s, 16)
    return value if value < 2 ** 64 else None


def test_parse_hex_agrees_with_python():
    rng = random.Random(7)
    alphabet = "0123456789abcdefABCDEFxXg -é\t"
    cases = ["0x1", "ff", "0xffffffffffffffff", "0x10000000000000000", "", "0x", "0x0x1", "x1", "0X1",
             "0" * 30 + "1", "0x" + "0" * 30 + "ffffffffffffffff", "0x" + "0" * 30 + "1ffffffffffffffff", "é1", "1é"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(5000)]
    cases += [rng.choice(["0x", ""]) + "0" * rng.randint(0, 8) + f"{rng.getrandbits(rng.randint(1, 68)):x}"
              for _ in range(5000)]
    for arr in (pa.array(cases), pa.array(["pad", *cases]).slice(1)):
        values, ok = parse_hex(arr)
        got = [v if good else None for v, good in zip(values.to_pylist(), ok)]
        assert got == [reference(s) for s in cases]
    assert sum(ok) > 5000   # the valid ones are many, not a corner
