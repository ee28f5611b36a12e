"""The device API: what a virtio device model implements, independent of the transport that carries it.

A device says who it is (``device_id``), what it offers (``device_features``), how many queues it has, what its
config space holds, and how it serves one popped chain (``handle``). Transports (vhost-user, in-process) do the
rest: feature negotiation, status, queues, notifications.

``Chain`` and ``DeviceQueue`` are the engine as device code sees it: the members of either twin's chain and device
queue (split or packed) that the device API, the devices and the serve loop use, so that mypy checks device code
against the engine without tying it to one twin.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence, runtime_checkable

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


@runtime_checkable
class Chain(Protocol):
    """One descriptor chain popped by the device: its head, and its buffers as views into guest memory."""

    @property
    def head(self) -> int:
        """The chain's id (split: its head descriptor; packed: its buffer id), what ``push_many`` takes back."""

    @property
    def readable(self) -> list[memoryview]:
        """The device-readable buffers, in chain order (a buffer across two regions is two views)."""

    @property
    def writable(self) -> list[memoryview]:
        """The device-writable buffers, in chain order; they follow every readable one."""

    @property
    def readable_len(self) -> int:
        """Bytes in ``readable``."""

    @property
    def writable_len(self) -> int:
        """Bytes in ``writable``."""

    @property
    def segments(self) -> list[tuple[int, int, bool]]:
        """(guest-physical address, length, device-writable) of every buffer piece, in chain order."""

    def read(self) -> bytes:
        """All device-readable bytes, concatenated (a copy)."""

    def write(self, data: Any, offset: int = 0) -> int:
        """Copy ``data`` into the writable buffers from byte ``offset``; returns the bytes written."""


@runtime_checkable
class DeviceQueue(Protocol):
    """The device side of a ring (``DeviceQueue`` or ``PackedDeviceQueue`` of either twin), as served here."""

    def avail_pending(self) -> int:
        """How many chains the driver has made available that the device has not popped (0 if broken)."""

    def pop_many(self, n: int) -> Sequence[Chain]:
        """Up to ``n`` available chains. Raises MalformedChain (and latches broken) on bad driver input."""

    def push_many(self, heads: Sequence[int], lens: Sequence[int]) -> None:
        """Return the chains ``heads``, ``lens[i]`` bytes written into each; the used index is published once."""

    def notify_needed(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call."""

    def enable_notifications(self) -> bool:
        """Ask the driver to kick again; returns True if chains are already available (handle them first)."""

    def disable_notifications(self) -> None:
        """Tell the driver kicks are not needed (the device is polling)."""


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
        # The features in force: the one copy of what was negotiated. A transport reads it here (for its rings,
        # its checks) rather than keeping its own.
        self.driver_features = 0
        self.status = 0

    @property
    def features(self) -> int:
        """Everything offered to the driver: the device's bits and the ring features the engine implements."""
        features = int(self.device_features) | int(ENGINE_FEATURES)
        return features if self.offer_packed else features & ~int(Feature.RING_PACKED)

    def negotiate(self, driver_features: int) -> int:
        """Accept the driver's features (only what was offered); returns what is in force, which is also
        ``driver_features`` from now until ``reset``."""
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
    def handle(self, queue: int, chain: Chain) -> int:
        """Serve one chain popped from queue ``queue``; return the bytes written into its writable part."""
        raise NotImplementedError

    def process(self, index: int, queue: DeviceQueue, budget: int = 256) -> tuple[int, bool]:
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

    def set_status(self, status: int) -> None:
        """The driver wrote the device status byte (spec 2.1.1). DEVICE_NEEDS_RESET is the device's own bit: it
        stays whatever else the driver writes, until the driver writes 0 (a reset, of the status alone here: the
        transport decides what else a 0 resets)."""
        if not 0 <= status <= 0xFF:
            raise ValueError(f"device status {status:#x} is not a byte")
        self.status = (status | self.status & DEVICE_NEEDS_RESET) if status else 0

    def reset(self) -> None:
        self.driver_features = 0
        self.status = 0

    def close(self) -> None:
        """Release what the device holds (files, executors): a transport calls it when the session the device
        was made for is over. The base device holds nothing."""
