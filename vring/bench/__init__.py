"""Benchmarks of the engine: the request cycle through each API, on each twin, against the C floor (``cases``,
timed by ``runner`` over a ``plan``, told by ``report``), and a driver and a device in two processes (``twoproc``).

``vring bench`` (``vring.cli.bench``) runs them without pytest; the pytest-benchmark suite in ``bench/`` times the
same cases. This module names what the command uses.
"""

from __future__ import annotations

from . import twoproc
from .plan import Plan, default_plan
from .report import can_plot, environment, format_header, format_table, plot, ratios, write_json
from .runner import Progress, Result, run_plan

__all__ = [
    "Plan",
    "Progress",
    "Result",
    "can_plot",
    "default_plan",
    "environment",
    "format_header",
    "format_table",
    "plot",
    "ratios",
    "run_plan",
    "twoproc",
    "write_json",
]
