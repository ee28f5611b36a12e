"""Type stub of the compiled core. Without it a type checker takes the include directory ``vring/_cring/`` for an
empty namespace package. The core has the same public classes and signatures as the pure-Python twin."""

from typing import Any

from ._pyring import Batch as Batch
from ._pyring import Chain as Chain
from ._pyring import DeviceQueue as DeviceQueue
from ._pyring import DriverQueue as DriverQueue
from ._pyring import GuestMemory as GuestMemory
from ._pyring import PackedDeviceQueue as PackedDeviceQueue
from ._pyring import PackedDriverQueue as PackedDriverQueue

BUILD_CFLAGS: str
COMPILER: str
CHAIN_CHECK_CODES: dict[str, int]
USED_CHECK_CODES: dict[str, int]

def run_cycles(drv: DriverQueue, dev: DeviceQueue, shape: Batch, n: int, batch: int = 32) -> int: ...
def blk_stream(drv: DriverQueue, area: int, kick_fd: int, call_fd: int, sectors: Any, latencies: Any,
               writing: bool, seed: int, block: int, depth: int, verify: bool, timeout: float,
               stop_at: float = 0.0) -> tuple[int, int, int, int, int, int, int, int]: ...
