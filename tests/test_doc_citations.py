"""Code comments cite the project's own docs: docs/protocol.md and docs/design.md exist, every section of
docs/protocol.md it cites by number has that heading, and nothing points outside the repository (``shared/spec``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("niks3d", "tests", "bench", "nix") for p in sorted((ROOT / d).rglob("*")) if p.is_file()]
SOURCES = [p for p in SOURCES if p.suffix in {".py", ".nix", ".sql"}]
# Applied migrations are checksummed: their comments cannot change ("design.md" there is docs/design.md).
FROZEN = {"niks3d/db/migrations/0001_initial.sql"}
# Only the two documents this test was written for: other docs/ files are cited by work that writes them.
CITATION = re.compile(r"docs/((?:protocol|design)\.md)")
SECTION = re.compile(r"docs/protocol\.md §?(\d+(?:\.\d+)?|Appendix [A-Z])")


def _headings() -> set[str]:
    found = set()
    for line in (ROOT / "docs" / "protocol.md").read_text().splitlines():
        if m := re.match(r"#{2,3} (\d+(?:\.\d+)?|Appendix [A-Z])\.? ", line):
            found.add(m.group(1))
    return found


def test_every_cited_doc_and_protocol_section_exists() -> None:
    headings = _headings()
    missing = []
    for path in SOURCES:
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT).as_posix()
        missing += [f"{rel}: docs/{name}" for name in CITATION.findall(text) if not (ROOT / "docs" / name).exists()]
        missing += [f"{rel}: docs/protocol.md {s}" for s in SECTION.findall(text) if s not in headings]
    assert missing == []


def test_no_source_cites_documents_outside_the_repository() -> None:
    outside = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if rel in FROZEN or rel == "tests/test_doc_citations.py":
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "shared/spec" in line or re.search(r"(?<![\w/])(protocol|design)\.md", line):
                outside.append(f"{rel}:{n}")
    assert outside == [], "cite docs/protocol.md or docs/design.md"
