"""The ``vring`` command."""

from __future__ import annotations

import argparse
import platform
import sys
import sysconfig
from typing import Sequence


def _info(_args: argparse.Namespace) -> int:
    import vring
    from vring._features import ENGINE_FEATURES, Feature

    print(f"vring {vring.__version__}")
    print(f"implementation: {vring.IMPLEMENTATION}")
    print(f"python: {platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    names = [f.name for f in Feature if f & ENGINE_FEATURES and f.name]
    print("ring layouts: split")
    print(f"engine features: {', '.join(names)} ({int(ENGINE_FEATURES):#x})")
    try:
        from vring import _cring
    except ImportError as exc:
        print(f"compiled core: not available ({exc})")
    else:
        print(f"compiled core: {_cring.__file__}")
        print(f"compiler: {_cring.COMPILER}")
        base = " ".join(str(sysconfig.get_config_var(v) or "") for v in ("CC", "CFLAGS")).split()
        print(f"compiler flags: {' '.join(base)} {_cring.BUILD_CFLAGS}")
    return 0


def _demo(_args: argparse.Namespace) -> int:
    from vring.demo import main as demo

    return demo()


def _bench(args: argparse.Namespace) -> int:
    from vring.bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vring", description="virtio virtqueues for Python")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, engine implementation, supported features, build flags")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="a driver and a device exchanging one request")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="requests/s of each API and twin, against the C floor")
    from vring.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
