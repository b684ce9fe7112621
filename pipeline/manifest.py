"""manifest.json: what a run holds and how each session that wrote it went. One shape for all writers.

    {"format": "vmemtrace-run", "schema_version": 2, "created": "...",
     "host": {"hostname", "kernel", "machine"},          # the machine that created the run directory
     "families": {family: {"rows": n, "chunks": n}},
     "lost": {name: n}, "next_event_id": n,
     "sessions": [session, ...]}

A session (one collector or importer invocation):

    session, source, kind ("collector" | "importer"), state ("running" | "clean" | "unclean"),
    writer {pid, boot_id}, tools {...}, monotonic/realtime start/end ns, rows {family: n}, lost {name: n},
    clock    {"domain": "monotonic" | "realtime" | "relative" | "untimed", "source": str,
              "alignment": "none" | "given" | "memslots" | "host", "offset_ns": int|null,
              "residual_ns": int|null, "matched_events": int}
    traced   {"host", "kernel", "qemu_version", "qemu_binaries": [{"path", "version",
              "probes": {name: "usdt" | "uprobe" | "missing"}}]}   ("unknown" where not said)
    inputs   [{"path", "sha256", "bytes"}]              (importers: the files read)
    non_trace_lines {"count": n, "first": [line numbers]}
    unknown_events  {event name: n}
    stopped  {"reason": str, "file": str}               (why a session ended early, e.g. disk full)
plus any other key a writer adds about itself (attached probes, filters, pid_from ...).

`lost` keys (and lost_events.family) name a family when the loss belongs to one family, otherwise
the source that lost it: an importer's name ("ftrace", "qemu-log": lines it could not use) or, for
a collector ring shared by several families, those families joined by "+" ("discards+dma").

Manifests of schema v1 (clock as a string, clock dicts without a domain, alignment "native" /
"unaligned") are normalised on read and on write, so old runs open and old writers keep working.
"""

from __future__ import annotations

import platform
import re
import socket
import time
from typing import Any

from pipeline.errors import ManifestError
from pipeline.schema import FAMILIES, FAMILY_BY_NAME, SCHEMA_VERSION

MANIFEST = "manifest.json"
RUN_FORMAT = "vmemtrace-run"

KINDS = ("collector", "importer")
STATES = ("running", "clean", "unclean")
CLOCK_DOMAINS = ("monotonic", "realtime", "relative", "untimed")
ALIGNMENTS = ("none", "given", "memslots", "host")
PROBE_KINDS = ("usdt", "uprobe", "missing")
INT64_MAX = (1 << 63) - 1

# v1 alignment names: (alignment now, domain of the stored times)
_OLD_ALIGNMENT = {"native": ("none", "monotonic"), "unaligned": ("none", "relative")}


def new_manifest() -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"hostname": socket.gethostname(), "kernel": platform.release(),
                 "machine": platform.machine()},
        "sessions": [],
        "families": {f.name: {"rows": 0, "chunks": 0} for f in FAMILIES},
        "lost": {},
        "next_event_id": 1,
    }


def clock(domain: str, source: str, alignment: str = "none", *, offset_ns: int | None = None,
          residual_ns: int | None = None, matched_events: int = 0) -> dict[str, Any]:
    """A session's clock entry, checked."""
    c = {"domain": domain, "source": source, "alignment": alignment, "offset_ns": offset_ns,
         "residual_ns": residual_ns, "matched_events": matched_events}
    _check_clock(c, MANIFEST, "clock")
    return c


def normalise_clock(value: Any) -> Any:
    """A v1 clock (a string, or a dict without `domain`) in the current shape; others unchanged."""
    if isinstance(value, str):
        return {"domain": "monotonic", "source": value, "alignment": "none", "offset_ns": None,
                "residual_ns": None, "matched_events": 0}
    if isinstance(value, dict) and "domain" not in value:
        alignment = value.get("alignment", "none")
        alignment, domain = _OLD_ALIGNMENT.get(alignment, (alignment, "monotonic"))
        return {"domain": domain, "source": value.get("source", "unknown"), "alignment": alignment,
                "offset_ns": value.get("offset_ns"), "residual_ns": value.get("residual_ns"),
                "matched_events": value.get("matched_events", 0)}
    return value


