"""When two findings are the same finding: one definition, used by the report's run comparison and
by `detect --baseline` (known findings reported, not failed)."""

from __future__ import annotations

import json
from pathlib import Path

KEY_FIELDS = ("detector", "kind", "comm", "gpa_start", "gpa_end", "iova_start", "iova_end")


class BaselineError(ValueError):
    """A baseline file that is not a `vmemtrace detect --json` output; the message names file and entry."""


def comparison_key(f: dict) -> tuple:
    """What makes two findings of different runs the same finding: event ids and host addresses
    change from run to run, guest-physical and device addresses do not."""
    return tuple(f[k] for k in KEY_FIELDS)


def load_baseline(path: Path) -> set[tuple]:
    """The comparison keys of the findings in a previous `vmemtrace detect --json` output."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BaselineError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise BaselineError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise BaselineError(f"{path}: expected the JSON array `vmemtrace detect --json` prints")
    keys = set()
    for i, f in enumerate(data):
        missing = [k for k in KEY_FIELDS if not isinstance(f, dict) or k not in f]
        if missing:
            raise BaselineError(f"{path}: entry {i}: field {missing[0]!r} missing (not a finding)")
        keys.add(comparison_key(f))
    return keys


def known_flags(findings: list[dict], baseline: set[tuple]) -> list[bool]:
    """For each finding: is it in the baseline?"""
    return [comparison_key(f) in baseline for f in findings]
