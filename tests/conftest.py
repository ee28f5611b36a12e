"""One fixture runs every engine test on both twins: the Cython core and the pure-Python reference."""

from __future__ import annotations

import types

import pytest

from vring import _pyring

from support.guest_fixtures import kernel  # noqa: F401  (the guest kernel, shared with bench/)

try:
    from vring import _cring
except ImportError as exc:  # the compiled core is part of the package: its absence fails every Cython test
    _cring = None
    _CRING_ERROR = exc

TWINS = ("cython", "python")


def twin_module(name: str) -> types.ModuleType:
    if name == "python":
        return _pyring
    if _cring is None:
        pytest.fail(f"the compiled core vring._cring did not load: {_CRING_ERROR}")
    return _cring


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> types.ModuleType:
    """The engine module under test: ``twin.GuestMemory``, ``twin.DriverQueue``, ``twin.DeviceQueue``."""
    return twin_module(request.param)

