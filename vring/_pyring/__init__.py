"""The pure-Python twin of the engine: the readable reference and the benchmark baseline."""

from .batch import Batch
from .memory import GuestMemory
from .packed import PackedDeviceQueue, PackedDriverQueue
from .split import Chain, DeviceQueue, DriverQueue

__all__ = ["Batch", "Chain", "DeviceQueue", "DriverQueue", "GuestMemory", "PackedDeviceQueue", "PackedDriverQueue"]
