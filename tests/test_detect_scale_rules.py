"""The shortcuts detection takes for scale (queries/views/pins.sql: ever_pinned) against the plain
definition they stand in for, on random ranges run through DuckDB: a shortcut may keep more rows
than the definition, never fewer."""

import numpy as np
import pyarrow as pa

from pipeline.runstore import RunWriter, open_run
from queries.runner import connect

MIB = 1 << 20
BASE = 0x7F0000000000


def _run_with_pins(path, rng, n_maps=40):
    # Pins of 4 KiB to 64 MiB, some overlapping, some touching, some across 2 MiB buckets.
    size = rng.choice([4096, 2 * MIB, 3 * MIB + 4096, 64 * MIB], n_maps).astype(np.uint64)
    vaddr = (BASE + rng.integers(0, 512, n_maps) * MIB + rng.integers(0, 512, n_maps) * 4096).astype(np.uint64)
    vaddr[1] = vaddr[0] + size[0]          # touching ranges
    n = n_maps
    with RunWriter(path, source="synthetic", kind="importer") as w:
        w.write("dma", {"ts_ns": np.arange(n, dtype=np.int64), "pid": np.full(n, 7, np.int32),
                        "tid": np.full(n, 7, np.int32), "comm": pa.repeat(pa.scalar("qemu"), n),
                        "source": pa.repeat(pa.scalar("synthetic"), n), "api": pa.repeat(pa.scalar("vfio_type1"), n),
                        "op": pa.repeat(pa.scalar("map"), n), "fd": np.full(n, 20, np.int32), "vaddr": vaddr,
                        "iova": vaddr - BASE, "size": size, "flags": np.full(n, 3, np.uint32),
                        "ret": np.zeros(n, np.int64)})
    return open_run(path)


def test_ever_pinned_keeps_every_row_over_a_pin(tmp_path):
    rng = np.random.default_rng(13)
    con = connect(_run_with_pins(tmp_path / "run", rng), include=["pins"])
    n = 50_000
    start = (BASE + rng.integers(0, 600 * MIB, n)).astype(np.uint64)
    length = rng.choice([0, 4096, 2 * MIB, 9 * MIB, 300 * MIB], n).astype(np.uint64)
    rows = pa.table({"id": np.arange(n), "hva_start": start, "hva_end": start + length})
    # Empty ranges, NULL ends and ranges ending exactly where a pin starts.
    pins = con.execute("SELECT vaddr_start, vaddr_end FROM dma_mappings").fetchall()
    edge = pa.table({"id": np.arange(n, n + 4), "hva_start": pa.array([pins[0][0], pins[0][0] + 8, pins[0][1], None], pa.uint64()),
                     "hva_end": pa.array([pins[0][0], pins[0][0] + 8, pins[0][1] + 4096, pins[0][1]], pa.uint64())})
    con.register("_rows", pa.concat_tables([rows, edge]))
    con.execute("CREATE TEMP TABLE probe AS FROM _rows")
    kept = {r[0] for r in con.execute("SELECT id FROM ever_pinned(probe)").fetchall()}
    defined = {r[0] for r in con.execute("""
        SELECT id FROM probe p
        WHERE EXISTS (SELECT 1 FROM dma_mappings m
                      WHERE ranges_overlap(p.hva_start, p.hva_end, m.vaddr_start, m.vaddr_end))""").fetchall()}
    assert defined and defined < set(range(n + 4))   # the case has rows on both sides
    assert defined <= kept
    # Beyond the definition it keeps only empty ranges where two pins touch (the merged range).
    extra = con.execute(f"SELECT count(*) FROM probe WHERE id IN ({','.join(map(str, kept - defined)) or 'NULL'}) "
                        "AND hva_end > hva_start").fetchone()[0]
    assert extra == 0
