"""The run-trust detector on facts that live in the manifest: unclean stops, probes the host
lacked, clock alignment of imported logs."""

import json

from pipeline.importers.qemu_log import import_qemu_log
from pipeline.runstore import RunWriter
from tests.conftest import FIXTURES


def test_unclean_missing_probes_and_clock(tmp_path, cli):
    run = tmp_path / "run"
    w = RunWriter(run, source="bpf", kind="collector", info={"missing": ["kvm:kvm_age_hva", "uprobe:/q:f"]})
    w.write("discards", {"ts_ns": [1], "pid": [1], "tid": [1], "comm": ["x"], "source": ["bpf:discards"],
                         "syscall": ["madvise"], "hva_start": [0], "size": [4096], "advice": [4]})
    w.flush()  # the writer is never closed: as if killed ...
    del w  # ... and gone, with the writer lock it held
    m = json.loads((run / "manifest.json").read_text())
    m["sessions"][0]["writer"]["pid"] = 2**22 + 12345  # no such process
    (run / "manifest.json").write_text(json.dumps(m))
    import_qemu_log([FIXTURES / "qemu-log" / "formats.log"], run)  # no kernel memslots: stays on wall clock

    res = cli("detect", run, "--json", "-D", "I")
    findings = {f["kind"]: f for f in json.loads(res.stdout)}
    assert set(findings) == {"unclean_stop", "missing_probes", "clock_alignment"}
    assert all(f["severity"] == "info" for f in findings.values())
    assert "Session 1 (collector bpf) stopped uncleanly" in findings["unclean_stop"]["message"]
    assert "2 probe(s) this host lacks: kvm:kvm_age_hva, uprobe:/q:f" in findings["missing_probes"]["message"]
    assert "keeps its realtime clock's times, not CLOCK_MONOTONIC" in findings["clock_alignment"]["message"]
