"""The pure-Python twin of the engine: the readable reference and the benchmark baseline."""

from .memory import GuestMemory
from .split import Chain, DeviceQueue, DriverQueue

__all__ = ["Chain", "DeviceQueue", "DriverQueue", "GuestMemory"]
