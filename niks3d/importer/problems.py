"""What an import (or a check) finds wrong, by kind and key, and the report printed at the end.

Kinds (docs/operations.md explains each and what ``--quarantine`` / ``--repair`` do about it):

``unparsable``            a narinfo Nix would refuse (or niks3d cannot register: no FileHash/FileSize, a URL
                          outside ``nar/``)
``wrong_key``             a narinfo whose StorePath is not the path its key names
``nar_missing``           a narinfo whose NAR is not in the bucket
``nar_size``              a narinfo whose NAR has another size than its FileSize
``reference_missing``     a narinfo with a reference whose narinfo is absent or broken (not closure-consistent)
``orphan``                an object under the cache's keys that no narinfo needs and no row tracks
``realisation_unparsable`` a realisation (``.doi``) that does not parse
``pin_not_imported``      a path of a ``--pin`` file that is not published after the import
"""

from __future__ import annotations

__all__ = ["Problem", "Report"]

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_SHOWN_PER_KIND = 10


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    kind: str
    key: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "detail": self.detail}


@dataclass
class Report:
    """Counts and problems of one run; ``counts`` are named in docs/operations.md."""

    command: str
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    state: str = "finished"
    error: str | None = None

    def add(self, kind: str, key: str, detail: str) -> None:
        self.problems.append(Problem(kind, key, detail))

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "state": self.state,
            "error": self.error,
            "counts": dict(sorted(self.counts.items())),
            "problems_by_kind": self.by_kind(),
            "problems": [p.to_json() for p in sorted(self.problems)],
        }

    def format(self) -> str:
        """Lines for people: the counts, then each kind with its first keys."""
        head = f"niks3d {self.command} {self.state}" + (f": {self.error}" if self.error else "")
        lines = [head, ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()) if v)]
        kinds = self.by_kind()
        if not kinds:
            lines.append("no problems found")
        for kind, n in kinds.items():
            lines.append(f"{kind}: {n}")
            shown = sorted(p for p in self.problems if p.kind == kind)[:_SHOWN_PER_KIND]
            lines.extend(f"  {p.key}: {p.detail}" for p in shown)
            if n > len(shown):
                lines.append(f"  ... and {n - len(shown)} more (--json lists them all)")
        return "\n".join(lines)
