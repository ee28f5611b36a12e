"""The device API: what a virtio device model implements, independent of the transport that carries it.

A device says who it is (``device_id``), what it offers (``device_features``), how many queues it has, what its
config space holds, and how it serves one popped chain (``handle``). Transports (vhost-user, in-process) do the
rest: feature negotiation, status, queues, notifications.
"""

from __future__ import annotations

import logging
from typing import Any

from ._errors import VringError
from ._features import ENGINE_FEATURES, Feature

log = logging.getLogger("vring.device")

# Device status bits (spec 2.1).
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128


class ConfigError(VringError, ValueError):
    """A config space access outside the config space, or a write to a field the device does not let change."""

    reason = "config"


class VirtioDevice:
    """Base of device models. Subclasses set ``device_id``, ``device_features`` and ``num_queues``, build the
    config space in ``config`` (a bytearray), and implement ``handle``."""

    device_id: int = 0
    device_features: int = 0  # device-type bits (below 24); the transport bits come from the engine
    num_queues: int = 1
    max_queue_size: int = 1024
    offer_packed: bool = True  # offer VIRTIO_F_RING_PACKED (the driver still chooses)

    def __init__(self) -> None:
        self.config = bytearray()
        self.driver_features = 0
        self.status = 0

    @property
    def features(self) -> int:
        """Everything offered to the driver: the device's bits and the ring features the engine implements."""
        features = int(self.device_features) | int(ENGINE_FEATURES)
        return features if self.offer_packed else features & ~int(Feature.RING_PACKED)

    def negotiate(self, driver_features: int) -> int:
        """Accept the driver's features (only what was offered); returns what is in force."""
        self.driver_features = int(driver_features) & self.features
        return self.driver_features

    # -- config space --------------------------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of config space from ``offset`` (partial reads of a field are allowed)."""
        if offset < 0 or size < 0 or offset + size > len(self.config):
            raise ConfigError(f"config read of {size} bytes at {offset} is outside the {len(self.config)}-byte "
                              "config space")
        return bytes(self.config[offset:offset + size])

    def write_config(self, offset: int, data: bytes) -> None:
        """Write config space; the default device has no writable field."""
        if offset < 0 or offset + len(data) > len(self.config):
            raise ConfigError(f"config write of {len(data)} bytes at {offset} is outside the {len(self.config)}-"
                              "byte config space")
        self.config_write_hook(offset, bytes(data))

    def config_write_hook(self, offset: int, data: bytes) -> None:
        raise ConfigError(f"config space is read-only at offset {offset}")

    # -- requests ------------------------------------------------------------------------------------------
    def handle(self, queue: int, chain: Any) -> int:
        """Serve one chain popped from queue ``queue``; return the bytes written into its writable part."""
        raise NotImplementedError

    def process(self, index: int, queue: Any, budget: int = 256) -> tuple[int, bool]:
        """Serve up to ``budget`` available chains of ``queue``; returns (chains served, interrupt wanted).

        Bad driver input raises (MalformedChain) and leaves the queue broken; the device is then marked
        DEVICE_NEEDS_RESET and the caller stops that queue only.
        """
        try:
            chains = queue.pop_many(budget)
        except VringError as exc:
            self.queue_broken(index, exc)
            raise
        heads: list[int] = []
        lens: list[int] = []
        for chain in chains:
            try:
                written = self.handle(index, chain)
            except Exception:  # a device bug must not take the queue down with the guest's request
                log.exception("queue %d: device failed on chain %d", index, chain.head)
                written = 0
            heads.append(chain.head)
            lens.append(written)
        if not heads:
            return 0, False
        queue.push_many(heads, lens)
        return len(heads), queue.notify_needed()

    def queue_broken(self, index: int, error: Exception) -> None:
        self.status |= DEVICE_NEEDS_RESET
        log.error("queue %d is broken: %s", index, error)

    def reset(self) -> None:
        self.driver_features = 0
        self.status = 0
