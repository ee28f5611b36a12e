"""Atheris set-up shared by the harnesses: vring and the harness modules are imported instrumented (Python
coverage; the C core reports its own when built with VRING_FUZZ=1), and the twins a harness runs on.

``VRING_FUZZ_TWINS`` chooses the twins of the single-twin harnesses: ``c`` (the default), ``py`` or ``both``.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Callable, Sequence

import contextlib
from pathlib import Path

import numpy  # noqa: F401  (imported before instrumentation: numpy is not what we fuzz)

# VRING_FUZZ_REPLAY=1: no fuzzing, no atheris; each input file (or directory of them) named on the command line is
# run once, and the first failure is an exception and a non-zero exit (scripts/sanitize.sh replays the corpora so).
REPLAY = os.environ.get("VRING_FUZZ_REPLAY", "") not in ("", "0")
if not REPLAY:
    import atheris


def instrumented(include: tuple[str, ...] = ("vring", "guest", "device_program", "driver_program")) -> Any:
    """What imports in it get atheris's Python coverage (nothing, when replaying)."""
    return contextlib.nullcontext() if REPLAY else atheris.instrument_imports(include=list(include))

with instrumented():
    import device_program  # noqa: F401  (imported here, instrumented, for the harnesses)
    import driver_program  # noqa: F401
    import guest  # noqa: F401
    import vring._cring
    import vring._pyring

CYTHON, PYTHON = vring._cring, vring._pyring


def twins() -> list[types.ModuleType]:
    choice = os.environ.get("VRING_FUZZ_TWINS", "c")
    return {"c": [CYTHON], "py": [PYTHON], "both": [CYTHON, PYTHON]}[choice]


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The index of the first entry (or byte) where two sides differ: the shorter length if one is a prefix of
    the other. What a harness names when the two things it compares disagree."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    if REPLAY:
        replay(test_one_input, sys.argv[1:])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def replay(test_one_input: Callable[[bytes], None], paths: list[str]) -> None:
    inputs = sorted(f for p in map(Path, paths) for f in ([p] if p.is_file() else p.iterdir()) if f.is_file())
    for path in inputs:
        test_one_input(path.read_bytes())
    print(f"replayed {len(inputs)} inputs of {', '.join(paths)}", flush=True)
