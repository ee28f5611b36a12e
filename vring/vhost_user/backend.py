"""vhost-user back-end: serve a VirtioDevice to QEMU (or any vhost-user front-end) over a unix socket.

One thread per connection runs a selector over the socket and the queues' kick eventfds. Protocol errors close
that connection (with a log line naming the check) and the server goes on accepting; a malformed ring (bad guest
input) latches only its queue, writes the queue's error eventfd and leaves the connection up.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import DeviceQueue, GuestMemory, PackedDeviceQueue
from .._errors import VringError
from .._features import Feature, MAX_QUEUE_SIZE
from .._layout import PackedLayout, SplitLayout
from .._state import QueueState
from ..device import VirtioDevice
from .protocol import (
    CONFIG_HEAD, MAX_CONFIG_SIZE, MEM_REGION, MEM_TABLE_HEAD, MAX_FDS, U64, VRING_ADDR, VRING_IDX_MASK,
    VRING_NOFD_MASK, VRING_STATE, FLAG_REPLY, VERSION, Message, PeerClosed, ProtocolError, ProtocolFeature,
    Request, recv_message, send_message,
)

log = logging.getLogger("vring.vhost_user")

OFFERED_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
                             | ProtocolFeature.CONFIGURE_MEM_SLOTS)
MAX_MEM_SLOTS = 32
POLL_SECONDS = 50e-6  # how long a queue that ran dry is polled before it sleeps on its kick eventfd
PROTOCOL_FEATURES_BIT = int(Feature.VHOST_USER_PROTOCOL_FEATURES)


@dataclass
class MemRegion:
    gpa: int
    size: int
    uva: int  # the front-end's user address of the region (what SET_VRING_ADDR speaks in)
    mmap_offset: int


@dataclass
class Vring:
    index: int
    num: int = 0
    addr: tuple[int, int, int] | None = None  # desc, avail, used, as front-end user addresses
    base: int = 0
    kick: int = -1
    call: int = -1
    err: int = -1
    enabled: bool = False
    queue: DeviceQueue | PackedDeviceQueue | None = None  # while the ring is started (kick received, not stopped)
    broken: bool = False

    def close_fds(self) -> None:
        for name in ("kick", "call", "err"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class Connection:
    """One front-end session: its negotiation, memory table and rings."""

    def __init__(self, sock: socket.socket, device: VirtioDevice, name: str) -> None:
        self.sock = sock
        self.device = device
        self.name = name
        self.features = 0
        self.protocol_features = 0
        self.mem = GuestMemory()
        self.regions: list[MemRegion] = []
        self.vrings = [Vring(i) for i in range(device.num_queues)]
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for key, _ in self.selector.select(timeout=0.5):
                    if key.data is None:
                        self._handle(recv_message(self.sock))
                    else:
                        self._kicked(key.data)
        except PeerClosed:
            log.info("%s: front-end disconnected", self.name)
        except ProtocolError as exc:
            log.error("%s: protocol error, closing the connection: %s", self.name, exc)
        except OSError as exc:
            log.error("%s: connection failed: %s", self.name, exc)
        finally:
            self.close()

    def close(self) -> None:
        for vring in self.vrings:
            vring.queue = None
            vring.close_fds()
        try:
            self.selector.close()
        finally:
            self.sock.close()

    # -- messages ------------------------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        try:
            request = Request(msg.request)
        except ValueError:
            msg.close_fds()
            raise ProtocolError(f"unknown request {msg.request}") from None
        handler = getattr(self, f"_on_{request.name.lower()}", None)
        if handler is None:
            msg.close_fds()
            raise ProtocolError(f"{request.name} is not supported")
        log.debug("%s: %s (%d bytes, %d fds)", self.name, request.name, len(msg.payload), len(msg.fds))
        try:
            reply = handler(msg)
        finally:
            msg.close_fds()  # whatever the handler did not take
        if isinstance(reply, bytes):
            self._reply(request, reply)
        elif msg.need_reply and self.protocol_features & ProtocolFeature.REPLY_ACK:
            self._reply(request, U64.pack(0 if reply is None else 1))  # REPLY_ACK: 0 is success

    def _reply(self, request: Request, payload: bytes) -> None:
        send_message(self.sock, request, payload, flags=VERSION | FLAG_REPLY)

    @staticmethod
    def _expect(msg: Message, size: int, fds: int = 0) -> None:
        if len(msg.payload) != size:
            raise ProtocolError(f"{msg.name}: payload of {len(msg.payload)} bytes, expected {size}")
        if len(msg.fds) != fds:
            raise ProtocolError(f"{msg.name}: {len(msg.fds)} file descriptors, expected {fds}")

    def _vring(self, msg: Message, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise ProtocolError(f"{msg.name}: queue index {index} is out of range (the device has "
                                f"{len(self.vrings)})")
        return self.vrings[index]

    def _on_get_features(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        return U64.pack(self.device.features | PROTOCOL_FEATURES_BIT)

    def _on_set_features(self, msg: Message) -> None:
        self._expect(msg, U64.size)
        (features,) = U64.unpack(msg.payload)
        offered = self.device.features | PROTOCOL_FEATURES_BIT
        if features & ~offered:
            raise ProtocolError(f"SET_FEATURES: {features & ~offered:#x} were never offered")
        self.features = features
        self.device.negotiate(features & ~PROTOCOL_FEATURES_BIT)
        if not features & Feature.VERSION_1:
            log.info("%s: driver did not accept VERSION_1: serving it as a legacy little-endian driver", self.name)
        log.info("%s: features %#x negotiated", self.name, features)

    def _on_get_protocol_features(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        return U64.pack(int(OFFERED_PROTOCOL_FEATURES))

    def _on_set_protocol_features(self, msg: Message) -> None:
        self._expect(msg, U64.size)
        (features,) = U64.unpack(msg.payload)
        if features & ~int(OFFERED_PROTOCOL_FEATURES):
            raise ProtocolError(f"SET_PROTOCOL_FEATURES: {features & ~int(OFFERED_PROTOCOL_FEATURES):#x} were "
                                "never offered")
        self.protocol_features = features
        log.info("%s: protocol features %s", self.name,
                 "|".join(f.name or "" for f in ProtocolFeature if f & features) or "none")

    def _on_set_owner(self, msg: Message) -> None:
        self._expect(msg, 0)  # this connection is its session: nothing to record

    def _on_reset_owner(self, msg: Message) -> None:
        self._expect(msg, 0)
        self._reset()

    _on_reset_device = _on_reset_owner  # the same for a back-end with no state outside its rings

    def _reset(self) -> None:
        for vring in self.vrings:
            self._stop(vring)
            vring.close_fds()
        self.vrings = [Vring(i) for i in range(self.device.num_queues)]
        self.features = 0
        self.device.reset()

    def _on_get_queue_num(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        return U64.pack(self.device.num_queues)

    def _on_get_max_mem_slots(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        return U64.pack(MAX_MEM_SLOTS)

    # -- memory --------------------------------------------------------------------------------------------
    def _on_set_mem_table(self, msg: Message) -> None:
        if len(msg.payload) < MEM_TABLE_HEAD.size:
            raise ProtocolError(f"SET_MEM_TABLE: payload of {len(msg.payload)} bytes is too short")
        nregions, _ = MEM_TABLE_HEAD.unpack_from(msg.payload)
        if not 1 <= nregions <= MAX_FDS:
            raise ProtocolError(f"SET_MEM_TABLE: {nregions} regions (1 to {MAX_FDS} allowed)")
        self._expect(msg, MEM_TABLE_HEAD.size + nregions * MEM_REGION.size, nregions)
        regions = [MemRegion(*MEM_REGION.unpack_from(msg.payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size))
                   for i in range(nregions)]
        new = GuestMemory()
        try:
            for i, (region, fd) in enumerate(zip(regions, msg.fds)):
                self._map(new, region, fd, regions[:i])
        finally:
            msg.close_fds()  # the mappings keep the memory; the fds are not needed any more
        # The rings keep using the same GuestMemory object: swap its regions for the new ones.
        for gpa, _size in self.mem.regions:
            self.mem.remove_region(gpa)
        for region in regions:
            self.mem.add_region(region.gpa, new.view(region.gpa, region.size))
        self.regions = regions
        log.info("%s: memory table of %d regions: %s", self.name, nregions,
                 ", ".join(f"{r.gpa:#x}+{r.size:#x}" for r in regions))

    def _on_add_mem_reg(self, msg: Message) -> None:
        self._expect(msg, 8 + MEM_REGION.size, 1)
        region = MemRegion(*MEM_REGION.unpack_from(msg.payload, 8))
        if len(self.regions) >= MAX_MEM_SLOTS:
            msg.close_fds()
            raise ProtocolError(f"ADD_MEM_REG: all {MAX_MEM_SLOTS} memory slots are in use")
        try:
            self._map(self.mem, region, msg.fds[0], self.regions)
        finally:
            msg.close_fds()
        self.regions.append(region)
        log.info("%s: added memory region %#x+%#x", self.name, region.gpa, region.size)

    def _on_rem_mem_reg(self, msg: Message) -> None:
        if len(msg.payload) != 8 + MEM_REGION.size or len(msg.fds) > 1:
            raise ProtocolError(f"REM_MEM_REG: payload of {len(msg.payload)} bytes and {len(msg.fds)} fds")
        msg.close_fds()  # QEMU sends the region's fd along; it is not needed to remove it
        gpa, size, uva, _ = MEM_REGION.unpack_from(msg.payload, 8)
        for i, region in enumerate(self.regions):
            if (region.gpa, region.size, region.uva) == (gpa, size, uva):
                self.mem.remove_region(gpa)
                del self.regions[i]
                log.info("%s: removed memory region %#x+%#x", self.name, gpa, size)
                return
        raise ProtocolError(f"REM_MEM_REG: no region {gpa:#x}+{size:#x} at user address {uva:#x}")

    @staticmethod
    def _map(mem: GuestMemory, region: MemRegion, fd: int, others: list[MemRegion]) -> None:
        if region.size == 0 or region.gpa + region.size > 1 << 64 or region.uva + region.size > 1 << 64:
            raise ProtocolError(f"memory region {region.gpa:#x}+{region.size:#x} is empty or wraps")
        for other in others:
            if region.uva < other.uva + other.size and other.uva < region.uva + region.size:
                raise ProtocolError(f"memory region at user address {region.uva:#x} overlaps another")
        try:
            mem.add_region_fd(region.gpa, region.size, fd, region.mmap_offset)
        except (VringError, OSError, ValueError) as exc:
            raise ProtocolError(f"memory region {region.gpa:#x}+{region.size:#x} cannot be mapped: {exc}") from None

    def _uva_to_gpa(self, msg: Message, uva: int, length: int) -> int:
        for region in self.regions:
            if region.uva <= uva and uva + length <= region.uva + region.size:
                return region.gpa + (uva - region.uva)
        raise ProtocolError(f"{msg.name}: ring address {uva:#x} (+{length}) is not in any memory region")

    # -- rings ---------------------------------------------------------------------------------------------
    def _on_set_vring_num(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, num = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        if not 1 <= num <= min(MAX_QUEUE_SIZE, self.device.max_queue_size) or num & (num - 1):
            raise ProtocolError(f"SET_VRING_NUM: queue {index} size {num} is not a power of two up to "
                                f"{min(MAX_QUEUE_SIZE, self.device.max_queue_size)}")
        vring.num = num

    def _on_set_vring_addr(self, msg: Message) -> None:
        self._expect(msg, VRING_ADDR.size)
        index, _flags, desc, used, avail, _log = VRING_ADDR.unpack(msg.payload)
        self._vring(msg, index).addr = (desc, avail, used)

    def _on_set_vring_base(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, base = VRING_STATE.unpack(msg.payload)
        # Split: the next avail index. Packed (QEMU 7.2): bits 0-14 last avail index, 15 its wrap counter,
        # 16-30 used index, 31 its wrap counter.
        if base > 0xFFFF and not self.features & Feature.RING_PACKED:
            raise ProtocolError(f"SET_VRING_BASE: queue {index} base {base:#x} is not a 16-bit index")
        self._vring(msg, index).base = base

    def _on_get_vring_base(self, msg: Message) -> bytes:
        self._expect(msg, VRING_STATE.size)
        index, _ = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        self._stop(vring)
        log.info("%s: queue %d stopped at %d", self.name, index, vring.base)
        return VRING_STATE.pack(index, vring.base)

    def _eventfd_message(self, msg: Message) -> tuple[Vring, int]:
        if len(msg.payload) != U64.size:
            raise ProtocolError(f"{msg.name}: payload of {len(msg.payload)} bytes, expected 8")
        (value,) = U64.unpack(msg.payload)
        nofd = bool(value & VRING_NOFD_MASK)
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise ProtocolError(f"{msg.name}: unknown bits in {value:#x}")
        if len(msg.fds) != (0 if nofd else 1):
            raise ProtocolError(f"{msg.name}: {len(msg.fds)} file descriptors with the no-fd flag "
                                f"{'set' if nofd else 'clear'}")
        vring = self._vring(msg, value & VRING_IDX_MASK)
        fd = -1 if nofd else msg.fds[0]
        msg.fds = []
        return vring, fd

    def _on_set_vring_kick(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        self._stop(vring)  # a new kick for a running ring restarts it where it is
        if vring.kick >= 0:
            self._unwatch(vring)
            os.close(vring.kick)
        vring.kick = fd
        if fd < 0:
            raise ProtocolError("SET_VRING_KICK without a file descriptor: polling rings are not supported")
        if not self.features & PROTOCOL_FEATURES_BIT:
            vring.enabled = True  # without protocol features a ring starts enabled (vhost-user.rst)
        self._start(vring, msg)

    def _on_set_vring_call(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        if vring.call >= 0:
            os.close(vring.call)
        vring.call = fd

    def _on_set_vring_err(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        if vring.err >= 0:
            os.close(vring.err)
        vring.err = fd

    def _on_set_vring_enable(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, enable = VRING_STATE.unpack(msg.payload)
        if enable > 1:
            raise ProtocolError(f"SET_VRING_ENABLE: queue {index} state {enable} is neither 0 nor 1")
        vring = self._vring(msg, index)
        vring.enabled = bool(enable)
        log.info("%s: queue %d %s", self.name, index, "enabled" if enable else "disabled")
        if vring.enabled and vring.queue is not None:
            self._serve(vring)  # work the driver queued before the ring was enabled

    def _start(self, vring: Vring, msg: Message) -> None:
        """Kick received: translate the ring addresses and take the ring over at its base."""
        if vring.num == 0 or vring.addr is None:
            raise ProtocolError(f"{msg.name}: queue {vring.index} started before its size and addresses were set")
        desc_uva, avail_uva, used_uva = vring.addr
        num = vring.num
        packed = bool(self.features & Feature.RING_PACKED)
        # Packed: "avail" is the driver event area and "used" the device event area, 4 bytes each.
        layout_gpas = (self._uva_to_gpa(msg, desc_uva, 16 * num),
                       self._uva_to_gpa(msg, avail_uva, 4 if packed else 6 + 2 * num),
                       self._uva_to_gpa(msg, used_uva, 4 if packed else 6 + 8 * num))
        features = self.features & ~PROTOCOL_FEATURES_BIT
        queue: DeviceQueue | PackedDeviceQueue
        try:
            if packed:
                queue = PackedDeviceQueue(self.mem, PackedLayout(num, *layout_gpas), features)
                base = vring.base
                queue.restore(QueueState(base & 0x7FFF, (base >> 16) & 0x7FFF, (base >> 15) & 1, base >> 31))
            else:
                queue = DeviceQueue(self.mem, SplitLayout(num, *layout_gpas), features)
                # The used index comes from the ring itself, as a back-end taking over a running ring must read it.
                queue.restore(QueueState(vring.base, None))
        except (VringError, ValueError, TypeError) as exc:
            raise ProtocolError(f"{msg.name}: queue {vring.index} cannot start: {exc}") from None
        vring.queue = queue
        vring.broken = False
        self.selector.register(vring.kick, selectors.EVENT_READ, vring)
        log.info("%s: queue %d started (%s): size %d, desc %#x, avail %#x, used %#x, base %#x", self.name,
                 vring.index, "packed" if packed else "split", num, *layout_gpas, vring.base)
        if vring.enabled:
            self._serve(vring)

    def _stop(self, vring: Vring) -> None:
        if vring.queue is not None:
            state = vring.queue.state
            if isinstance(vring.queue, PackedDeviceQueue):  # the encoding SET_VRING_BASE takes
                vring.base = (state.last_avail_idx | state.avail_wrap << 15 | (state.used_idx or 0) << 16
                              | state.used_wrap << 31)
            else:
                vring.base = state.last_avail_idx
            vring.queue = None
        self._unwatch(vring)

    def _unwatch(self, vring: Vring) -> None:
        if vring.kick >= 0:
            try:
                self.selector.unregister(vring.kick)
            except (KeyError, ValueError):
                pass

    def _on_get_config(self, msg: Message) -> bytes:
        if len(msg.payload) < CONFIG_HEAD.size:
            raise ProtocolError(f"GET_CONFIG: payload of {len(msg.payload)} bytes is too short")
        offset, size, flags = CONFIG_HEAD.unpack_from(msg.payload)
        self._expect(msg, CONFIG_HEAD.size + size)
        if offset + size > MAX_CONFIG_SIZE:
            raise ProtocolError(f"GET_CONFIG: {size} bytes at {offset} is past the {MAX_CONFIG_SIZE}-byte limit")
        config = bytes(self.device.config) + bytes(MAX_CONFIG_SIZE)  # past the device's fields: zeros
        return CONFIG_HEAD.pack(offset, size, flags) + config[offset:offset + size]

    def _on_set_config(self, msg: Message) -> bool | None:
        if len(msg.payload) < CONFIG_HEAD.size:
            raise ProtocolError(f"SET_CONFIG: payload of {len(msg.payload)} bytes is too short")
        offset, size, _flags = CONFIG_HEAD.unpack_from(msg.payload)
        self._expect(msg, CONFIG_HEAD.size + size)
        try:
            self.device.write_config(offset, msg.payload[CONFIG_HEAD.size:])
        except VringError as exc:
            # A guest's config write is guest input: refuse it and keep the connection (QEMU 7.2 aborts if the
            # back-end drops the connection here).
            log.warning("%s: SET_CONFIG refused: %s", self.name, exc)
            return False
        return None

    # -- serving -------------------------------------------------------------------------------------------
    def _kicked(self, vring: Vring) -> None:
        try:
            os.eventfd_read(vring.kick)
        except BlockingIOError:
            pass
        if vring.queue is not None and vring.enabled:
            self._serve(vring)

    def _serve(self, vring: Vring) -> None:
        queue = vring.queue
        if queue is None or vring.broken:
            return
        try:
            while True:
                queue.disable_notifications()
                served, notify = self.device.process(vring.index, queue)
                if notify and vring.call >= 0:
                    os.eventfd_write(vring.call, 1)
                if served:
                    continue
                # Poll briefly before sleeping: a driver that keeps the ring busy then needs no kick (a syscall on
                # each side) and its next request waits for no wake-up.
                deadline = time.perf_counter() + POLL_SECONDS
                while not queue.avail_pending() and time.perf_counter() < deadline:
                    pass
                if not queue.avail_pending() and not queue.enable_notifications():
                    return
        except VringError as exc:
            vring.broken = True
            log.error("%s: queue %d stopped: %s", self.name, vring.index, exc)
            if vring.err >= 0:
                os.eventfd_write(vring.err, 1)


class VhostUserBackend:
    """A vhost-user server on a unix socket; each connection gets a fresh device from ``device_factory``."""

    def __init__(self, device_factory: Callable[[], VirtioDevice], path: str) -> None:
        self.device_factory = device_factory
        self.path = path
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.listener: socket.socket | None = None
        self.connections = 0

    def listen(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        log.info("listening on %s", self.path)

    def serve_forever(self) -> None:
        if self.listener is None:
            self.listen()
        assert self.listener is not None
        try:
            while not self.stop_event.is_set():
                try:
                    sock, _ = self.listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    if self.stop_event.is_set():
                        break
                    raise
                sock.settimeout(None)
                self.connections += 1
                name = f"connection {self.connections}"
                log.info("%s: front-end connected", name)
                try:
                    device = self.device_factory()
                except Exception:
                    log.exception("%s: cannot create the device", name)
                    sock.close()
                    continue
                conn = Connection(sock, device, name)
                thread = threading.Thread(target=conn.run, args=(self.stop_event,), name=name, daemon=True)
                thread.start()
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        for thread in self.threads:
            thread.join(timeout=2)
