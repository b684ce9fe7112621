"""`vmemtrace export perfetto`: the trace decoded back with the protos the perfetto package ships and
checked against the run (tracks, counts, finding flows) - on the bundled real KVM boot run (real
memslot churn, D4 findings) and on the demo run (DMA mappings, D1 findings) - and loaded in
trace_processor where its shell can be had."""

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from pipeline.runstore import open_run
from queries.runner import connect
from reports.perfetto import MAX_FLOWS_PER_FINDING
from tests.conftest import FIXTURES

TE = pb.TrackEvent


def export(cli, tmp_path: Path, run: Path) -> tuple[Path, pb.Trace]:
    out = tmp_path / "trace.pftrace"
    res = cli("export", "perfetto", run, "-o", out)
    assert res.exit_code == 0, res.stdout
    assert res.stdout.strip() == str(out)
    return out, pb.Trace.FromString(out.read_bytes())


class Decoded:
    """Tracks, events and flows of a decoded trace."""

    def __init__(self, trace: pb.Trace):
        self.tracks = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet
                       if p.HasField("track_descriptor")}
        self.events = [(p.timestamp, p.track_event) for p in trace.packet if p.HasField("track_event")]
        self.process_of = {u: d.process.pid for u, d in self.tracks.items() if d.HasField("process")}

    def args(self, te) -> dict:
        return {a.name: (a.int_value if a.HasField("int_value") else a.string_value if a.HasField("string_value")
                         else a.bool_value) for a in te.debug_annotations}

    def track_key(self, uuid: int) -> tuple:
        d = self.tracks[uuid]
        return (self.process_of.get(d.parent_uuid), d.name)

    def instants(self) -> Counter:
        return Counter(self.track_key(te.track_uuid) for _, te in self.events if te.type == TE.TYPE_INSTANT)

    def slices(self, prefix: str) -> list[tuple[int, int, dict, object]]:
        """(begin, end, args, begin event) of every slice on tracks whose name starts with prefix;
        asserts that slices on one track never overlap (Perfetto needs them nested)."""
        open_, out = {}, []
        for ts, te in sorted(self.events, key=lambda e: e[0]):
            if not self.tracks[te.track_uuid].name.startswith(prefix):
                continue
            if te.type == TE.TYPE_SLICE_BEGIN:
                assert te.track_uuid not in open_, "overlapping slices on one track"
                open_[te.track_uuid] = (ts, te)
            elif te.type == TE.TYPE_SLICE_END:
                begin, bte = open_.pop(te.track_uuid)
                out.append((begin, ts, self.args(bte), bte))
        assert not open_
        return out


@pytest.fixture
def kvm_boot(tmp_path):
    shutil.copytree(FIXTURES / "real" / "kvm-boot" / "run", tmp_path / "run")
    return tmp_path / "run"


def test_real_kvm_boot_run_decodes_to_its_processes_families_memslots_and_findings(kvm_boot, tmp_path, cli):
    _, trace = export(cli, tmp_path, kvm_boot)
    t = Decoded(trace)
    run = open_run(kvm_boot)
    con = connect(run)

    # One process track per traced process, a child track per family with one instant per event.
    rows = con.execute("SELECT pid, family, count(*) FROM event_labels GROUP BY ALL").fetchall()
    assert set(t.process_of.values()) == {pid for pid, _, _ in rows if pid}
    assert t.instants() == Counter({(pid or None, fam): n for pid, fam, n in rows})
    assert sum(n for _, _, n in rows) == sum(run.row_counts().values()) > 1000

    # Memslot periods as slices with their ranges, one per memslot_timeline row.
    periods = con.execute("SELECT event_id, gpa_start, gpa_end, valid_from FROM memslot_timeline").fetchall()
    slices = t.slices("memslot ")
    assert sorted((a["event_id"], a["gpa"], b) for b, _, a, _ in slices) == \
        sorted((e, f"0x{g0:x}-0x{g1:x}", v) for e, g0, g1, v in periods)
    assert len(periods) > 10

    # Each finding a slice on its detector's track, with a flow to each evidence event.
    findings = pq.read_table(kvm_boot / "findings" / "findings.parquet").to_pylist()
    timed = [f for f in findings if f["ts_start_ns"] is not None]
    found = {a["finding_id"]: (b, e, bte) for b, e, a, bte in t.slices("findings: ")}
    assert set(found) == {f["finding_id"] for f in timed}
    assert any(f["detector"] == "D4" for f in timed)
    ends = {fl: t.args(te)["event_id"] for _, te in t.events for fl in te.terminating_flow_ids}
    for f in timed:
        begin, end, bte = found[f["finding_id"]]
        assert (begin, end) == (f["ts_start_ns"], f["ts_end_ns"])
        assert len(bte.flow_ids) == min(len(set(f["event_ids"])), MAX_FLOWS_PER_FINDING)
        assert {ends[fl] for fl in bte.flow_ids} <= set(f["event_ids"])


