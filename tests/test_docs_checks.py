"""docs/checks.md lists every check of the other side of the ring with the clause of the spec it enforces, as the
comments beside CHAIN_REASONS and USED_REASONS in vring/_errors.py say: the page is made from those comments, and
this test fails when the two differ. VRING_UPDATE_DOCS=1 rewrites the page."""

from __future__ import annotations

import os
import re

from support.source import source_file
from vring._errors import CHAIN_REASONS, USED_REASONS

HEADER = """# The checks of the other side of the ring

Made from the comments beside `CHAIN_REASONS` and `USED_REASONS` in `vring/_errors.py`
(`tests/test_docs_checks.py` keeps the two the same). "SPLIT /" and "PACKED /" abbreviate the sections of the
virtio spec (oasis-tcs/virtio-spec) under "Split Virtqueues" and "Packed Virtqueues".
"""


def reasons_with_comments(source: str, name: str) -> tuple[str, list[tuple[str, str]]]:
    """The comment block above the tuple ``name`` and, for each reason, the comment lines just above it."""
    block = re.search(rf"((?:#[^\n]*\n)*){name} = \(\n(.*?)\n\)\n", source, re.S)
    assert block, f"{name} not found"
    intro = " ".join(line.lstrip("# ").strip() for line in block.group(1).splitlines())
    out, comment = [], []
    for line in block.group(2).splitlines():
        line = line.strip()
        if line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
        elif line.startswith('"'):
            out.append((line.strip('",'), " ".join(comment)))
            comment = []
    return intro, out


def render(source: str) -> str:
    parts = [HEADER]
    for name, title in (("CHAIN_REASONS", "Device side: what the driver wrote (MalformedChain)"),
                        ("USED_REASONS", "Driver side: what the device wrote (MalformedUsed)")):
        intro, rows = reasons_with_comments(source, name)
        parts.append(f"\n## {title}\n\n{intro}\n\n| reason | what it enforces |\n| --- | --- |\n")
        parts += [f"| `{reason}` | {text.replace('|', '/')} |\n" for reason, text in rows]
    return "".join(parts)


def test_the_checks_page_says_what_the_comments_say():
    source = source_file("vring/_errors.py").read_text()
    _, chain = reasons_with_comments(source, "CHAIN_REASONS")
    _, used = reasons_with_comments(source, "USED_REASONS")
    assert [r for r, _ in chain] == list(CHAIN_REASONS) and [r for r, _ in used] == list(USED_REASONS)
    assert all(text for _, text in chain + used), "a reason without a comment citing what it enforces"
    page = render(source)
    path = source_file("docs/checks.md") if not os.environ.get("VRING_UPDATE_DOCS") else None
    if path is None:
        (source_file("README.md").parent / "docs" / "checks.md").write_text(page)
        return
    assert path.read_text() == page, "docs/checks.md is out of date: run this test with VRING_UPDATE_DOCS=1"
