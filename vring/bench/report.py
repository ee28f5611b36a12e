"""What a run reports: the table, the ratios the targets speak of, the machine it ran on, JSON and a chart."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

from .._version import __version__
from .runner import Result

if TYPE_CHECKING:
    from .twoproc import TwoProcessResult


def ratios(results: Sequence[Result]) -> list[tuple[str, float]]:
    """The ratios the targets speak of, from one run (same machine, same minute)."""
    by = {(r.impl, r.api, r.shape, r.features, r.batch, r.ring): r.ns_per_request for r in results}
    out = []
    feats = "indirect+event_idx"
    for ring in ("split", "packed"):
        for shape in ("1desc", "3desc"):
            py = by.get(("python", "percall", shape, feats, 1, ring))
            cy = by.get(("cython", "percall", shape, feats, 1, ring))
            b32 = by.get(("cython", "batch", shape, feats, 32, ring))
            floor = by.get(("cython", "cfloor", shape, feats, 32, ring))
            recorded = by.get(("cython", "batch+inflight", shape, feats, 32, ring))
            if py and cy:
                out.append((f"{ring}: Cython per call / pure Python per call, {shape} (speed-up)", py / cy))
            if py and b32:
                out.append((f"{ring}: Cython batch 32 / pure Python per call, {shape} (speed-up)", py / b32))
            if b32 and floor:
                out.append((f"{ring}: Cython batch 32 ns / C floor ns, {shape} (overhead)", b32 / floor))
            if b32 and recorded:
                out.append((f"{ring}: Cython batch 32 with / without inflight record, {shape} (overhead)",
                            recorded / b32))
    return out


def environment() -> dict[str, str]:
    info = {
        "vring": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import vring._cring as _cring

        info["compiler"] = _cring.COMPILER
        info["cflags"] = _cring.BUILD_CFLAGS
    except ImportError:
        info["compiler"] = "none (compiled core not available)"
    return info


def format_header(env: dict[str, str], repeats: int, seconds: float) -> str:
    """The lines above the table: the machine, and what one figure is."""
    return (f"vring {env['vring']} on {env.get('cpu', env['machine'])}, {env['python']}, {env.get('compiler', '')}\n"
            "request cycle (driver add -> device pop -> device push -> driver reap), ring of 256, best of "
            f"{repeats} runs of {seconds:.2f} s, INDIRECT_DESC + EVENT_IDX unless named:")


def format_table(results: Sequence[Result], extra: Sequence[tuple[str, float]]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'case':<{width}}  {'ns/request':>11}  {'requests/s':>14}", "-" * (width + 29)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.ns_per_request:>11.1f}  {r.requests_per_s:>14,.0f}")
    if extra:
        lines.append("")
        for name, value in extra:
            lines.append(f"{name}: {value:.2f}x")
    return "\n".join(lines)


def write_json(path: str, env: dict[str, str], results: Sequence[Result], extra: Sequence[tuple[str, float]],
               two_process: Sequence[TwoProcessResult]) -> None:
    """The figures of one run with the machine they came from, for comparing runs."""
    with open(path, "w") as f:
        json.dump({"environment": env, "results": [asdict(r) for r in results],
                   "ratios": dict(extra), "two_process": [asdict(t) for t in two_process]}, f, indent=2)


def can_plot() -> bool:
    """Whether ``plot`` will find matplotlib: asked before a run, so that a missing one fails fast."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(results: Sequence[Result], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'vring[plot]'") from None
    names = [r.name for r in results]
    values = [r.ns_per_request for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.5))
    colors = ["#c44e52" if r.impl == "python" else "#55a868" if r.api == "cfloor" else "#4c72b0" for r in results]
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ns per request (log scale, lower is better)")
    ax.set_title(f"vring {__version__}: request cycle, one run")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