def test_demo_run_dma_mappings_are_slices_from_the_view(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("import", "jsonl", FIXTURES / "demo" / "vfio-balloon.jsonl", "--run", run).exit_code == 0
    _, trace = export(cli, tmp_path, run)
    t = Decoded(trace)
    con = connect(open_run(run))
    maps = con.execute("SELECT event_id, unmap_event_id, mapped_ns, iova_start, iova_end FROM dma_mappings").fetchall()
    slices = t.slices("DMA mappings")
    assert sorted((a["map_event_id"], a.get("unmap_event_id"), b, a["iova"]) for b, _, a, _ in slices) == \
        sorted((e, u, m, f"0x{i0:x}-0x{i1:x}") for e, u, m, i0, i1 in maps)
    d1 = [a for _, _, a, _ in t.slices("findings: D1")]
    assert d1 and all(a["gpa"] for a in d1)
    flows = defaultdict(int)
    for _, te in t.events:
        for fl in te.terminating_flow_ids:
            flows[fl] += 1
    assert flows and set(flows.values()) == {1}  # every flow ends on exactly one evidence event


def _trace_processor_shell() -> str | None:
    """A trace_processor_shell already on this machine (PATH or perfetto's download cache)."""
    found = shutil.which("trace_processor_shell") or shutil.which("trace_processor")
    if found:
        return found
    cache = Path.home() / ".local" / "share" / "perfetto" / "prebuilts"
    return next((str(p) for p in cache.glob("trace_processor_shell*") if not p.name.endswith(".tmp")), None)


def test_trace_processor_loads_the_export(kvm_boot, tmp_path, cli):
    shell = _trace_processor_shell()
    if shell is None:
        # The perfetto package downloads trace_processor_shell from Google's storage at first use;
        # this machine reaches only the package registries, and no registry package ships it.
        pytest.skip("trace_processor_shell is not on this machine and cannot be downloaded here")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    out, trace = export(cli, tmp_path, kvm_boot)
    t = Decoded(trace)
    tp = TraceProcessor(trace=str(out), config=TraceProcessorConfig(bin_path=shell))
    try:
        n_slices = next(iter(tp.query("SELECT count(*) AS n FROM slice"))).n
        n_flows = next(iter(tp.query("SELECT count(*) AS n FROM flow"))).n
        pids = {r.pid for r in tp.query("SELECT pid FROM process WHERE pid > 0")}
    finally:
        tp.close()
    assert n_slices == sum(1 for _, te in t.events if te.type in (TE.TYPE_SLICE_BEGIN, TE.TYPE_INSTANT))
    assert n_flows == sum(len(te.flow_ids) for _, te in t.events)
    assert pids == set(t.process_of.values())


def test_overlapping_findings_beyond_the_lane_cap_become_instants(tmp_path, cli):
    """50 findings whose windows all overlap (D1 windows run from the DMA map to each discard):
    MAX_LANES slice tracks, the rest instants on an overflow track, all with their flows."""
    from reports.perfetto import MAX_LANES, export_perfetto
    from tests.test_report_page import synthetic_findings

    run_dir = tmp_path / "run"
    assert cli("import", "jsonl", FIXTURES / "demo" / "vfio-balloon.jsonl", "--run", run_dir).exit_code == 0
    run = open_run(run_dir)
    ids = run.read_family("discards").column("event_id").to_pylist()
    findings = synthetic_findings(50, ids, 1_000_000, 1_000_100)
    findings = findings.set_column(findings.schema.get_field_index("ts_end_ns"), "ts_end_ns",
                                   pa.array([12_000_000] * 50, pa.int64()))
    done = export_perfetto(run, findings, tmp_path / "t.pftrace")
    t = Decoded(pb.Trace.FromString((tmp_path / "t.pftrace").read_bytes()))
    slices = t.slices("findings: D1")
    overflow = [te for _, te in t.events if t.tracks[te.track_uuid].name == "findings: D1 (overflow)"]
    assert len(slices) == MAX_LANES and len(overflow) == 50 - MAX_LANES
    assert {a["finding_id"] for _, _, a, _ in slices} | \
        {t.args(te)["finding_id"] for te in overflow} == set(findings.column("finding_id").to_pylist())
    assert all(t.args(te)["end_ns"] == 12_000_000 and te.flow_ids for te in overflow)
    assert len([u for u, d in t.tracks.items() if d.name.startswith("findings: D1")]) == MAX_LANES + 1
    assert done["flows"] == sum(len(te.flow_ids) for _, te in t.events)
