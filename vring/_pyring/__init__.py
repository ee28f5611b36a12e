"""The pure-Python twin of the engine: the readable reference and the benchmark baseline."""

from .batch import Batch
from .memory import GuestMemory
from .packed_device import PackedDeviceQueue
from .packed_driver import PackedDriverQueue
from .split_device import Chain, DeviceQueue
from .split_driver import DriverQueue

__all__ = ["Batch", "Chain", "DeviceQueue", "DriverQueue", "GuestMemory", "PackedDeviceQueue", "PackedDriverQueue"]
