"""What a conformance case is, and the selection of cases by name.

A case attacks one fresh connection. A ring case gets a session already set up (memory shared, queue 0 started)
and writes a malformed chain or ring field into the shared memory, returning the request it made available (None
when what it wrote is not available, by the spec's rules, and must be ignored). A message case gets a session
that has only negotiated and sends what it likes; whatever standard set-up it left out is done after it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Literal

from .session import DEFAULT_FEATURES, Session, Submitted

# Where every case's pattern goes (and is read back from): the first 4 KiB of the disk, restored after the run.
PATTERN_SECTOR = 0
PATTERN_SECTORS = 8


@dataclass(frozen=True)
class Case:
    name: str
    summary: str
    kind: Literal["ring", "message"]
    attack: Callable[[Session, bytes], Submitted | None]  # given the session and the pattern on the disk
    features: int = DEFAULT_FEATURES  # what the session asks for
    needs: int = 0  # features the back-end must grant for the case to make sense (else it is skipped)
    # The request cannot be served as asked (its buffers are unreachable, its chain endless...): completing it
    # with VIRTIO_BLK_S_OK tells the driver a lie.
    impossible: bool = False


def select_cases(cases: list[Case], pattern: str | None) -> list[Case]:
    """The cases whose name matches the shell-style ``pattern`` (all if None); a plain word matches as a
    substring ("indirect" selects every indirect case)."""
    if pattern is None:
        return list(cases)
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [case for case in cases if fnmatch.fnmatchcase(case.name, glob)]


def all_cases() -> list[Case]:
    from .message_cases import MESSAGE_CASES
    from .ring_cases import RING_CASES

    return RING_CASES + MESSAGE_CASES
