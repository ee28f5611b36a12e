"""`vring bench`: the request-cycle benchmarks of each API and twin against the C floor, then the two-process
benchmark, as a table (optionally JSON with the machine they ran on, and a bar chart)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from vring.bench import default_plan, environment, format_table, plot, ratios, run_plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the key cases, short runs (under 20 s)")
    parser.add_argument("--json", metavar="PATH", help="write the figures and the machine they came from")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--no-two-process", action="store_true", help="skip the two-process benchmark")
    parser.add_argument("--seconds", type=float, default=None, help="length of one timed run")


def run(args: argparse.Namespace) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("vring bench: --plot needs matplotlib: pip install 'vring[plot]'", file=sys.stderr)
            return 2
    quick = args.quick
    seconds = args.seconds or (0.08 if quick else 0.3)
    repeats = 3 if quick else 5
    tty = sys.stderr.isatty()

    def progress(text: str) -> None:
        if tty:
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    env = environment()
    t0 = time.monotonic()
    results = run_plan(default_plan(quick), seconds, repeats, progress)
    two = []
    if not args.no_two_process:
        from vring.bench_twoproc import run_all

        two = run_all(0.4 if quick else 1.5, progress)
    if tty:
        print("\r\033[K", end="", file=sys.stderr)
    extra = ratios(results)
    print(f"vring {env['vring']} on {env.get('cpu', env['machine'])}, {env['python']}, {env.get('compiler', '')}")
    print("request cycle (driver add -> device pop -> device push -> driver reap), ring of 256, best of "
          f"{repeats} runs of {seconds:.2f} s, INDIRECT_DESC + EVENT_IDX unless named:")
    print()
    print(format_table(results, extra))
    if two:
        from vring.bench_twoproc import format_table as format_two

        print()
        print(format_two(two))
    print(f"\n({time.monotonic() - t0:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": [asdict(r) for r in results],
                       "ratios": dict(extra), "two_process": [asdict(t) for t in two]}, f, indent=2)
        print(f"figures written to {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"chart written to {args.plot}")
    return 0