def normalise(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest in the current shape (in place, and returned)."""
    for s in manifest.get("sessions", []) if isinstance(manifest.get("sessions"), list) else []:
        if isinstance(s, dict) and "clock" in s:
            s["clock"] = normalise_clock(s["clock"])
    if isinstance(manifest.get("families"), dict):
        for f in FAMILIES:  # families added by a later schema version
            manifest["families"].setdefault(f.name, {"rows": 0, "chunks": 0})
    return manifest


# -- validation ----------------------------------------------------------------------------------

def _fail(path, field: str, message: str):
    raise ManifestError(path, field, message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d: dict, key: str, path, where: str, *, lo: int = 0, hi: int = INT64_MAX, null: bool = False) -> None:
    v = d.get(key)
    if v is None and null:
        return
    if not _is_int(v) or not lo <= v <= hi:
        _fail(path, f"{where}{key}", f"is {v!r}, expected an integer {lo}..{hi}" + (" or null" if null else ""))


def _str(d: dict, key: str, path, where: str, *, choices: tuple[str, ...] = (), null: bool = False) -> None:
    v = d.get(key)
    if v is None and null:
        return
    if not isinstance(v, str) or (choices and v not in choices):
        want = f"one of {', '.join(choices)}" if choices else "a string"
        _fail(path, f"{where}{key}", f"is {v!r}, expected {want}" + (" or null" if null else ""))


def _dict(v: Any, path, field: str) -> dict:
    if not isinstance(v, dict):
        _fail(path, field, f"is {type(v).__name__}, expected an object")
    return v


def _counts(v: Any, path, field: str) -> None:
    for k, n in _dict(v, path, field).items():
        if not _is_int(n) or n < 0:
            _fail(path, f"{field}.{k}", f"is {n!r}, expected a count (integer >= 0)")


_LOST_NAME = re.compile(r"[A-Za-z0-9_.:+\-/]{1,200}")


def _lost(v: Any, path, field: str) -> None:
    _counts(v, path, field)
    for k in v:
        if not _LOST_NAME.fullmatch(k):
            _fail(path, f"{field}.{k}", "is not a family or source name")


def _check_clock(c: Any, path, field: str) -> None:
    _dict(c, path, field)
    w = field + "."
    _str(c, "domain", path, w, choices=CLOCK_DOMAINS)
    _str(c, "source", path, w)
    _str(c, "alignment", path, w, choices=ALIGNMENTS)
    _int(c, "offset_ns", path, w, lo=-INT64_MAX, null=True)
    _int(c, "residual_ns", path, w, lo=0, null=True)
    _int(c, "matched_events", path, w)


def _check_traced(t: Any, path, field: str) -> None:
    _dict(t, path, field)
    w = field + "."
    _str(t, "host", path, w)
    _str(t, "kernel", path, w)
    _str(t, "qemu_version", path, w, null=True)
    bins = t.get("qemu_binaries", [])
    if not isinstance(bins, list):
        _fail(path, w + "qemu_binaries", "expected a list")
    for i, b in enumerate(bins):
        bw = f"{w}qemu_binaries[{i}]."
        _dict(b, path, bw[:-1])
        _str(b, "path", path, bw)
        _str(b, "version", path, bw, null=True)
        for name, kind in _dict(b.get("probes", {}), path, bw + "probes").items():
            if kind not in PROBE_KINDS:
                _fail(path, f"{bw}probes.{name}", f"is {kind!r}, expected one of {', '.join(PROBE_KINDS)}")


def _check_session(s: Any, i: int, path) -> None:
    field = f"sessions[{i}]"
    _dict(s, path, field)
    w = field + "."
    _int(s, "session", path, w, lo=i + 1, hi=i + 1)
    _str(s, "source", path, w)
    _str(s, "kind", path, w, choices=KINDS)
    _str(s, "state", path, w, choices=STATES)
    writer = _dict(s.get("writer"), path, w + "writer")
    _int(writer, "pid", path, w + "writer.")
    _counts(s.get("rows", {}), path, w + "rows")
    _lost(s.get("lost", {}), path, w + "lost")
    if "clock" in s:
        _check_clock(s["clock"], path, w + "clock")
    if "traced" in s:
        _check_traced(s["traced"], path, w + "traced")
    if "inputs" in s:
        if not isinstance(s["inputs"], list):
            _fail(path, w + "inputs", "expected a list")
        for j, inp in enumerate(s["inputs"]):
            iw = f"{w}inputs[{j}]."
            _dict(inp, path, iw[:-1])
            _str(inp, "path", path, iw)
            if not isinstance(inp.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", inp["sha256"]):
                _fail(path, iw + "sha256", f"is {inp.get('sha256')!r}, expected 64 hex digits")
            _int(inp, "bytes", path, iw)
    if "non_trace_lines" in s:
        ntl = _dict(s["non_trace_lines"], path, w + "non_trace_lines")
        _int(ntl, "count", path, w + "non_trace_lines.")
        first = ntl.get("first", [])
        if not isinstance(first, list) or not all(_is_int(n) and n > 0 for n in first):
            _fail(path, w + "non_trace_lines.first", "expected a list of line numbers")
    if "unknown_events" in s:
        _counts(s["unknown_events"], path, w + "unknown_events")
    if "stopped" in s:
        _str(_dict(s["stopped"], path, w + "stopped"), "reason", path, w + "stopped.")


def validate(manifest: Any, path=MANIFEST) -> None:
    """Raise ManifestError naming the first field that is not as documented above."""
    m = _dict(manifest, path, "(top level)")
    if m.get("format") != RUN_FORMAT:
        _fail(path, "format", f"is {m.get('format')!r}, expected {RUN_FORMAT!r}")
    if not _is_int(m.get("schema_version")):
        _fail(path, "schema_version", "is missing or not an integer")
    families = _dict(m.get("families"), path, "families")
    for name, f in families.items():
        if name not in FAMILY_BY_NAME:
            _fail(path, f"families.{name}", "is not an event family")
        _counts(f, path, f"families.{name}")
    _lost(m.get("lost", {}), path, "lost")
    _int(m, "next_event_id", path, "", lo=1)
    sessions = m.get("sessions")
    if not isinstance(sessions, list):
        _fail(path, "sessions", "expected a list")
    for i, s in enumerate(sessions):
        _check_session(s, i, path)
