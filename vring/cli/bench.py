"""`vring bench`: the request-cycle benchmarks of each API and twin against the C floor, then the two-process
benchmark, as a table (optionally JSON with the machine they ran on, and a bar chart)."""

from __future__ import annotations

import argparse
import sys
import time

from vring.bench import (
    Progress, can_plot, default_plan, environment, format_header, format_table, plot, ratios, run_plan, twoproc,
    write_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the key cases, short runs (under 20 s)")
    parser.add_argument("--json", metavar="PATH", help="write the figures and the machine they came from")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--no-two-process", action="store_true", help="skip the two-process benchmark")
    parser.add_argument("--seconds", type=float, default=None, help="length of one timed run")


def run(args: argparse.Namespace) -> int:
    if args.plot and not can_plot():
        print("vring bench: --plot needs matplotlib: pip install 'vring[plot]'", file=sys.stderr)
        return 2
    quick = args.quick
    seconds = args.seconds or (0.08 if quick else 0.3)
    repeats = 3 if quick else 5
    progress = Progress()
    env = environment()
    t0 = time.monotonic()
    results = run_plan(default_plan(quick), seconds, repeats, progress)
    two = [] if args.no_two_process else twoproc.run_all(0.4 if quick else 1.5, progress)
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
