"""One fixture runs every engine test on both twins: the Cython core and the pure-Python reference.

Tests that need the compiled core carry the ``c_extension`` mark (the ``cython`` twin carries it through the
fixture); ``--no-c-extensions`` deselects them, for a pure-Python run (``VRING_PUREPYTHON=1``) on a machine
without the extension. Without the option a missing compiled core fails those tests.
"""

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

# The twins as parameters; the Cython one needs the compiled core.
TWINS = (pytest.param("cython", marks=pytest.mark.c_extension), "python")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-c-extensions", action="store_true", default=False,
                     help="deselect the tests marked c_extension (those that need the compiled core vring._cring)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "c_extension: the test needs the compiled core vring._cring")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-c-extensions"):
        return
    deselected = [item for item in items if item.get_closest_marker("c_extension")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("c_extension")]


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
