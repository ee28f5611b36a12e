"""Verdicts, and their report: a table for people and a JSON document for programs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

VerdictKind = Literal["rejected", "served", "hung", "corrupted", "died", "skipped"]
# What the back-end must never do: a run with any of these fails (exit status 1).
FAILURES = ("hung", "corrupted", "died")


@dataclass(frozen=True)
class Verdict:
    case: str
    verdict: VerdictKind
    detail: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES


def table(verdicts: list[Verdict]) -> str:
    """One line a case: name, verdict, detail; then a count of each verdict."""
    width = max([len(v.case) for v in verdicts] + [4])
    lines = [f"{'case':<{width}}  {'verdict':<9}  detail"]
    lines += [f"{v.case:<{width}}  {v.verdict:<9}  {v.detail}" for v in verdicts]
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    lines.append(", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no case run")
    return "\n".join(lines)


def to_json(verdicts: list[Verdict], socket_path: str) -> str:
    return json.dumps({"socket": socket_path, "passed": not any(v.failed for v in verdicts),
                       "cases": [asdict(v) for v in verdicts]}, indent=2)
