"""Timing the cases of a plan, with a progress line per case."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .cases import make_case
from .plan import Plan


@dataclass
class Result:
    """A case of the plan and what it measured: the best of its samples (ns per request) and all of them."""

    name: str
    impl: str
    api: str
    shape: str
    features: str
    batch: int
    ring: str
    ns_per_request: float
    requests_per_s: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, p: Plan, samples: list[float]) -> Result:
        best = min(samples)
        return cls(p.name, p.impl, p.api, p.shape, p.features, p.batch, p.ring, best, 1e9 / best, samples)


def measure(fn: Callable[[], None], requests: int, seconds: float, repeats: int) -> list[float]:
    """ns per request of ``repeats`` timed runs of about ``seconds`` each (after a short warm-up)."""
    fn()
    calls = 1
    while True:  # calibrate: enough calls for the run to take ~seconds
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= seconds * 1e9 / 4 or calls >= 1 << 24:
            break
        calls *= 4
    calls = max(1, int(calls * seconds * 1e9 / max(elapsed, 1)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / (calls * requests))
    return samples


def run_plan(plan: Sequence[Plan], seconds: float, repeats: int, progress: Callable[[str], None]) -> list[Result]:
    results = []
    for i, p in enumerate(plan, 1):
        progress(f"[{i}/{len(plan)}] {p.name}")
        fn, requests = make_case(p.impl, p.api, p.shape, p.features, p.batch, p.ring)
        results.append(Result.of(p, measure(fn, requests, seconds, repeats)))
    return results


class Progress:
    """Progress on stderr: one line rewritten in place on a terminal, a line per step otherwise (logs, CI)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.tty:
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Erase the line a terminal shows, before the results are printed."""
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr)
