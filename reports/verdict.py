"""The answer at the top of the report: the worst severity found, the detectors that could not
judge and why, and what was traced (processes, QEMU binaries, where and for how long)."""

from __future__ import annotations

from typing import Any

from pipeline.schema import SEVERITIES


def detector_judgement(status: dict) -> tuple[str, str]:
    """(class, text) of one detector status: "ran"; "n/a" for lack of input; "no-relevant" when it
    ran over tables with rows but none of the kinds it reasons about; "error"."""
    st = status["status"]
    if st == "error":
        return "error", f"error: {status.get('error') or 'see detect output'}"
    if st.startswith("not run"):
        needs = "; ".join(status.get("missing") or [])
        return "n/a", f"not applicable: the run has no {needs}" if needs else "not applicable"
    if status.get("outcome") == "no relevant events":
        what = "; ".join(status.get("relevant_missing") or [])
        return "no-relevant", f"ran: no relevant events{f' (none of {what})' if what else ''}"
    return "ran", st


def qemu_binaries(sessions: list[dict]) -> list[dict]:
    """QEMU executables traced, from sessions' traced.qemu_binaries; sessions that only give a
    qemu_version (older runs) count as one binary of unknown path."""
    out: dict[tuple, dict] = {}
    for s in sessions:
        traced = s.get("traced") or {}
        bins = traced.get("qemu_binaries") or []
        for b in bins:
            probes = b.get("probes") or {}
            key = (b.get("path"), b.get("version"))
            entry = out.setdefault(key, {"path": b.get("path") or "unknown", "version": b.get("version") or "unknown",
                                         "usdt": 0, "uprobe": 0, "missing": []})
            for name, how in probes.items():
                if how == "missing":
                    entry["missing"].append(name)
                elif how in ("usdt", "uprobe"):
                    entry[how] += 1
        version = traced.get("qemu_version") or s.get("qemu_version")
        if not bins and version:
            out.setdefault((None, version), {"path": "(path not recorded)", "version": version, "usdt": 0, "uprobe": 0,
                                             "missing": [m.split(":")[-1] for m in s.get("missing", [])
                                                         if m.startswith(("uprobe:", "usdt:"))]})
    return list(out.values())


def provenance(manifest: dict, sessions: list[dict]) -> list[dict]:
    """Where each session's events come from: traced.host/kernel where the session says, the
    collecting machine for collectors, "unknown" for imports that do not say (never the
    importing machine)."""
    host = manifest.get("host", {})
    rows = []
    for s in sessions:
        traced = s.get("traced") or {}
        own = s.get("kind") == "collector"
        rows.append({"session": s.get("session"), "source": s.get("source"), "kind": s.get("kind"),
                     "host": traced.get("host") or (host.get("hostname") if own else None) or "unknown",
                     "kernel": traced.get("kernel") or (host.get("kernel") if own else None) or "unknown"})
    return rows


def collection_ns(sessions: list[dict]) -> int | None:
    """How long the collectors ran (sum over collector sessions), None for import-only runs."""
    spans = [s["monotonic_end_ns"] - s["monotonic_start_ns"] for s in sessions
             if s.get("kind") == "collector" and s.get("monotonic_start_ns") and s.get("monotonic_end_ns")]
    return sum(spans) if spans else None


def verdict(manifest: dict, statuses: list[dict], counts: dict[str, int]) -> dict[str, Any]:
    worst = next((s for s in SEVERITIES if counts.get(s)), None)
    judged = [{**s, "judgement": detector_judgement(s)} for s in statuses]
    sessions = manifest.get("sessions", [])
    by_worst = sorted((s for s in judged if s["judgement"][0] == "ran" and s.get("findings")),
                      key=lambda s: min(SEVERITIES.index(k) for k, v in s["by_severity"].items() if v))
    return {
        "worst": worst,
        "worst_count": counts.get(worst, 0) if worst else 0,
        "worst_detectors": [s["id"] for s in by_worst if s["by_severity"].get(worst)],
        "headline": (f"{counts[worst]} {worst} finding{'s' if counts[worst] != 1 else ''}" if worst
                     else "no findings at or above info"),
        "cannot_judge": [s for s in judged if s["judgement"][0] != "ran"],
        "detectors": judged,
        "qemu_binaries": qemu_binaries(sessions),
        "provenance": provenance(manifest, sessions),
        "collection_ns": collection_ns(sessions),
    }
