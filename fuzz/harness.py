"""Atheris set-up shared by the harnesses: vring and the harness modules are imported instrumented (Python
coverage; the C core reports its own when built with VRING_FUZZ=1), and the twins a harness runs on.

``VRING_FUZZ_TWINS`` chooses the twins of the single-twin harnesses: ``c`` (the default), ``py`` or ``both``.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Callable

import atheris
import numpy  # noqa: F401  (imported before instrumentation: numpy is not what we fuzz)

with atheris.instrument_imports(include=["vring", "guest", "device_program", "driver_program"]):
    import device_program  # noqa: F401  (imported here, instrumented, for the harnesses)
    import driver_program  # noqa: F401
    import guest  # noqa: F401
    import vring._cring
    import vring._pyring

CYTHON, PYTHON = vring._cring, vring._pyring


def twins() -> list[types.ModuleType]:
    choice = os.environ.get("VRING_FUZZ_TWINS", "c")
    return {"c": [CYTHON], "py": [PYTHON], "both": [CYTHON, PYTHON]}[choice]


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
