"""The ``vring`` command.

Each subcommand is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the subcommand asked for is imported, so that ``vring info`` or ``vring serve`` loads neither the
benchmarks nor the vhost-user client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from typing import Sequence

COMMANDS: dict[str, str] = {  # subcommand -> its one-line help, in the order `vring --help` lists them
    "info": "version, engine implementation, supported features, build flags",
    "demo": "a driver and a device exchanging one request",
    "bench": "requests/s of each API and twin, against the C floor",
    "serve": "serve a device to QEMU over vhost-user",
    "blk": "a virtio-blk client of any vhost-user-blk back-end",
}


def _command_module(command: str) -> types.ModuleType:
    return importlib.import_module(f"{__name__}.{command}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``vring``: every subcommand by name and help, and the arguments of ``command`` alone."""
    parser = argparse.ArgumentParser(prog="vring", description="virtio virtqueues for Python")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        subparser = sub.add_parser(name, help=text)
        if name == command:
            _command_module(name).add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `vring` itself takes no option but --help, so a subcommand can only be the first argument.
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(_command_module(args.command).run(args))
