"""`vring bench`: the request-cycle benchmarks of each API and twin against the C floor, then the two-process
benchmark, as a table (optionally JSON with the machine they ran on, and a bar chart)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any, Callable

from vring.bench import (
    Progress, Result, can_plot, default_plan, environment, format_header, format_table, plot, ratios, run_plan,
    twoproc, write_json,
)

from ._args import CommandError, check_output_path, positive_float

EXAMPLES = """examples:
  vring bench --quick
  vring bench --json figures.json --plot figures.png
  vring bench --quick --no-two-process --seconds 0.05

Ctrl-C stops the run and prints the cases that finished."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the key cases, short runs (under 20 s)")
    parser.add_argument("--json", metavar="PATH", help="write the figures and the machine they came from")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--no-two-process", action="store_true", help="skip the two-process benchmark")
    parser.add_argument("--seconds", type=positive_float, default=None,
                        help="length of one timed run (default 0.3, 0.08 with --quick)")


def _interrupt_in_this_process_only() -> Callable[[], bool]:
    """Ctrl-C raises KeyboardInterrupt here but is ignored in the device process the two-process benchmark
    forks (the terminal signals both): the child ends cleanly when this process stops it. Returns whether Ctrl-C
    was pressed, for when the KeyboardInterrupt is swallowed (raised inside an at-fork hook, say)."""
    parent = os.getpid()
    pressed: list[int] = []

    def on_sigint(signum: int, _frame: Any) -> None:
        if os.getpid() == parent:
            pressed.append(signum)
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    return lambda: bool(pressed)


def run(args: argparse.Namespace) -> int:
    if args.plot and not can_plot():
        raise CommandError("--plot needs matplotlib: pip install 'vring[plot]'", code=2)
    for path in (args.json, args.plot):
        if path:
            check_output_path(path)
    quick = args.quick
    seconds = args.seconds or (0.08 if quick else 0.3)
    repeats = 3 if quick else 5
    progress = Progress()
    report = (lambda _text: None) if args.quiet else progress
    env = environment()
    plan = default_plan(quick)
    t0 = time.monotonic()
    results: list[Result] = []
    two: list[twoproc.TwoProcessResult] = []
    interrupted = _interrupt_in_this_process_only()
    try:
        for i, case in enumerate(plan, 1):  # case by case, so that Ctrl-C keeps the ones that finished
            report(f"[{i}/{len(plan)}] {case.name}")
            results += run_plan([case], seconds, repeats, lambda _text: None)
            if interrupted():
                raise KeyboardInterrupt
        if not args.no_two_process:
            twoproc.run_all(0.4 if quick else 1.5, report, two)
            if interrupted():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        progress.clear()
        if results:
            print(format_table(results, ratios(results)))
        if two:
            print()
            print(twoproc.format_table(two))
        where = ("in the two-process benchmark" if len(results) == len(plan)
                 else f"after {len(results)} of {len(plan)} cases")
        print(f"vring bench: interrupted {where}; no file written", file=sys.stderr)
        return 130
    progress.clear()
    extra = ratios(results)
    print(format_header(env, repeats, seconds))
    print()
    print(format_table(results, extra))
    if two:
        print()
        print(twoproc.format_table(two))
    print(f"\n({time.monotonic() - t0:.1f} s)")
    if args.json:
        write_json(args.json, env, results, extra, two)
        print(f"figures written to {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"chart written to {args.plot}")
    return 0
