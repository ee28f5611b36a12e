"""`vring info`: the version, the engine implementation in use, the features it supports, how it was built."""

from __future__ import annotations

import argparse
import platform
import sysconfig

import vring
from vring._features import ENGINE_FEATURES, Feature

EXAMPLES = """examples:
  vring info
  VRING_PUREPYTHON=1 vring info    # the pure-Python twin"""


def add_arguments(_parser: argparse.ArgumentParser) -> None:
    """`vring info` takes no arguments."""


def run(_args: argparse.Namespace) -> int:
    print(f"vring {vring.__version__}")
    print(f"implementation: {vring.IMPLEMENTATION}")
    print(f"python: {platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    names = [f.name for f in Feature if f & ENGINE_FEATURES and f.name]
    print("ring layouts: split, packed")
    print(f"engine features: {', '.join(names)} ({int(ENGINE_FEATURES):#x})")
    try:
        import vring._cring as _cring
    except ImportError as exc:
        print(f"compiled core: not available ({exc})")
    else:
        print(f"compiled core: {_cring.__file__}")
        print(f"compiler: {_cring.COMPILER}")
        base = " ".join(str(sysconfig.get_config_var(v) or "") for v in ("CC", "CFLAGS")).split()
        print(f"compiler flags: {' '.join(base)} {_cring.BUILD_CFLAGS}")
    return 0
