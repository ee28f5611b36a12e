"""`vring conform`: attack a vhost-user-blk back-end as a hostile front-end and judge each case."""

from __future__ import annotations

import argparse
import sys

from ._args import CommandError, check_output_path, positive_float

EXAMPLES = """examples:
  vring conform --socket /tmp/blk.sock
  vring conform --socket /tmp/blk.sock --case 'ring.indirect-*' --timeout 5
  vring conform --socket /tmp/blk.sock --json verdicts.json

Verdicts: rejected (refused cleanly), served (served correctly), hung, corrupted, died; skipped when the back-end
lacks a feature the case needs. Exit status 1 if any case hung, corrupted data or killed the back-end.

WRITES: every case overwrites the first 4 KiB of the disk with a pattern (restored at the end of the run, unless
the back-end dies), and a faulty back-end may write more: point it at a scratch image only."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, help="the back-end's unix socket")
    parser.add_argument("--json", metavar="PATH",
                        help="write the verdicts as JSON to PATH too ('-': JSON on stdout instead of the table)")
    parser.add_argument("--timeout", type=positive_float, default=2.0,
                        help="seconds a case waits for any answer before calling it hung (default 2)")
    parser.add_argument("--case", metavar="PATTERN",
                        help="run only the cases whose name matches (a glob, or a word found in the name)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")


def run(args: argparse.Namespace) -> int:
    from vring.conform import ConformError, all_cases, select_cases, table, to_json
    from vring.conform import run as conform

    cases = select_cases(all_cases(), args.case)
    if not cases:
        raise CommandError(f"no case matches {args.case!r} (see vring conform --list)", code=2)
    if args.list:
        for case in cases:
            print(f"{case.name:<32}  {case.summary}")
        return 0
    if args.json:
        check_output_path(args.json)

    def progress(verdict) -> None:
        if not args.quiet:
            print(f"  {verdict.case}: {verdict.verdict}", file=sys.stderr, flush=True)

    try:
        verdicts = conform(args.socket, timeout=args.timeout, cases=cases, on_verdict=progress)
    except ConformError as exc:
        raise CommandError(str(exc)) from None
    if args.json == "-":
        print(to_json(verdicts, args.socket))
    else:
        print(table(verdicts))
        if args.json:
            with open(args.json, "w") as out:
                out.write(to_json(verdicts, args.socket) + "\n")
    return 1 if any(v.failed for v in verdicts) else 0
