"""The ``vring`` command.

Each subcommand is a module of this package with ``add_arguments(parser)``, ``run(args) -> int`` and an
``EXAMPLES`` epilog for its ``--help``. Only the module of the subcommand asked for is imported, so that ``vring
info`` or ``vring serve`` loads neither the benchmarks nor the vhost-user client.

Every failure ends in one line on stderr, never a traceback: exit 2 for a usage error (argparse, or a
``CommandError`` with code 2), 1 for a runtime one, 130 for Ctrl-C; a closed stdout (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
from typing import NoReturn, Sequence

from .._version import __version__
from ._args import CommandError, add_verbosity, setup_logging

COMMANDS: dict[str, str] = {  # subcommand -> its one-line help, in the order `vring --help` lists them
    "info": "version, engine implementation, supported features, build flags",
    "demo": "a driver and a device exchanging one request",
    "bench": "requests/s of each API and twin, against the C floor",
    "serve": "serve a device to QEMU over vhost-user",
    "blk": "a virtio-blk client of any vhost-user-blk back-end",
    "conform": "attack a vhost-user-blk back-end as a hostile front-end: a verdict per case",
}

EXAMPLES = """examples:
  vring info
  vring serve blk disk.img --socket /tmp/blk.sock
  vring blk --socket /tmp/blk.sock info
  vring <command> --help"""


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (the usage itself is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _command_module(command: str) -> types.ModuleType:
    return importlib.import_module(f"{__name__}.{command}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``vring``: every subcommand by name and help, and the arguments of ``command`` alone."""
    parser = _Parser(prog="vring", description="virtio virtqueues for Python", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vring {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        if name == command:
            module = _command_module(name)
            subparser = sub.add_parser(name, help=text, description=text, epilog=module.EXAMPLES,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
            add_verbosity(subparser)
            module.add_arguments(subparser)
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `vring` itself takes no option but --help and --version, so a subcommand can only be the first argument.
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    setup_logging(args)
    try:
        code = int(_command_module(args.command).run(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except CommandError as exc:
        print(f"vring {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"vring {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; stdout goes to /dev/null so that the interpreter's
        # final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
