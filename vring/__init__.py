"""vring: virtio virtqueues (split and packed rings, driver and device side) over raw shared memory.

The engine comes in two twins with the same classes and behaviour: ``vring._cring`` (Cython, the default) and
``vring._pyring`` (pure Python, the reference). ``VRING_PUREPYTHON=1`` forces the pure-Python one;
``vring.IMPLEMENTATION`` says which is in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import (
    AddressError,
    InflightError,
    LayoutError,
    MalformedChain,
    MalformedUsed,
    QueueBroken,
    QueueFull,
    VringError,
)
from ._features import ENGINE_FEATURES, Feature, need_event
from ._factory import contiguous_bytes, contiguous_layout, create_device_queue, create_driver_queue
from ._layout import PackedLayout, RingLayout, SplitLayout, area_bytes, inflight_region_size, ring_layout
from ._state import QueueState, StateError
from ._twin import ENGINE, IMPLEMENTATION
from ._version import __version__

if TYPE_CHECKING:  # the twins share one interface: type checkers read the pure-Python reference's
    from ._pyring import Batch, Chain, DeviceQueue, DriverQueue, GuestMemory, PackedDeviceQueue, PackedDriverQueue
else:
    Batch, Chain, GuestMemory = ENGINE.Batch, ENGINE.Chain, ENGINE.GuestMemory
    DeviceQueue, DriverQueue = ENGINE.DeviceQueue, ENGINE.DriverQueue
    PackedDeviceQueue, PackedDriverQueue = ENGINE.PackedDeviceQueue, ENGINE.PackedDriverQueue

__all__ = [
    "ENGINE_FEATURES",
    "IMPLEMENTATION",
    "AddressError",
    "Batch",
    "Chain",
    "DeviceQueue",
    "DriverQueue",
    "Feature",
    "GuestMemory",
    "InflightError",
    "LayoutError",
    "MalformedChain",
    "MalformedUsed",
    "PackedDeviceQueue",
    "PackedDriverQueue",
    "PackedLayout",
    "QueueBroken",
    "QueueFull",
    "QueueState",
    "SplitLayout",
    "StateError",
    "VringError",
    "RingLayout",
    "__version__",
    "area_bytes",
    "contiguous_bytes",
    "contiguous_layout",
    "create_device_queue",
    "create_driver_queue",
    "inflight_region_size",
    "need_event",
    "ring_layout",
]
