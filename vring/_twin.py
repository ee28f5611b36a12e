"""Which engine twin this process uses: the Cython core, or the pure-Python reference under ``VRING_PUREPYTHON=1``.

Chosen once, at first import; ``vring`` re-exports the chosen twin's classes and the queue factory defaults to it.
"""

from __future__ import annotations

import os
import platform
import types


def _choose() -> tuple[types.ModuleType, str]:
    if os.environ.get("VRING_PUREPYTHON", "") not in ("", "0"):
        from . import _pyring

        return _pyring, "python"
    try:
        import vring._cring as _cring

        _cring.DeviceQueue  # noqa: B018  # without the extension, vring/_cring/ (its sources) is a namespace package
    except (ImportError, AttributeError) as exc:
        # Only an interpreter that cannot load CPython extensions falls back; on CPython a missing or broken
        # extension is an installation error worth a loud failure.
        if platform.python_implementation() == "CPython":
            raise ImportError(f"vring's compiled core vring._cring did not load: {exc}") from exc
        from . import _pyring

        return _pyring, "python"
    return _cring, "cython"


ENGINE, IMPLEMENTATION = _choose()
