"""vhost-user front-end: drive any vhost-user back-end from Python, no VM needed.

The front-end owns the "guest" memory (a memfd it shares with the back-end), sets up the rings with
``vring.create_driver_queue`` and hands the back-end their addresses, eventfds and state, as QEMU does for a guest.
Guest-physical addresses are chosen apart from the front-end's own user addresses, so that a back-end that mixes
the two up fails visibly. Every reply is checked; every wait has a timeout.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .. import (
    DriverQueue, GuestMemory, PackedDriverQueue, QueueState, contiguous_bytes, contiguous_layout,
    create_driver_queue,
)
from .._features import Feature
from .._layout import RingLayout
from ..notify import RingError, wait_for_used
from .protocol import (
    CONFIG_HEAD, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, FLAG_REPLY, MEM_REGION, MEM_TABLE_HEAD, REPLYING, U64,
    VERSION, VRING_ADDR, VRING_STATE, ProtocolError, ProtocolFeature, Request, connect, decode_ring_base,
    encode_ring_base, recv_message, send_message,
)

log = logging.getLogger("vring.vhost_user.frontend")

GPA_BASE = 0x1_0000_0000  # 4 GiB: far from where the memfd lands in our address space
PAGE = mmap.PAGESIZE
WANTED_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
                            | ProtocolFeature.CONFIGURE_MEM_SLOTS)


class BackendError(Exception):
    """The back-end broke the protocol, refused a request or did not answer in time."""


@dataclass
class FrontQueue:
    index: int
    driver: DriverQueue | PackedDriverQueue
    kick: int
    call: int
    err: int
    layout: RingLayout


class Allocator:
    """First-fit allocator of buffers in the shared memory (guest-physical addresses), merging freed neighbours."""

    def __init__(self, start: int, size: int) -> None:
        self.free = [(start, size)]  # sorted (address, size)
        self.used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 64) -> int:
        for i, (addr, length) in enumerate(self.free):
            aligned = (addr + align - 1) & ~(align - 1)
            if aligned + size <= addr + length:
                rest = [(addr, aligned - addr)] if aligned > addr else []
                if aligned + size < addr + length:
                    rest.append((aligned + size, addr + length - aligned - size))
                self.free[i:i + 1] = rest
                self.used[aligned] = size
                return aligned
        raise MemoryError(f"no {size} bytes free in the shared memory")

    def release(self, addr: int) -> None:
        size = self.used.pop(addr)
        self.free.append((addr, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for a, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((a, n))
        self.free = merged


class Frontend:
    """A vhost-user front-end session with one back-end socket."""

    def __init__(self, path: str, *, mem_size: int = 64 << 20, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.features = 0  # the negotiated virtio features (without the transport's F_PROTOCOL_FEATURES)
        self.protocol_features = 0
        self.acked_protocol_features = False  # SET_FEATURES carried F_PROTOCOL_FEATURES: rings start disabled
        self.queues: list[FrontQueue] = []
        self.mem_size = mem_size
        self.memfd = os.memfd_create("vring-frontend", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, mem_size)
        self.map = mmap.mmap(self.memfd, mem_size)
        self.uva = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.mem = GuestMemory()
        self.mem.add_region(GPA_BASE, self.map)
        self.allocator = Allocator(GPA_BASE, mem_size)

    # -- connection ----------------------------------------------------------------------------------------
    def connect(self) -> "Frontend":
        try:
            self.sock = connect(self.path, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise BackendError(f"no back-end listening on {self.path} after {self.timeout} s") from None
        return self

    def close(self) -> None:
        for q in self.queues:
            for fd in (q.kick, q.call, q.err):
                os.close(fd)
        self.queues = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "Frontend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages ------------------------------------------------------------------------------------------
    def request(self, request: Request, payload: bytes = b"", fds: Sequence[int] = ()) -> bytes | None:
        """Send a request; return the reply payload for requests that have one, check the ack for others."""
        assert self.sock is not None, "connect() first"
        ack = request not in REPLYING and bool(self.protocol_features & ProtocolFeature.REPLY_ACK)
        send_message(self.sock, request, payload, fds, VERSION | (FLAG_NEED_REPLY if ack else 0))
        if request in REPLYING or ack:
            reply = self._reply(request)
            if ack:
                if len(reply) != U64.size:
                    raise BackendError(f"{request.name}: ack of {len(reply)} bytes, expected 8")
                if U64.unpack(reply)[0] != 0:
                    raise BackendError(f"{request.name}: the back-end refused it (ack {U64.unpack(reply)[0]})")
                return None
            return reply
        return None

    def _reply(self, request: Request) -> bytes:
        assert self.sock is not None
        try:
            msg = recv_message(self.sock)
        except socket.timeout:
            raise BackendError(f"{request.name}: no reply in {self.timeout} s") from None
        except ProtocolError as exc:
            raise BackendError(f"{request.name}: {exc}") from None
        msg.close_fds()
        if msg.request != request or not msg.flags & FLAG_REPLY:
            raise BackendError(f"{request.name}: got {msg.name} (flags {msg.flags:#x}) instead of its reply")
        return msg.payload

    def _u64(self, request: Request) -> int:
        reply = self.request(request)
        if reply is None or len(reply) != U64.size:
            raise BackendError(f"{request.name}: reply of {0 if reply is None else len(reply)} bytes, expected 8")
        return U64.unpack(reply)[0]

    # -- negotiation ---------------------------------------------------------------------------------------
    def negotiate(self, wanted: int) -> int:
        """Features: what the back-end offers of ``wanted`` (VERSION_1 is mandatory); protocol features too."""
        offered = self._u64(Request.GET_FEATURES)
        if not offered & Feature.VERSION_1:
            raise BackendError(f"the back-end does not offer VERSION_1 (features {offered:#x})")
        transport = offered & F_PROTOCOL_FEATURES  # acked whenever offered: we speak protocol features
        if transport:
            proto = self._u64(Request.GET_PROTOCOL_FEATURES) & int(WANTED_PROTOCOL_FEATURES)
            self.request(Request.SET_PROTOCOL_FEATURES, U64.pack(proto))
            self.protocol_features = proto
        self.request(Request.SET_OWNER)
        features = (int(wanted) | Feature.VERSION_1) & offered & ~F_PROTOCOL_FEATURES
        self.request(Request.SET_FEATURES, U64.pack(features | transport))
        self.features = features
        self.acked_protocol_features = bool(transport)
        log.info("features %#x, protocol features %#x", features, self.protocol_features)
        return features

    def queue_num(self) -> int:
        if not self.protocol_features & ProtocolFeature.MQ:
            return 1
        return self._u64(Request.GET_QUEUE_NUM)

    def get_config(self, size: int, offset: int = 0) -> bytes:
        if not self.protocol_features & ProtocolFeature.CONFIG:
            raise BackendError("the back-end does not offer the CONFIG protocol feature")
        reply = self.request(Request.GET_CONFIG, CONFIG_HEAD.pack(offset, size, 0) + bytes(size))
        assert reply is not None
        if len(reply) != CONFIG_HEAD.size + size or CONFIG_HEAD.unpack_from(reply)[:2] != (offset, size):
            raise BackendError(f"GET_CONFIG: reply of {len(reply)} bytes does not match the {size} asked for")
        return reply[CONFIG_HEAD.size:]

    # -- memory and rings ----------------------------------------------------------------------------------
    def _region(self) -> bytes:
        return MEM_REGION.pack(GPA_BASE, self.mem_size, self.uva, 0)

    def share_memory(self) -> None:
        if self.protocol_features & ProtocolFeature.CONFIGURE_MEM_SLOTS:
            self.request(Request.ADD_MEM_REG, bytes(8) + self._region(), [self.memfd])
        else:
            self.request(Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + self._region(), [self.memfd])

    def uva_of(self, gpa: int) -> int:
        return self.uva + (gpa - GPA_BASE)

    def setup_queues(self, count: int, size: int = 128, **driver_kwargs: int) -> list[FrontQueue]:
        """Share memory, then set up ``count`` rings of ``size`` and start them (kick, call, enable)."""
        self.share_memory()
        features = self.features
        indirect_max = driver_kwargs.pop("indirect_max", 16)
        options: dict[str, Any] = {**driver_kwargs, "indirect_max": indirect_max}  # the driver queue's keywords
        packed = bool(features & Feature.RING_PACKED)
        fresh = encode_ring_base(QueueState(0, 0), packed)  # both indices 0, packed wrap counters 1
        for index in range(count):
            tables = self.allocator.alloc(DriverQueue.indirect_area_bytes(size, indirect_max), PAGE)
            layout = contiguous_layout(features, size, self.allocator.alloc(contiguous_bytes(features, size, PAGE),
                                                                            PAGE), PAGE)
            driver: DriverQueue | PackedDriverQueue = create_driver_queue(
                self.mem, layout, features, indirect_area=tables, **options)
            # SET_VRING_ADDR's desc, "used" and "avail": for a packed ring the device and driver event areas
            areas = (layout.desc, layout.device_area, layout.driver_area)
            kick, call, err = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3))
            self.request(Request.SET_VRING_NUM, VRING_STATE.pack(index, size))
            self.request(Request.SET_VRING_BASE, VRING_STATE.pack(index, fresh))
            self.request(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, *(self.uva_of(a) for a in areas), 0))
            self.request(Request.SET_VRING_CALL, U64.pack(index), [call])
            self.request(Request.SET_VRING_ERR, U64.pack(index), [err])
            self.request(Request.SET_VRING_KICK, U64.pack(index), [kick])
            self.queues.append(FrontQueue(index, driver, kick, call, err, layout))
        if self.acked_protocol_features:
            for index in range(count):
                self.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, 1))
        return self.queues

    def stop_queue(self, index: int) -> int:
        """GET_VRING_BASE: the back-end stops the ring and says where it is: the next available index it would
        serve (for a packed ring without its wrap counter)."""
        reply = self.request(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0))
        assert reply is not None
        if len(reply) != VRING_STATE.size or VRING_STATE.unpack(reply)[0] != index:
            raise BackendError(f"GET_VRING_BASE: bad reply {reply!r} for queue {index}")
        state = decode_ring_base(VRING_STATE.unpack(reply)[1], bool(self.features & Feature.RING_PACKED))
        return state.last_avail_idx

    # -- notifications -------------------------------------------------------------------------------------
    def kick(self, queue: FrontQueue) -> None:
        """Publish what was added; write the kick eventfd if the back-end asked for it."""
        if queue.driver.kick_needed():
            os.eventfd_write(queue.kick, 1)

    def wait(self, queue: FrontQueue, timeout: float | None = None) -> list[tuple[object, int]]:
        """Completed (token, written) pairs, sleeping on the call eventfd until at least one arrives.

        No wake-up is lost: interrupts are re-armed (used_event, or the flag), the used ring is checked again,
        and only then do we sleep.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            done = queue.driver.pop_used()
            if done:
                return done
            try:
                wait_for_used([queue.driver], [queue.call], deadline, [queue.err])
            except RingError:
                if select.select([queue.err], [], [], 0)[0]:  # still readable: wait_for_used does not consume it
                    raise BackendError(f"queue {queue.index}: the back-end signalled an error on the ring") from None
                raise BackendError(f"queue {queue.index}: no completion in time") from None
