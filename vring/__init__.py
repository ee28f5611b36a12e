"""vring: virtio virtqueues (split and packed rings, driver and device side) over raw shared memory.

The engine comes in two twins with the same classes and behaviour: ``vring._cring`` (Cython, the default) and
``vring._pyring`` (pure Python, the reference). ``VRING_PUREPYTHON=1`` forces the pure-Python one;
``vring.IMPLEMENTATION`` says which is in use.
"""

from __future__ import annotations

import os
import platform

from ._errors import (
    AddressError,
    LayoutError,
    MalformedChain,
    MalformedUsed,
    QueueBroken,
    QueueFull,
    VringError,
)
from ._features import ENGINE_FEATURES, Feature, need_event
from ._factory import contiguous_bytes, contiguous_layout, create_device_queue, create_driver_queue
from ._layout import PackedLayout, RingLayout, SplitLayout, area_bytes, ring_layout
from ._state import QueueState
from ._version import __version__

if os.environ.get("VRING_PUREPYTHON", "") not in ("", "0"):
    from ._pyring import Batch, Chain, DeviceQueue, DriverQueue, GuestMemory, PackedDeviceQueue, PackedDriverQueue

    IMPLEMENTATION = "python"
else:
    try:
        from ._cring import (  # type: ignore[no-redef]  # the twin chosen at import
            Batch, Chain, DeviceQueue, DriverQueue, GuestMemory, PackedDeviceQueue, PackedDriverQueue,
        )
    except ImportError:
        # Only an interpreter that cannot load CPython extensions falls back; on CPython a missing or broken
        # extension is an installation error worth a loud failure.
        if platform.python_implementation() == "CPython":
            raise
        from ._pyring import (  # type: ignore[no-redef]
            Batch, Chain, DeviceQueue, DriverQueue, GuestMemory, PackedDeviceQueue, PackedDriverQueue,
        )

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

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
    "VringError",
    "RingLayout",
    "__version__",
    "area_bytes",
    "contiguous_bytes",
    "contiguous_layout",
    "create_device_queue",
    "create_driver_queue",
    "need_event",
    "ring_layout",
]
