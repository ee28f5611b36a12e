"""The hot path stays in C: `cython -a` shows no Python interaction (a white line) anywhere inside the engine's
nogil functions and inside the batch loops that run with the GIL released."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vring


@pytest.mark.c_extension  # compiles the core's source with Cython
def test_hot_loops_are_white(tmp_path):
    source_dir = Path(vring.__file__).parent
    for name in ("_cring.pyx", "_cring.pxd", "barrier.h"):
        shutil.copy(source_dir / name, tmp_path / name)
    subprocess.run([sys.executable, "-m", "cython", "-3", "-a", "-I", str(tmp_path), str(tmp_path / "_cring.pyx"),
                    "-o", str(tmp_path / "_cring.c")], check=True, capture_output=True)
    html = (tmp_path / "_cring.html").read_text()
    scores = {int(line): int(score) for score, line in
              re.findall(r'<pre class="cython line score-(\d+)"[^>]*>.*?<span class="">(\d+)</span>', html)}
    lines = (tmp_path / "_cring.pyx").read_text().split("\n")
    assert scores, "no annotation found"

    def block(start: int) -> range:
        """Lines of the indented block that follows line ``start`` (1-based)."""
        indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
        end = start
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        return range(start + 1, end + 1)

    checked = 0
    for number, line in enumerate(lines, 1):
        if line.startswith("cdef") and "nogil" in line and line.rstrip().endswith(":"):
            region = block(number)
        elif "= gil_release_if(" in line:
            end = next(n for n in range(number, len(lines) + 1) if "gil_restore(_ts)" in lines[n - 1])
            region = range(number + 1, end)
        else:
            continue
        yellow = [(n, lines[n - 1].strip()) for n in region if scores.get(n, 0) > 0]
        assert not yellow, f"Python interaction in the hot path at line {number}: {yellow}"
        checked += 1
    assert checked >= 20  # every engine function and batch loop was looked at
