"""The source tree the tests check files of (setup.py, README.md): the checkout they are in, or the one
VRING_SOURCE_DIR names when they run from a copy outside it (scripts/wheel-check.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SOURCE_DIR = Path(os.environ.get("VRING_SOURCE_DIR") or Path(__file__).resolve().parents[2])


def source_file(name: str) -> Path:
    """``name`` in the source tree; a test that needs one fails (never skips) where there is none."""
    path = SOURCE_DIR / name
    if not path.is_file():
        pytest.fail(f"no {name} in the source tree {SOURCE_DIR}: set VRING_SOURCE_DIR to a checkout")
    return path
