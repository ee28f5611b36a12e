"""Benchmarks of the engine: the request cycle through each API, on each twin, against the C floor.

One module serves both ``vring bench`` (no pytest needed) and the pytest-benchmark suite in ``bench/``: a *case*
is a function that moves a known number of requests through the rings, so that both report ns per request.
"""

from __future__ import annotations

import os

# numpy is used for arrays only: keep OpenBLAS from parking spinning threads on this machine's two cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import platform
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._features import Feature
from ._layout import PackedLayout, SplitLayout
from ._version import __version__

BASE = 0x4000_0000  # guest-physical base: 1 GiB, so that an address mix-up cannot pass unnoticed
MEM_BYTES = 4 << 20
TABLES = BASE + (1 << 20)  # indirect tables
HDR, DATA, STATUS = BASE + (2 << 20), BASE + (2 << 20) + 4096, BASE + (2 << 20) + 8192

# Request shapes: (address, length, device-writable) per descriptor.
SHAPES: dict[str, list[tuple[int, int, bool]]] = {
    "1desc": [(DATA, 4096, True)],  # one 4 KiB buffer the device fills
    "3desc": [(HDR, 16, False), (DATA, 4096, True), (STATUS, 1, True)],  # virtio-blk read: header, data, status
}
FEATURE_SETS: dict[str, int] = {
    "plain": 0,
    "indirect": Feature.INDIRECT_DESC,
    "event_idx": Feature.EVENT_IDX,
    "indirect+event_idx": Feature.INDIRECT_DESC | Feature.EVENT_IDX,
}


def twin(name: str) -> types.ModuleType:
    if name == "python":
        from . import _pyring

        return _pyring
    from . import _cring

    return _cring


@dataclass
class Rig:
    """A driver and a device on one guest memory, as the cycle benchmarks use them."""

    impl: types.ModuleType
    mem: Any
    drv: Any
    dev: Any
    shape: list[tuple[int, int, bool]]
    size: int


def make_rig(impl: types.ModuleType, shape: str, features: int, size: int = 256, packed: bool = False) -> Rig:
    mem = impl.GuestMemory()
    mem.add_region(BASE, np.zeros(MEM_BYTES, np.uint8))
    features = int(features) | Feature.VERSION_1
    layout: PackedLayout | SplitLayout
    if packed:
        layout = PackedLayout.contiguous(size, BASE)
        drv = impl.PackedDriverQueue(mem, layout, features | Feature.RING_PACKED, indirect_area=TABLES,
                                     indirect_max=4)
        dev = impl.PackedDeviceQueue(mem, layout, features | Feature.RING_PACKED)
    else:
        layout = SplitLayout.contiguous(size, BASE)
        drv = impl.DriverQueue(mem, layout, features, indirect_area=TABLES, indirect_max=4)
        dev = impl.DeviceQueue(mem, layout, features)
    return Rig(impl, mem, drv, dev, SHAPES[shape], size)


# -- cases: each returns (function, requests per call) -------------------------------------------------------
def case_percall(rig: Rig) -> tuple[Callable[[], None], int]:
    """One request per Python call of each step: add, kick_needed, pop, push, notify_needed, get_used."""
    drv, dev = rig.drv, rig.dev
    out = [(a, n) for a, n, w in rig.shape if not w]
    in_ = [(a, n) for a, n, w in rig.shape if w]

    def cycle() -> None:
        drv.add(out, in_)
        drv.kick_needed()
        chain = dev.pop()
        dev.push(chain.head, chain.writable_len)
        dev.notify_needed()
        drv.get_used()

    return cycle, 1


def case_batch(rig: Rig, batch: int) -> tuple[Callable[[], None], int]:
    """``batch`` requests per call of each step, through Batch objects bound once."""
    impl, drv, dev = rig.impl, rig.drv, rig.dev
    requests = impl.Batch(batch, batch * len(rig.shape))
    requests.set_chains(rig.shape, batch)
    popped = impl.Batch(batch, batch * len(rig.shape))
    popped.lens[:] = sum(n for _, n, w in rig.shape if w)  # every request fills its writable part
    reaped = impl.Batch(batch)

    def cycle() -> None:
        drv.add_batch(requests, batch)
        drv.kick_needed()
        dev.pop_batch(popped)
        dev.push_batch(popped)
        dev.notify_needed()
        drv.reap_batch(reaped)

    return cycle, batch


def case_device_only(rig: Rig, batch: int) -> tuple[Callable[[], None], int]:
    """The device's pop + push alone, over a ring the driver filled in advance (the device rewinds to the same
    chains each call; the driver does not run)."""
    impl, drv, dev = rig.impl, rig.drv, rig.dev
    requests = impl.Batch(rig.size, rig.size * len(rig.shape))
    requests.set_chains(rig.shape, rig.size)
    assert drv.add_batch(requests, rig.size) == rig.size
    drv.kick_needed()
    popped = impl.Batch(batch, batch * len(rig.shape))
    popped.lens[:] = sum(n for _, n, w in rig.shape if w)
    start = dev.state.last_avail_idx
    rounds = rig.size // batch

    def cycle() -> None:
        dev.restore((start, dev.used_idx))
        for _ in range(rounds):
            dev.pop_batch(popped)
            dev.push_batch(popped)

    return cycle, rounds * batch


