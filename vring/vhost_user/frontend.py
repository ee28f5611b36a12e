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
    create_driver_queue, inflight_region_size,
)
from .._features import Feature
from .._layout import RingLayout
from ..device import ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK
from ..notify import RingError, wait_for_used
from .inflight import InflightDescription, recorded_in_flight
from .protocol import (
    CONFIG_HEAD, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, FLAG_REPLY, INFLIGHT, MEM_REGION, MEM_TABLE_HEAD, REPLYING,
    U64, VERSION, VRING_ADDR, VRING_STATE, Message, ProtocolError, ProtocolFeature, Request, connect,
    decode_ring_base, encode_ring_base, recv_message, send_message,
)

log = logging.getLogger("vring.vhost_user.frontend")

GPA_BASE = 0x1_0000_0000  # 4 GiB: far from where the memfd lands in our address space
PAGE = mmap.PAGESIZE
WANTED_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
                            | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.INFLIGHT_SHMFD
                            | ProtocolFeature.RESET_DEVICE | ProtocolFeature.STATUS)


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


@dataclass
class KeptInflight:
    """The inflight buffer a back-end made (GET_INFLIGHT_FD), kept to hand to every back-end after it."""

    fd: int
    map: mmap.mmap
    description: InflightDescription

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


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
        self.wanted = 0  # the features asked for, asked again of a back-end after a reconnect
        self.inflight: KeptInflight | None = None
        self.memory_shared = False  # with the back-end of this connection (a device reset keeps it)
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
            self.memory_shared = False
        except (FileNotFoundError, ConnectionRefusedError):
            raise BackendError(f"no back-end listening on {self.path} after {self.timeout} s") from None
        return self

    def close(self) -> None:
        self._forget_queues()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _forget_queues(self) -> None:
        """Close the rings' eventfds and drop the inflight buffer: nothing of the device's set-up is kept."""
        for q in self.queues:
            for fd in (q.kick, q.call, q.err):
                os.close(fd)
        self.queues = []
        if self.inflight is not None:
            self.inflight.close()
            self.inflight = None

    def reconnect(self, timeout: float | None = None) -> None:
        """The back-end went away (killed, crashed, upgraded): connect to the one now listening on the same path
        (retrying for up to ``timeout`` seconds, the front-end's timeout by default) and set the device up again
        where it was, as QEMU does with ``reconnect=1``: the same features and memory, the inflight buffer the
        last back-end recorded in, and every ring at its current state — a split ring at the used index read
        from its used ring, a packed ring at its initial state (a back-end with the inflight record takes both
        from the record) — then kick every ring."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        wait = self.timeout if timeout is None else timeout
        try:
            self.sock = connect(self.path, wait)
            self.sock.settimeout(self.timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise BackendError(f"no back-end listening on {self.path} after {wait} s") from None
        features = self.features
        if self.negotiate(self.wanted) != features:
            raise BackendError(f"the new back-end grants features {self.features:#x}, not {features:#x} as before")
        self.share_memory()
        if self.inflight is not None and not self.protocol_features & ProtocolFeature.INFLIGHT_SHMFD:
            # As QEMU: the rings restart at their used index (split), and what was in flight is served again
            log.warning("the new back-end does not offer INFLIGHT_SHMFD: it cannot know what was in flight")
            self.inflight.close()
            self.inflight = None
        if self.inflight is not None:
            self._set_inflight()
        packed = bool(features & Feature.RING_PACKED)
        for q in self.queues:
            if packed:
                base = encode_ring_base(QueueState(0, 0), packed)
            else:
                base = int.from_bytes(self.mem.read(q.layout.device_area + 2, 2), "little")  # used->idx
            self._setup_ring(q, base)
        self._enable(self.queues)
        self._add_status(DRIVER_OK)
        for q in self.queues:
            # Kicked whether or not the driver asked: the new back-end must look at every ring once (and the
            # driver queue may be in another thread's hands, so it is not asked).
            os.eventfd_write(q.kick, 1)

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
        msg = self._reply_message(request)
        msg.close_fds()
        return msg.payload

    def _reply_message(self, request: Request) -> Message:
        """The reply to ``request``, with any fds it carries (the caller's to close)."""
        assert self.sock is not None
        try:
            msg = recv_message(self.sock)
        except socket.timeout:
            raise BackendError(f"{request.name}: no reply in {self.timeout} s") from None
        except ProtocolError as exc:
            raise BackendError(f"{request.name}: {exc}") from None
        if msg.request != request or not msg.flags & FLAG_REPLY:
            msg.close_fds()
            raise BackendError(f"{request.name}: got {msg.name} (flags {msg.flags:#x}) instead of its reply")
        return msg

    def _u64(self, request: Request) -> int:
        reply = self.request(request)
        if reply is None or len(reply) != U64.size:
            raise BackendError(f"{request.name}: reply of {0 if reply is None else len(reply)} bytes, expected 8")
        return U64.unpack(reply)[0]

    # -- negotiation ---------------------------------------------------------------------------------------
    def negotiate(self, wanted: int) -> int:
        """Features: what the back-end offers of ``wanted`` (VERSION_1 is mandatory); protocol features too."""
        self.protocol_features = 0  # a back-end after a reconnect may offer less
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
        self.wanted = int(wanted)
        self.features = features
        self.acked_protocol_features = bool(transport)
        self._add_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        log.info("features %#x, protocol features %#x", features, self.protocol_features)
        return features

    def queue_num(self) -> int:
        if not self.protocol_features & ProtocolFeature.MQ:
            return 1
        return self._u64(Request.GET_QUEUE_NUM)

    # -- device status and reset ---------------------------------------------------------------------------
    def _need(self, feature: ProtocolFeature) -> None:
        if not self.protocol_features & feature:
            raise BackendError(f"the back-end does not offer the {feature.name} protocol feature")

    def get_status(self) -> int:
        """The device status byte (GET_STATUS); DEVICE_NEEDS_RESET (64) once a ring broke on bad input."""
        self._need(ProtocolFeature.STATUS)
        return self._u64(Request.GET_STATUS)

    def set_status(self, status: int) -> None:
        self._need(ProtocolFeature.STATUS)
        self.request(Request.SET_STATUS, U64.pack(status))

    def _add_status(self, bits: int) -> None:
        """Where STATUS is negotiated, tell the back-end how far the driver got, as QEMU does (FEATURES_OK once
        the features are set, DRIVER_OK once the rings are): some back-ends (DPDK's) start no ring before
        DRIVER_OK."""
        if self.protocol_features & ProtocolFeature.STATUS:
            self.set_status(self.get_status() | bits)

    def reset_device(self) -> None:
        """RESET_DEVICE: the back-end stops every ring and forgets the device's set-up (features, rings, inflight
        buffer), keeping the memory; so does this front-end. Negotiate and set the queues up again after it."""
        self._need(ProtocolFeature.RESET_DEVICE)
        self.request(Request.RESET_DEVICE)
        self._forget_queues()
        self.features = 0

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
        self.memory_shared = True
        if self.protocol_features & ProtocolFeature.CONFIGURE_MEM_SLOTS:
            self.request(Request.ADD_MEM_REG, bytes(8) + self._region(), [self.memfd])
        else:
            self.request(Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + self._region(), [self.memfd])

    def uva_of(self, gpa: int) -> int:
        return self.uva + (gpa - GPA_BASE)

    # -- the inflight buffer -------------------------------------------------------------------------------
    def _get_inflight(self, count: int, size: int) -> None:
        """GET_INFLIGHT_FD: the back-end makes the buffer for ``count`` rings of ``size``; map and keep it."""
        assert self.sock is not None, "connect() first"
        send_message(self.sock, Request.GET_INFLIGHT_FD, InflightDescription(0, 0, count, size).pack())
        msg = self._reply_message(Request.GET_INFLIGHT_FD)
        try:
            if len(msg.payload) != INFLIGHT.size or len(msg.fds) != 1:
                raise BackendError(f"GET_INFLIGHT_FD: reply of {len(msg.payload)} bytes and {len(msg.fds)} fds, "
                                   f"expected {INFLIGHT.size} and 1")
            try:
                description = InflightDescription.unpack(msg.payload, "GET_INFLIGHT_FD reply", count, mapping=True)
                mapped = mmap.mmap(msg.fds[0], description.mmap_size, offset=description.mmap_offset)
            except (ProtocolError, OSError, ValueError) as exc:
                raise BackendError(f"GET_INFLIGHT_FD: {exc}") from None
            if (description.num_queues, description.queue_size) != (count, size):
                mapped.close()
                raise BackendError(f"GET_INFLIGHT_FD: a buffer for {description.num_queues} queues of "
                                   f"{description.queue_size}, not the {count} of {size} asked for")
        except BaseException:
            msg.close_fds()
            raise
        self.inflight = KeptInflight(msg.fds[0], mapped, description)

    def _set_inflight(self) -> None:
        assert self.inflight is not None
        self.request(Request.SET_INFLIGHT_FD, self.inflight.description.pack(), [self.inflight.fd])

    def inflight_count(self, queue: int) -> int:
        """How many chains of ring ``queue`` the back-end has recorded as in flight in the inflight buffer (0
        without one): popped and not yet completed, as the record says right now."""
        if self.inflight is None:
            return 0
        d = self.inflight.description
        packed = bool(self.features & Feature.RING_PACKED)
        region_size = inflight_region_size(d.queue_size, packed)
        region = memoryview(self.inflight.map)[queue * region_size:(queue + 1) * region_size]
        try:
            return recorded_in_flight(region, d.queue_size, packed)
        finally:
            region.release()

    # -- memory and rings (continued) ----------------------------------------------------------------------
    def setup_queues(self, count: int, size: int = 128, **driver_kwargs: int) -> list[FrontQueue]:
        """Share memory, then set up ``count`` rings of ``size`` and start them (kick, call, enable). A back-end
        that offers INFLIGHT_SHMFD is asked for an inflight buffer first, as QEMU does, so that a ``reconnect``
        to its successor loses no request."""
        if not self.memory_shared:
            self.share_memory()
        if self.protocol_features & ProtocolFeature.INFLIGHT_SHMFD:
            if self.inflight is None:
                self._get_inflight(count, size)
            self._set_inflight()
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
            kick, call, err = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3))
            queue = FrontQueue(index, driver, kick, call, err, layout)
            self._setup_ring(queue, fresh)
            self.queues.append(queue)
        self._enable(self.queues[-count:])
        self._add_status(DRIVER_OK)
        return self.queues

    def _setup_ring(self, q: FrontQueue, base: int) -> None:
        """Hand the back-end ring ``q``: its size, ``base``, addresses and eventfds (the kick starts it)."""
        layout = q.layout
        # SET_VRING_ADDR's desc, "used" and "avail": for a packed ring the device and driver event areas
        areas = (layout.desc, layout.device_area, layout.driver_area)
        self.request(Request.SET_VRING_NUM, VRING_STATE.pack(q.index, layout.size))
        self.request(Request.SET_VRING_BASE, VRING_STATE.pack(q.index, base))
        self.request(Request.SET_VRING_ADDR, VRING_ADDR.pack(q.index, 0, *(self.uva_of(a) for a in areas), 0))
        self.request(Request.SET_VRING_CALL, U64.pack(q.index), [q.call])
        self.request(Request.SET_VRING_ERR, U64.pack(q.index), [q.err])
        self.request(Request.SET_VRING_KICK, U64.pack(q.index), [q.kick])

    def _enable(self, queues: list[FrontQueue]) -> None:
        if self.acked_protocol_features:
            for q in queues:
                self.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(q.index, 1))

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
