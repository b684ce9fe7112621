"""README sections generated from the code, so the docs cannot drift from the schema and detectors.

`python -m vmemtrace.docs` rewrites the marked sections of README.md; a test fails when they differ.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.schema import ENVELOPE, FAMILIES, FINDING_SCHEMA, SCHEMA_VERSION, field_doc, field_enum
from queries.runner import load_detectors

README = Path(__file__).resolve().parent.parent / "README.md"


def _rows(fields) -> list[str]:
    out = []
    for f in fields:
        doc = field_doc(f)
        enum = field_enum(f)
        if enum:
            doc += " One of: " + ", ".join(f"`{e}`" for e in enum) + "."
        null = "" if f.nullable else " (required)"
        out.append(f"| `{f.name}` | {f.type}{null} | {doc} |")
    return out


def schema_section() -> str:
    lines = [f"Schema version {SCHEMA_VERSION}. Every table starts with the envelope:", "",
             "| column | type | meaning |", "|---|---|---|", *_rows(ENVELOPE)]
    for fam in FAMILIES:
        lines += ["", f"**`{fam.name}`** (JSON Lines kind `{fam.kind}`): {fam.doc}", "",
                  "| column | type | meaning |", "|---|---|---|", *_rows(fam.fields)]
    return "\n".join(lines)


def findings_section() -> str:
    return "\n".join(["| field | type | meaning |", "|---|---|---|", *_rows(FINDING_SCHEMA)])


def detectors_section() -> str:
    lines = []
    for d in load_detectors():
        needs = "; ".join(" or ".join(f"`{t}`" for t in alts) for alts in d.needs)
        lines += [f"### {d.id}: {d.title}", "",
                  f"Severities: {', '.join(d.severities)}. Needs: {needs or 'nothing'}. "
                  f"File: `queries/{d.path.name}`.", "",
                  d.proves, ""]
    return "\n".join(lines).rstrip()


SECTIONS = {"schema": schema_section, "findings": findings_section, "detectors": detectors_section}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the <!-- generated:{name} --> ... <!-- end:{name} --> markers")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