def case_c_floor(rig: Rig, batch: int, per_call: int = 4096) -> tuple[Callable[[], None], int]:
    """The same cycle with no Python in the loop (vring._cring.run_cycles); Cython core only."""
    from . import _cring

    if rig.impl is not _cring:
        raise ValueError("the C floor runs on the Cython core")
    shape = _cring.Batch(1, len(rig.shape))
    shape.set_chains(rig.shape, 1)

    def cycle() -> None:
        _cring.run_cycles(rig.drv, rig.dev, shape, per_call, batch)

    return cycle, per_call


def make_case(impl_name: str, api: str, shape: str = "3desc", features: str = "indirect+event_idx",
              batch: int = 32, ring: str = "split") -> tuple[Callable[[], None], int]:
    rig = make_rig(twin(impl_name), shape, FEATURE_SETS[features], packed=ring == "packed")
    if api == "percall":
        return case_percall(rig)
    if api == "batch":
        return case_batch(rig, batch)
    if api == "device":
        return case_device_only(rig, batch)
    if api == "cfloor":
        return case_c_floor(rig, batch)
    raise ValueError(f"unknown api {api!r}")


# -- measuring -----------------------------------------------------------------------------------------------
@dataclass
class Result:
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


@dataclass
class Plan:
    name: str
    impl: str
    api: str
    shape: str
    features: str
    batch: int = 1
    ring: str = "split"


def default_plan(quick: bool) -> list[Plan]:
    plan = []
    shapes = ["1desc", "3desc"]
    for shape in shapes:
        feats = "indirect+event_idx"
        plan += [
            Plan(f"pure Python, per call, {shape}", "python", "percall", shape, feats),
            Plan(f"pure Python, batch 32, {shape}", "python", "batch", shape, feats, 32),
            Plan(f"Cython, per call, {shape}", "cython", "percall", shape, feats),
            Plan(f"Cython, batch 32, {shape}", "cython", "batch", shape, feats, 32),
            Plan(f"Cython, batch 256, {shape}", "cython", "batch", shape, feats, 256),
            Plan(f"C floor, batch 32, {shape}", "cython", "cfloor", shape, feats, 32),
        ]
        if not quick:
            plan += [
                Plan(f"pure Python, device pop+push, {shape}", "python", "device", shape, feats, 32),
                Plan(f"Cython, device pop+push, {shape}", "cython", "device", shape, feats, 32),
            ]
    for shape in shapes:
        feats = "indirect+event_idx"
        plan += [
            Plan(f"packed: pure Python, per call, {shape}", "python", "percall", shape, feats, 1, "packed"),
            Plan(f"packed: Cython, per call, {shape}", "cython", "percall", shape, feats, 1, "packed"),
            Plan(f"packed: Cython, batch 32, {shape}", "cython", "batch", shape, feats, 32, "packed"),
            Plan(f"packed: C floor, batch 32, {shape}", "cython", "cfloor", shape, feats, 32, "packed"),
        ]
    if not quick:
        for feats in ("plain", "indirect", "event_idx"):
            plan += [
                Plan(f"pure Python, per call, 3desc, {feats}", "python", "percall", "3desc", feats),
                Plan(f"Cython, per call, 3desc, {feats}", "cython", "percall", "3desc", feats),
                Plan(f"Cython, batch 32, 3desc, {feats}", "cython", "batch", "3desc", feats, 32),
                Plan(f"C floor, batch 32, 3desc, {feats}", "cython", "cfloor", "3desc", feats, 32),
            ]
    return plan


def run_plan(plan: Sequence[Plan], seconds: float, repeats: int, progress: Callable[[str], None]) -> list[Result]:
    results = []
    for i, p in enumerate(plan, 1):
        progress(f"[{i}/{len(plan)}] {p.name}")
        fn, requests = make_case(p.impl, p.api, p.shape, p.features, p.batch, p.ring)
        samples = measure(fn, requests, seconds, repeats)
        best = min(samples)
        results.append(Result(p.name, p.impl, p.api, p.shape, p.features, p.batch, p.ring, best, 1e9 / best,
                              samples))
    return results


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
            if py and cy:
                out.append((f"{ring}: Cython per call / pure Python per call, {shape} (speed-up)", py / cy))
            if py and b32:
                out.append((f"{ring}: Cython batch 32 / pure Python per call, {shape} (speed-up)", py / b32))
            if b32 and floor:
                out.append((f"{ring}: Cython batch 32 ns / C floor ns, {shape} (overhead)", b32 / floor))
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
        from . import _cring

        info["compiler"] = _cring.COMPILER
        info["cflags"] = _cring.BUILD_CFLAGS
    except ImportError:
        info["compiler"] = "none (compiled core not available)"
    return info


def format_table(results: Sequence[Result], extra: Sequence[tuple[str, float]]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'case':<{width}}  {'ns/request':>11}  {'requests/s':>14}", "-" * (width + 29)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.ns_per_request:>11.1f}  {r.requests_per_s:>14,.0f}")
    if extra:
        lines.append("")
        for name, value in extra:
            lines.append(f"{name}: {value:.1f}x")
    return "\n".join(lines)


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
