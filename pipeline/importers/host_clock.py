"""Wall clock to CLOCK_MONOTONIC through the run's own collector sessions.

A collector records, at its start and at its stop, CLOCK_REALTIME and CLOCK_MONOTONIC of the host
it ran on (session `realtime_start_ns` / `monotonic_start_ns`, and the same at the end). A
wall-clock log whose times fall inside such a session's wall-clock span was written on that host
while it traced (`vmemtrace collect -- CMD` around the QEMU that wrote it): the session's offset
turns its times into the run's clock. The offset can move while the session runs (NTP slews the
wall clock, a step moves it), so the residual is how far the start and stop offsets disagree.
This is weaker than matching the same ioctls line by line (memslots), which comes first; a log
from another host at the same time would be misaligned by the two hosts' clock difference.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionOffset:
    offset_ns: int    # monotonic = wall clock - offset_ns
    residual_ns: int  # how far the session's stop offset is from its start offset
    session: int      # the collector session the offset comes from


def offset_from_collector_sessions(manifest: dict, first_ns: int, last_ns: int) -> SessionOffset | None:
    """The offset of the collector session whose wall-clock span holds [first_ns, last_ns], or
    None when no session's span holds it whole. Sessions still being written or without both
    clocks (runs written before they were recorded) are skipped."""
    fits = []
    for s in manifest.get("sessions", []):
        if s.get("kind") != "collector" or s.get("clock", {}).get("domain") != "monotonic":
            continue
        keys = ("realtime_start_ns", "monotonic_start_ns", "realtime_end_ns", "monotonic_end_ns")
        if any(s.get(k) is None for k in keys):
            continue
        rt0, mono0, rt1, mono1 = (int(s[k]) for k in keys)
        if rt0 <= first_ns and last_ns <= rt1:
            start, end = rt0 - mono0, rt1 - mono1
            fits.append(SessionOffset(start, abs(end - start), int(s["session"])))
    # Two sessions can hold the log (a run collected twice over the same time is refused by the
    # run lock, but wall clocks can step back): the steadiest offset is the one to trust.
    return min(fits, key=lambda f: f.residual_ns, default=None)
