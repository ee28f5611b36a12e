"""The package: the compiled core is the default, the environment switch works, the twins match, the CLI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import vring
from vring import Feature, _pyring, contiguous_layout
from vring.testing import BASE, DATA, MEM_SIZE, TABLES, make_pair

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def run_python(code: str, **env: str) -> str:
    environ = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, **env)
    environ.pop("VRING_PUREPYTHON", None) if "VRING_PUREPYTHON" not in env else None
    return subprocess.run([sys.executable, "-c", code], env=environ, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.c_extension
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


# -- the twins have the same public classes, attributes and signatures -----------------------------------------
CLASSES = ["GuestMemory", "Chain", "Batch", "DeviceQueue", "DriverQueue", "PackedDeviceQueue", "PackedDriverQueue"]


def instances(twin: types.ModuleType) -> dict[str, object]:
    """One object of each public class of ``twin``, in the same state on both twins (a chain in flight)."""
    split, packed = make_pair(twin), make_pair(twin, packed=True)
    for pair in (split, packed):
        pair.drv.add([(DATA, 8)])
        pair.drv.kick_needed()
    return {"GuestMemory": split.mem, "Chain": split.dev.pop(), "Batch": twin.Batch(4, 8),
            "DeviceQueue": split.dev, "DriverQueue": split.drv, "PackedDeviceQueue": packed.dev,
            "PackedDriverQueue": packed.drv}


def constructor_arguments(twin: types.ModuleType, name: str) -> dict[str, object]:
    """A valid value for each parameter of the Python twin's ``name(...)``, with objects of ``twin``."""
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(MEM_SIZE))
    split = contiguous_layout(Feature.VERSION_1, 8, BASE)
    packed_features = Feature.VERSION_1 | Feature.RING_PACKED
    packed = contiguous_layout(packed_features, 8, BASE)
    device = {"mem": mem, "features": Feature.VERSION_1, "max_indirect": 16}
    driver = {"mem": mem, "features": Feature.VERSION_1, "indirect_area": TABLES, "indirect_max": 4,
              "indirect_threshold": 2}
    return {
        "GuestMemory": {},
        "Batch": {"capacity": 4, "max_segments": 8},
        "DeviceQueue": dict(device, layout=split),
        "DriverQueue": dict(driver, layout=split),
        "PackedDeviceQueue": dict(device, layout=packed, features=packed_features),
        "PackedDriverQueue": dict(driver, layout=packed, features=packed_features),
    }[name]


# Differences of the twins known today, each failing its test until fixed (then xfail strict fails: drop it).
ATTRIBUTES_DIFFER: dict[str, str] = {}
CONSTRUCTORS_DIFFER: dict[str, str] = {}


def each_class(known_differences: dict[str, str]) -> list:
    """The public classes as parameters of a test that needs both twins; a known difference marks its class
    xfail (strict: the test fails once the twins agree, so that the mark goes)."""
    params = []
    for name in CLASSES:
        marks = [pytest.mark.c_extension]
        if name in known_differences:
            marks.append(pytest.mark.xfail(strict=True, reason=known_differences[name]))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def public(obj: object) -> dict[str, bool]:
    """Public names of ``obj`` (its class's and its own), each with whether it is callable."""
    return {n: callable(getattr(obj, n)) for n in dir(obj) if not n.startswith("_")}


def parameters(function) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter; annotations left out (the Cython twin has none)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_public_class_is_compared():
    assert set(CLASSES) == set(_pyring.__all__)
    assert set(CLASSES) <= set(vring.__all__)


@pytest.mark.parametrize("name", each_class(ATTRIBUTES_DIFFER))
def test_twins_have_the_same_public_attributes(name):
    from vring import _cring

    assert public(instances(_cring)[name]) == public(instances(_pyring)[name])


@pytest.mark.parametrize("name", each_class({}))
def test_twins_have_the_same_method_signatures(name):
    """Every public method of either twin (bound: ``self`` left out) exists on the other with the same
    parameters, kinds and defaults (Cython's embedsignature gives the compiled twin's methods signatures)."""
    from vring import _cring

    c, py = instances(_cring)[name], instances(_pyring)[name]
    methods = sorted({n for side in (c, py) for n, is_method in public(side).items() if is_method})
    assert methods
    for method in methods:
        assert hasattr(c, method) and hasattr(py, method), f"{name}.{method} is on one twin only"
        assert parameters(getattr(c, method)) == parameters(getattr(py, method)), f"{name}.{method}"


def outcome(cls: type, args: list[object], kwargs: dict[str, object]) -> str:
    """"ok" if ``cls(*args, **kwargs)`` returns, else the name of the exception it raises."""
    try:
        cls(*args, **kwargs)
    except Exception as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.c_extension
def test_chains_come_only_from_pop_on_both_twins():
    from vring import _cring

    for twin in (_cring, _pyring):
        with pytest.raises(TypeError, match=r"^chains come from DeviceQueue\.pop\(\)$"):
            twin.Chain()


@pytest.mark.parametrize("name", [p for p in each_class(CONSTRUCTORS_DIFFER) if p.values != ("Chain",)])
def test_twins_have_the_same_constructors(name):
    """inspect.signature cannot read a Cython class's constructor, and embedsignature misplaces the ``*`` before
    its keyword-only parameters (Cython 3.3), so the constructors are compared by calling them: each call the
    Python twin's signature allows, the Cython twin allows; each call it refuses, the Cython twin refuses."""
    from vring import _cring

    params = list(inspect.signature(getattr(_pyring, name)).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert len(positional) + len(keyword_only) == len(params)  # no *args, **kwargs or positional-only ones
    required = [p.name for p in params if p.default is p.empty]
    # (positional names, keyword names, surplus keywords) of each call, and whether the signature allows it
    calls = {
        "as declared": (positional, keyword_only, {}, "ok"),
        "all by keyword": ([], positional + keyword_only, {}, "ok"),
        "defaults left out": ([n for n in positional if n in required], [n for n in keyword_only if n in required],
                              {}, "ok"),
        "an unknown keyword": (positional, keyword_only, {"unknown": 1}, "TypeError"),
        # the first keyword-only parameter passed by position, or one argument past the positional ones
        "one positional too many": (positional + (keyword_only[:1] or ["surplus"]), keyword_only[1:], {},
                                    "TypeError"),
    }
    for missing in required:  # the others by keyword, so that none moves into the missing one's place
        calls[f"without {missing}"] = ([], [n for n in positional + keyword_only if n != missing], {}, "TypeError")
    for twin in (_cring, _pyring):
        cls, values = getattr(twin, name), dict(constructor_arguments(twin, name), surplus=None)
        got = {why: outcome(cls, [values[n] for n in args], dict({n: values[n] for n in keywords}, **extra))
               for why, (args, keywords, extra, _) in calls.items()}
        assert got == {why: expected for why, (*_, expected) in calls.items()}, twin.__name__


def test_vring_info_reports_the_engine():
    out = subprocess.run([sys.executable, "-m", "vring", "info"], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT)).stdout
    assert f"vring {vring.__version__}" in out
    assert f"implementation: {vring.IMPLEMENTATION}" in out
    assert "EVENT_IDX" in out and "INDIRECT_DESC" in out and "VERSION_1" in out


@pytest.mark.c_extension
def test_vring_info_reports_the_compiled_core():
    out = subprocess.run([sys.executable, "-m", "vring", "info"], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT)).stdout
    assert "compiled core: " in out and "not available" not in out
    assert "compiler flags:" in out and "-O" in out


def test_typed_package():
    assert (Path(vring.__file__).parent / "py.typed").exists()
