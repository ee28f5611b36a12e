"""What ``vring bench`` runs: the list of cases, each named as its row in the table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Plan:
    """One case of a run: its row name and the arguments of ``cases.make_case``."""

    name: str
    impl: str
    api: str
    shape: str
    features: str
    batch: int = 1
    ring: str = "split"


def default_plan(quick: bool) -> list[Plan]:
    """The cases of ``vring bench``; ``quick`` keeps the key ones (no device-only cases, no other feature sets)."""
    plan = []
    shapes = ["1desc", "3desc"]
    for shape in shapes:
        feats = "indirect+event_idx"
        plan += [
            Plan(f"pure Python, per call, {shape}", "python", "percall", shape, feats),
            Plan(f"pure Python, batch 32, {shape}", "python", "batch", shape, feats, 32),
            Plan(f"Cython, per call, {shape}", "cython", "percall", shape, feats),
            Plan(f"Cython, batch 32, {shape}", "cython", "batch", shape, feats, 32),
            Plan(f"Cython, batch 32 with inflight record, {shape}", "cython", "batch+inflight", shape, feats, 32),
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
            Plan(f"packed: Cython, batch 32 with inflight record, {shape}", "cython", "batch+inflight", shape, feats,
                 32, "packed"),
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
