"""Detector results as JUnit XML, the format every CI shows natively: one test case per detector;
a failure carries the findings at or above the threshold that are not known from a baseline;
a detector not run for lack of input is skipped, with what it needed."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pipeline.schema import severity_rank

# XML 1.0 cannot hold most control characters at all; show them escaped instead of writing a
# file CI parsers reject (and a terminal would interpret).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")


def _text(value) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", "" if value is None else str(value))


def _finding_line(f: dict, known: bool) -> str:
    return _text(f"[{f['severity']}] {f['finding_id']}{' (known from baseline)' if known else ''}: "
                 f"{f['message']}")


def junit_xml(suite: str, statuses: list[dict], findings: list[dict], known: list[bool],
              fail_on: str | None) -> str:
    """statuses: detector statuses (id, title, status, missing, error, seconds); findings with a
    parallel `known` list; fail_on: the severity threshold, None for never failing."""
    limit = severity_rank(fail_on) if fail_on else -1
    by_detector: dict[str, list[tuple[dict, bool]]] = {}
    for f, k in zip(findings, known):
        by_detector.setdefault(f["detector"], []).append((f, k))

    root = ET.Element("testsuites")
    cases = []
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in statuses:
        case = ET.Element("testcase", classname=_text(f"vmemtrace.{suite}"), name=_text(f"{s['id']} {s['title']}"),
                          time=f"{s.get('seconds') or 0.0:.3f}")
        counts["tests"] += 1
        mine = by_detector.get(s["id"], [])
        fails = [not k and severity_rank(f["severity"]) <= limit for f, k in mine]
        failing = [fk for fk, x in zip(mine, fails) if x]
        if s["status"] == "not run":
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=_text(f"not applicable: no {'; '.join(s['missing'])} events "
                                                         "in this run"))
        elif s["status"] == "error":
            counts["errors"] += 1
            ET.SubElement(case, "error", message=_text(s.get("error") or "detector error"))
        elif failing:
            counts["failures"] += 1
            worst = min((f["severity"] for f, _ in failing), key=severity_rank)
            fail = ET.SubElement(case, "failure", type=worst,
                                 message=_text(f"{len(failing)} finding(s) at or above {fail_on}"))
            fail.text = "\n".join(_finding_line(f, k) for f, k in failing)
        rest = [fk for fk, x in zip(mine, fails) if not x]
        if rest:
            ET.SubElement(case, "system-out").text = "\n".join(_finding_line(f, k) for f, k in rest)
        cases.append(case)
    ts = ET.SubElement(root, "testsuite", name=_text(suite), **{k: str(v) for k, v in counts.items()})
    ts.extend(cases)
    root.attrib.update({k: str(v) for k, v in counts.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
