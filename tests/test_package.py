"""The package: the compiled core is the default, the environment switch works, the twins match, the CLI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vring
from vring import _pyring

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def run_python(code: str, **env: str) -> str:
    environ = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, **env)
    environ.pop("VRING_PUREPYTHON", None) if "VRING_PUREPYTHON" not in env else None
    return subprocess.run([sys.executable, "-c", code], env=environ, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_compiled_core_is_loaded_by_default():
    from vring import _cring

    assert run_python("import vring; print(vring.IMPLEMENTATION)") == "cython"
    assert _cring.__file__.endswith((".so", ".pyd")), _cring.__file__  # really the extension, not a .py
    if os.environ.get("VRING_PUREPYTHON", "") in ("", "0"):
        assert vring.IMPLEMENTATION == "cython"
        assert vring.DeviceQueue is _cring.DeviceQueue and vring.GuestMemory is _cring.GuestMemory


def test_environment_forces_pure_python():
    assert run_python("import vring; print(vring.IMPLEMENTATION)", VRING_PUREPYTHON="1") == "python"
    out = run_python("import vring, vring._pyring as p; print(vring.DriverQueue is p.DriverQueue)",
                     VRING_PUREPYTHON="1")
    assert out == "True"


def test_twins_have_the_same_public_attributes():
    from vring import _cring

    from vring.testing import DATA, make_pair

    def public(obj):
        return {n for n in dir(obj) if not n.startswith("_")}

    c, p = make_pair(_cring), make_pair(_pyring)
    for side in (c, p):
        side.drv.add([(DATA, 8)])
        side.drv.kick_needed()
    assert public(c.mem) == public(p.mem)
    assert public(c.drv) == public(p.drv)
    assert public(c.dev) == public(p.dev)
    assert public(c.dev.pop()) == public(p.dev.pop())


@pytest.mark.parametrize("name", ["DriverQueue", "DeviceQueue"])
def test_twins_have_the_same_signatures(name):
    from vring import _cring

    py_cls, c_cls = getattr(_pyring, name), getattr(_cring, name)
    for method in ("add", "add_many", "pop_used", "pop_used_into", "pop_many", "push", "push_many",
                   "restore"):
        if hasattr(py_cls, method):
            py_sig = inspect.signature(getattr(py_cls, method))
            c_sig = inspect.signature(getattr(c_cls, method))
            assert list(py_sig.parameters) == list(c_sig.parameters), (name, method)


def test_vring_info_reports_the_engine():
    out = subprocess.run([sys.executable, "-m", "vring", "info"], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT)).stdout
    assert f"vring {vring.__version__}" in out
    assert "implementation: cython" in out or os.environ.get("VRING_PUREPYTHON")
    assert "EVENT_IDX" in out and "INDIRECT_DESC" in out and "VERSION_1" in out
    assert "compiler flags:" in out and "-O" in out


def test_typed_package():
    assert (Path(vring.__file__).parent / "py.typed").exists()
