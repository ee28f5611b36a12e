"""pytest fixtures for the QEMU guest tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest kernel, extracted once per run (QEMU boots the uncompressed image ~3 s faster)."""
    from . import guest

    missing = guest.missing_prerequisites()
    if missing:
        message = f"cannot boot a guest, missing {', '.join(missing)}: run scripts/install-guest-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: their absence there is a broken setup, not a reason to skip
        pytest.skip(message)
    return guest.extract_vmlinux(guest.find_kernel(), tmp_path_factory.mktemp("kernel") / "vmlinux")
