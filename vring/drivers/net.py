"""virtio-net (spec 5.1 "Network Device"): a driver-side model on a vhost-user front-end.

Queue 0 receives, queue 1 transmits. Every buffer on either queue starts with ``struct virtio_net_hdr``, 12 bytes
under VERSION_1 (num_buffers is always there), followed by one Ethernet frame without its FCS. No offloads are
negotiated, so the header we send is all zeros and the one we receive carries nothing we need; without
MRG_RXBUF each receive buffer must hold a whole frame, so each is 12 + 1514 bytes.
"""

from __future__ import annotations

import struct
from collections import deque

from .._features import Feature
from ..vhost_user.frontend import BackendError, Frontend, FrontQueue
from ..vhost_user.protocol import ProtocolFeature

DEVICE_ID = 1

# Feature bits (5.1.3) this model deals with.
F_MAC = 1 << 5  # taken when offered: the device's MAC address is then in the config space
F_MRG_RXBUF = 1 << 15  # never taken: a frame then always fits one receive buffer

HEADER = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
HEADER_SIZE = HEADER.size  # 12
ZERO_HEADER = bytes(HEADER_SIZE)  # no checksum to fill, no GSO: what a driver with no offloads sends
ETH_HEADER = 14
MAX_FRAME = 1514  # 1500-byte MTU + Ethernet header, no FCS (the device adds and strips it)
BUFFER_SIZE = HEADER_SIZE + MAX_FRAME
RX, TX = 0, 1


class NetClient:
    """Sends and receives Ethernet frames through any vhost-user-net back-end (one queue pair).

    The receive queue is kept full of device-writable buffers, each given back to the device as soon as its frame
    is read; transmit buffers come from a pool the size of the queue and return to it when the device has used
    them. Neither queue is ever waited on without a timeout.
    """

    def __init__(self, frontend: Frontend, *, packed: bool = False, event_idx: bool = True,
                 queue_size: int = 256) -> None:
        self.frontend = frontend
        self.mem = frontend.mem
        wanted = (F_MAC | (Feature.EVENT_IDX if event_idx else 0) | (Feature.RING_PACKED if packed else 0))
        # negotiate() already refuses a back-end without VERSION_1 (BackendError naming the features it offers);
        # checked again here because the 12-byte header and little-endian rings below depend on it.
        self.features = frontend.negotiate(wanted)
        if not self.features & Feature.VERSION_1:
            raise BackendError(f"the back-end does not offer VERSION_1 (negotiated {self.features:#x})")
        if packed and not self.features & Feature.RING_PACKED:
            raise BackendError(f"packed rings asked for, but the back-end does not offer RING_PACKED "
                               f"(negotiated {self.features:#x})")
        # The MAC lives in the config space, readable only through the CONFIG protocol feature.
        self.mac: bytes | None = None
        if self.features & F_MAC and frontend.protocol_features & ProtocolFeature.CONFIG:
            self.mac = frontend.get_config(6)
        queues = frontend.setup_queues(2, queue_size)
        self.rx: FrontQueue = queues[RX]
        self.tx: FrontQueue = queues[TX]
        alloc = frontend.allocator.alloc
        self._rx_done: deque[tuple[int, int]] = deque()  # (buffer, written) reaped but not yet handed out
        for _ in range(queue_size):
            addr = alloc(BUFFER_SIZE)
            self.rx.driver.add(in_=[(addr, BUFFER_SIZE)], token=addr)  # the token is the buffer's address
        frontend.kick(self.rx)
        self._tx_free = [alloc(BUFFER_SIZE) for _ in range(queue_size)]
        # Transmit completions are reaped when sending, so the device need not interrupt for them.
        self.tx.driver.disable_interrupts()
        self.sent = 0
        self.received = 0

    # -- transmit ------------------------------------------------------------------------------------------
    def _reap_tx(self) -> None:
        for addr, _written in self.tx.driver.pop_used():
            self._tx_free.append(addr)

    def send(self, frame: bytes, timeout: float | None = None) -> None:
        """Queue one Ethernet frame (14 to 1514 bytes, no FCS) for transmission; waits only if every transmit
        buffer is still with the device (BackendError if none comes back within ``timeout``)."""
        if not ETH_HEADER <= len(frame) <= MAX_FRAME:
            raise ValueError(f"a frame is {ETH_HEADER} to {MAX_FRAME} bytes, not {len(frame)}")
        self._reap_tx()
        if not self._tx_free or not self.tx.driver.num_free:
            for addr, _written in self.frontend.wait(self.tx, timeout):  # re-arms interrupts, no lost wake-up
                self._tx_free.append(int(addr))  # type: ignore[call-overload]  # tokens are buffer addresses
            self.tx.driver.disable_interrupts()
        addr = self._tx_free.pop()
        self.mem.write(addr, ZERO_HEADER + frame)
        self.tx.driver.add(out=[(addr, HEADER_SIZE + len(frame))], token=addr)
        self.frontend.kick(self.tx)
        self.sent += 1

    # -- receive -------------------------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> bytes:
        """The next frame received, without its virtio-net header; its buffer goes straight back to the device.

        Raises BackendError if nothing arrives within ``timeout`` (default: the front-end's timeout).
        """
        if not self._rx_done:
            done = self.frontend.wait(self.rx, timeout)
            self._rx_done.extend((int(a), n) for a, n in done)  # type: ignore[call-overload]  # tokens: addresses
        addr, written = self._rx_done.popleft()
        try:
            if written < HEADER_SIZE:
                raise BackendError(f"receive buffer {addr:#x}: the device wrote {written} bytes, "
                                   f"less than the {HEADER_SIZE}-byte header")
            # The header is not checked: with no offloads it carries nothing, and num_buffers, which the spec
            # says must be 1 without MRG_RXBUF, is left 0 by some back-ends (DPDK's vhost library among them).
            frame = self.mem.read(addr + HEADER_SIZE, written - HEADER_SIZE)
        finally:
            # Give the buffer back whatever happened: a lost receive buffer would shrink the queue for good.
            self.rx.driver.add(in_=[(addr, BUFFER_SIZE)], token=addr)
            self.frontend.kick(self.rx)
        self.received += 1
        return frame
