"""The request-cycle cases: a rig (a driver and a device on one guest memory) and the cycles timed on it.

A *case* is a function that moves a known number of requests through the rings, returned with that number, so
that ``vring bench`` and the pytest-benchmark suite in ``bench/`` both report ns per request.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._factory import contiguous_layout, create_device_queue, create_driver_queue
from .._features import Feature
from .._layout import PackedLayout, inflight_region_size

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
RINGS: dict[str, int] = {"split": 0, "packed": Feature.RING_PACKED}  # the feature bit that picks the ring


def twin(name: str) -> types.ModuleType:
    """The engine called ``"python"`` or ``"cython"``, imported when asked for (the factory's ``twin=``)."""
    if name == "python":
        from .. import _pyring

        return _pyring
    import vring._cring as _cring

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


def make_rig(impl: types.ModuleType, shape: str, features: int, size: int = 256, ring: str = "split") -> Rig:
    """A ring of ``size`` (``ring``: a key of RINGS) with ``features`` plus VERSION_1, indirect tables of 4."""
    mem = impl.GuestMemory()
    mem.add_region(BASE, np.zeros(MEM_BYTES, np.uint8))
    features = int(features) | Feature.VERSION_1 | RINGS[ring]
    layout = contiguous_layout(features, size, BASE)
    drv = create_driver_queue(mem, layout, features, twin=impl, indirect_area=TABLES, indirect_max=4)
    dev = create_device_queue(mem, layout, features, twin=impl)
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


def case_batch_inflight(rig: Rig, batch: int) -> tuple[Callable[[], None], int]:
    """``case_batch`` with the device keeping an inflight record (vhost-user's inflight I/O tracking) on every pop
    and push: the cost of crash-safe restart."""
    packed = isinstance(rig.dev.layout, PackedLayout)
    rig.dev.attach_inflight(np.zeros(inflight_region_size(rig.size, packed), np.uint8))  # held by the queue
    return case_batch(rig, batch)


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
        dev.restore((start, start))  # the used ring rewinds too: a state the ring can be in
        for _ in range(rounds):
            dev.pop_batch(popped)
            dev.push_batch(popped)

    return cycle, rounds * batch


def case_c_floor(rig: Rig, batch: int, per_call: int = 4096) -> tuple[Callable[[], None], int]:
    """The same cycle with no Python in the loop (vring._cring.run_cycles); Cython core only."""
    import vring._cring as _cring

    if rig.impl is not _cring:
        raise ValueError("the C floor runs on the Cython core")
    shape = _cring.Batch(1, len(rig.shape))
    shape.set_chains(rig.shape, 1)

    def cycle() -> None:
        _cring.run_cycles(rig.drv, rig.dev, shape, per_call, batch)

    return cycle, per_call


def make_case(impl_name: str, api: str, shape: str = "3desc", features: str = "indirect+event_idx",
              batch: int = 32, ring: str = "split") -> tuple[Callable[[], None], int]:
    rig = make_rig(twin(impl_name), shape, FEATURE_SETS[features], ring=ring)
    if api == "percall":
        return case_percall(rig)
    if api == "batch":
        return case_batch(rig, batch)
    if api == "batch+inflight":
        return case_batch_inflight(rig, batch)
    if api == "device":
        return case_device_only(rig, batch)
    if api == "cfloor":
        return case_c_floor(rig, batch)
    raise ValueError(f"unknown api {api!r}")
