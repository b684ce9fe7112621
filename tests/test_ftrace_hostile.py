"""Hostile input (issue #12): generated lines never crash the importer, never become a wrong event, and
each is either reported with its line number or counted (non-trace, header, unknown event...)."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.constants import PID_MAX_LIMIT
from pipeline.importers import TraceFormatError
from pipeline.importers.ftrace import import_ftrace
from pipeline.importers.ftrace_events import EVENTS
from pipeline.runstore import open_run

GOOD = [  # (line, family, the row's values): the lines the hostile ones are mixed into
    ("       CPU 5/KVM-4145    [002] .....    86.581928: kvm_page_fault: vcpu 5 rip 0x7f08a4602116 address "
     "0x0000000113600002 error_code 0x181", "guest_accesses", {"gpa": 0x113600002, "vcpu": 5, "tid": 4145}),
    ("  qemu-system-x86-8397    [002] .....  1404.389384: kvm_tdp_mmu_spte_changed: as id 0 gfn 99 level 1 "
     "old_spte 600000455299b77 new_spte 5a0", "guest_accesses", {"gpa": 0x99000, "pfn": None, "tid": 8397}),
    ("        CPU 0/KVM-3046  [051] .... 63113.338894: map: IOMMU: iova=0x00000000f8000000 "
     "paddr=0x00000000fa000000 size=24576", "dma", {"iova": 0xF8000000, "paddr": 0xFA000000, "size": 24576}),
]
KNOWN = sorted(EVENTS)
PREFIX = "  qemu-1000  [000] ....  100.000001: "

garbage = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d"
                                         "\x1e\x85\u2028\u2029"), max_size=120)
numbers = st.one_of(st.integers(-2**70, 2**70).map(str), st.integers(0, 2**80).map(hex),
                    st.text(alphabet=string.hexdigits + "x-", min_size=1, max_size=24))
# a known event with arguments that are not its format (words dropped, fields replaced by junk)
known_bad = st.builds(lambda e, args: f"{PREFIX}{e}: {args}", st.sampled_from(KNOWN),
                      st.lists(st.one_of(numbers, st.sampled_from(["gfn", "level", "IOMMU:", "zz", "(", ")"])),
                               max_size=6).map(" ".join))
# the line prefix itself damaged: a thread id, CPU or time that is no number of its kind (huge, signed, hex)
# ('comm--1' is thread 1 of a comm ending in '-': a sign before a thread id is no damage)
not_a_tid = numbers.filter(lambda s: not (s.lstrip("-").isdigit() and len(s.lstrip("-")) <= 10
                                          and int(s.lstrip("-")) < PID_MAX_LIMIT))
not_a_cpu = numbers.filter(lambda s: not (s.isdigit() and len(s) <= 6))
not_a_time = numbers.filter(lambda s: not (s.isdigit() and len(s) <= 18))
fields = st.tuples(st.integers(1, 99999).map(str), st.integers(0, 64).map(str), st.just("100.000001"))
broken = st.one_of(st.tuples(st.just(0), not_a_tid), st.tuples(st.just(1), not_a_cpu), st.tuples(st.just(2), not_a_time))
bad_prefix = st.builds(lambda comm, f, wb: "{}-{} [{}] .... {}: kvm_mmio: mmio write len 4 gpa 0x1000 val 0x0"
                       .format(comm, *(wb[1] if i == wb[0] else v for i, v in enumerate(f))),
                       st.text(alphabet=string.ascii_letters + " -/<>.", min_size=1, max_size=20), fields, broken)
# random text can only be taken for an imported event if it names one: leave those to the strategies above
free_text = garbage.filter(lambda t: not any(f"{e}:" in t for e in KNOWN))
hostile = st.one_of(free_text, known_bad, bad_prefix)


def _rows(run_dir):
    run = open_run(run_dir)
    return {f: run.read_family(f).to_pylist() for f, n in run.row_counts().items() if n}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(hostile, min_size=1, max_size=8), seed=st.integers(0, 2))
def test_hostile_lines(tmp_path_factory, bad, seed):
    tmp = tmp_path_factory.mktemp("hostile")
    good_line, family, values = GOOD[seed]
    lines = [good_line, *bad, good_line]
    trace = tmp / "trace.txt"
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")
    n_lines = len(trace.read_text(encoding="utf-8").splitlines())
    try:
        import_ftrace([trace], tmp / "strict")
    except TraceFormatError as e:  # a refusal names the file and a line among the hostile ones
        where = str(e)[len(str(trace)) + 1:].split(":")[0]
        assert str(e).startswith(f"{trace}:") and (where == "0" or 2 <= int(where) <= n_lines - 1), str(e)
        assert not (tmp / "strict").exists()
    res = import_ftrace([trace], tmp / "lenient", skip_bad=True)
    rows = _rows(tmp / "lenient")
    # never a wrong event: the good lines' rows, and none from the hostile lines
    assert set(rows) <= {family, "lost_events"}
    assert len(rows[family]) == 2 and all({k: r[k] for k in values} == values for r in rows[family])
    # every line accounted for: parsed, counted by kind, or reported as bad with its line number
    s = open_run(tmp / "lenient").manifest["sessions"][0]
    acct = s["ftrace"]["lines"]
    assert acct["read"] == n_lines == sum(v for k, v in acct.items() if k != "read")
    events_accounted = (2 + sum(s["unknown_events"].values()) + res["bad"]
                        + sum(s["ftrace"]["context_events"].values()))
    assert acct["event"] >= 2 and events_accounted >= acct["event"]
    assert all(int(b[len(str(trace)) + 1:].split(":")[0]) in range(2, n_lines) for b in s.get("bad_lines", []))
