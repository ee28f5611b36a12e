"""virtio-rng (spec 5.4 "Entropy Device"): the smallest device, one queue, no config, no features.

Every request is a chain of device-writable buffers; the device fills them with random bytes from the OS.
"""

from __future__ import annotations

import os

from ..device import Chain, VirtioDevice

DEVICE_ID = 4


class RngDevice(VirtioDevice):
    device_id = DEVICE_ID
    num_queues = 1

    def __init__(self, max_bytes_per_request: int = 1 << 16) -> None:
        super().__init__()
        self.max_bytes = max_bytes_per_request

    def handle(self, queue: int, chain: Chain) -> int:
        done = 0
        for view in chain.writable:
            if done >= self.max_bytes:
                break
            n = min(view.nbytes, self.max_bytes - done)
            view[:n] = os.urandom(n)
            done += n
        return done
