"""The pure-Python twin of the engine: the readable reference and the benchmark baseline.

One module per concern, named like the Cython twin's ``.pxi`` files: ``memory`` (GuestMemory), ``chain`` (Chain),
``batch`` (Batch), ``rings`` (the views of each layout's shared areas), ``queue`` (what every queue shares),
``descriptors`` (the device-side descriptor checks both layouts share), ``inflight`` (the inflight record kept on
every pop and push), then one module per side and layout: ``split_device``, ``split_driver``, ``packed_device``,
``packed_driver``.
"""

from .batch import Batch
from .chain import Chain
from .memory import GuestMemory
from .packed_device import PackedDeviceQueue
from .packed_driver import PackedDriverQueue
from .split_device import DeviceQueue
from .split_driver import DriverQueue

__all__ = ["Batch", "Chain", "DeviceQueue", "DriverQueue", "GuestMemory", "PackedDeviceQueue", "PackedDriverQueue"]
