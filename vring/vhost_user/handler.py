"""vhost-user message handling for one connection: each request's handler, found in one explicit table, checks
its message, acts on the device, the memory table or a ring, and says what to answer (REPLY_ACK included).

A message that breaks the protocol raises ProtocolError (the connection closes with it); a refusal the protocol
allows (a config write the device does not take) is answered, not raised.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Literal, Protocol, Union

from .._errors import VringError
from .._features import Feature, MAX_QUEUE_SIZE
from .._layout import area_bytes
from ..device import DEVICE_NEEDS_RESET, VirtioDevice
from .inflight import InflightBuffer, InflightDescription
from .memory_table import MAX_MEM_SLOTS, MemoryTable, MemRegion
from .protocol import (
    CONFIG_FLAG_MIGRATION, CONFIG_HEAD, F_PROTOCOL_FEATURES, INFLIGHT, MAX_CONFIG_SIZE, MAX_FDS, MEM_REGION,
    MEM_TABLE_HEAD, U64, VRING_ADDR, VRING_IDX_MASK, VRING_NOFD_MASK, VRING_STATE, Message, ProtocolError,
    ProtocolFeature, Request,
)
from .vring import Vring, not_an_eventfd

log = logging.getLogger("vring.vhost_user")

OFFERED_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
                             | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.INFLIGHT_SHMFD
                             | ProtocolFeature.RESET_DEVICE | ProtocolFeature.STATUS)

_EVENTFD_ROLES = {Request.SET_VRING_KICK: "kick", Request.SET_VRING_CALL: "call", Request.SET_VRING_ERR: "err"}

# What a request's handler returns: the reply payload, or None for success (acked with 0 when the front-end asks
# for REPLY_ACK), or False for a refusal (acked with 1).
Reply = Union[bytes, Literal[False], None]


class KickWatcher(Protocol):
    """The connection's event loop, told which kick eventfds to wake up for."""

    def watch(self, vring: Vring) -> None: ...

    def unwatch(self, vring: Vring) -> None: ...


class Handler:
    """The back-end's side of one front-end session: its negotiation, memory table and rings."""

    def __init__(self, device: VirtioDevice, name: str, kicks: KickWatcher) -> None:
        self.device = device  # its driver_features are the negotiated features: the one copy
        self.name = name
        self.kicks = kicks
        self.protocol_features = 0
        self.acked_protocol_features = False  # SET_FEATURES carried F_PROTOCOL_FEATURES
        self.memory = MemoryTable()
        self.vrings = self._new_vrings()
        self.inflight: InflightBuffer | None = None  # the buffer the rings record what is in flight in
        self._reply_fds: list[int] = []  # sent with the reply being built, then closed (take_reply_fds)
        self._handlers: dict[Request, Callable[[Message], Reply]] = {
            Request.GET_FEATURES: self._on_get_features,
            Request.SET_FEATURES: self._on_set_features,
            Request.GET_PROTOCOL_FEATURES: self._on_get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._on_set_protocol_features,
            Request.SET_OWNER: self._on_set_owner,
            Request.RESET_OWNER: self._on_reset,
            Request.RESET_DEVICE: self._on_reset,  # what RESET_OWNER was used for, now with a name of its own
            Request.SET_STATUS: self._on_set_status,
            Request.GET_STATUS: self._on_get_status,
            Request.GET_INFLIGHT_FD: self._on_get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._on_set_inflight_fd,
            Request.GET_QUEUE_NUM: self._on_get_queue_num,
            Request.GET_MAX_MEM_SLOTS: self._on_get_max_mem_slots,
            Request.SET_MEM_TABLE: self._on_set_mem_table,
            Request.ADD_MEM_REG: self._on_add_mem_reg,
            Request.REM_MEM_REG: self._on_rem_mem_reg,
            Request.SET_VRING_NUM: self._on_set_vring_num,
            Request.SET_VRING_ADDR: self._on_set_vring_addr,
            Request.SET_VRING_BASE: self._on_set_vring_base,
            Request.GET_VRING_BASE: self._on_get_vring_base,
            Request.SET_VRING_KICK: self._on_set_vring_kick,
            Request.SET_VRING_CALL: self._on_set_vring_call,
            Request.SET_VRING_ERR: self._on_set_vring_err,
            Request.SET_VRING_ENABLE: self._on_set_vring_enable,
            Request.GET_CONFIG: self._on_get_config,
            Request.SET_CONFIG: self._on_set_config,
        }

    def _new_vrings(self) -> list[Vring]:
        return [Vring(i, self.device, self.name) for i in range(self.device.num_queues)]

    def close(self) -> None:
        """The session is over: close the fds of a reply never sent and the rings' eventfds, unmap the memory and
        the inflight buffer and close the device."""
        try:
            for fd in self.take_reply_fds():
                os.close(fd)
            for vring in self.vrings:
                vring.close()
            self.memory.close()
            self._set_inflight(None)
        finally:
            self.device.close()

    def take_reply_fds(self) -> list[int]:
        """The fds to send with the reply ``handle`` just returned; the caller closes them once sent."""
        fds, self._reply_fds = self._reply_fds, []
        return fds

    # -- dispatch ------------------------------------------------------------------------------------------
    def handle(self, msg: Message) -> bytes | None:
        """Act on one message; returns the payload of the reply to send (with the fds ``take_reply_fds`` gives),
        or None when nothing is answered."""
        try:
            request = Request(msg.request)
        except ValueError:
            msg.close_fds()
            raise ProtocolError(f"unknown request {msg.request}") from None
        handler = self._handlers.get(request)
        if handler is None:
            msg.close_fds()
            raise ProtocolError(f"{request.name} is not supported")
        log.debug("%s: %s (%d bytes, %d fds)", self.name, request.name, len(msg.payload), len(msg.fds))
        try:
            reply = handler(msg)
        finally:
            msg.close_fds()  # whatever the handler did not take
        if isinstance(reply, bytes):
            return reply
        if msg.need_reply and self.protocol_features & ProtocolFeature.REPLY_ACK:
            return U64.pack(0 if reply is None else 1)  # REPLY_ACK: 0 is success
        return None

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

    # -- negotiation ---------------------------------------------------------------------------------------
    def _on_get_features(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        return U64.pack(self.device.features | F_PROTOCOL_FEATURES)

    def _on_set_features(self, msg: Message) -> None:
        self._expect(msg, U64.size)
        (features,) = U64.unpack(msg.payload)
        offered = self.device.features | F_PROTOCOL_FEATURES
        if features & ~offered:
            raise ProtocolError(f"SET_FEATURES: {features & ~offered:#x} were never offered")
        self.acked_protocol_features = bool(features & F_PROTOCOL_FEATURES)
        self.device.negotiate(features & ~F_PROTOCOL_FEATURES)
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

    def _on_reset(self, msg: Message) -> None:
        """RESET_DEVICE (or RESET_OWNER): stop every ring and forget its set-up, reset the device (features,
        status) and drop the inflight buffer; the memory table and the protocol features stay."""
        self._expect(msg, 0)
        for vring in self.vrings:
            self._stop(vring)
            vring.close()
        self.vrings = self._new_vrings()
        self.acked_protocol_features = False
        self.device.reset()
        self._set_inflight(None)
        log.info("%s: device reset", self.name)

    # -- device status -------------------------------------------------------------------------------------
    def _on_set_status(self, msg: Message) -> None:
        # Only the status byte: a driver that writes 0 on the way to GET_VRING_BASE (QEMU 7.2 stopping the
        # device) keeps its rings where they are.
        self._expect(msg, U64.size)
        (status,) = U64.unpack(msg.payload)
        if status > 0xFF:
            raise ProtocolError(f"SET_STATUS: status {status:#x} is not a byte")
        self.device.set_status(status)
        log.info("%s: device status %#x", self.name, status)

    def _on_get_status(self, msg: Message) -> bytes:
        self._expect(msg, 0)
        broken = any(vring.broken for vring in self.vrings)
        return U64.pack(self.device.status | (DEVICE_NEEDS_RESET if broken else 0))

    # -- inflight buffer -----------------------------------------------------------------------------------
    @property
    def _packed(self) -> bool:
        return bool(self.device.driver_features & Feature.RING_PACKED)

    def _set_inflight(self, buffer: InflightBuffer | None) -> None:
        """Use ``buffer`` for the rings started from now on, unmapping the one before (a started ring keeps its
        region of it mapped until it stops)."""
        if self.inflight is not None:
            self.inflight.close()
        self.inflight = buffer

    def _on_get_inflight_fd(self, msg: Message) -> bytes:
        self._expect(msg, INFLIGHT.size)
        asked = InflightDescription.unpack(msg.payload, msg.name, self.device.num_queues, mapping=False)
        buffer, fd = InflightBuffer.create(asked.num_queues, asked.queue_size, self._packed)
        self._set_inflight(buffer)
        self._reply_fds = [fd]
        log.info("%s: new inflight buffer of %d %s regions of %d entries (%d bytes)", self.name, asked.num_queues,
                 "packed" if self._packed else "split", asked.queue_size, buffer.description.mmap_size)
        return buffer.description.pack()

    def _on_set_inflight_fd(self, msg: Message) -> None:
        self._expect(msg, INFLIGHT.size, 1)
        description = InflightDescription.unpack(msg.payload, msg.name, self.device.num_queues, mapping=True)
        buffer = InflightBuffer.open(msg.fds[0], description, msg.name)  # the mapping keeps the memory
        try:
            buffer.check_fits(self._packed, msg.name)
        except ProtocolError:
            buffer.close()
            raise
        self._set_inflight(buffer)
        log.info("%s: inflight buffer of %d regions of %d entries (%d bytes at %#x)", self.name,
                 description.num_queues, description.queue_size, description.mmap_size, description.mmap_offset)

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
        regions = [MemRegion.unpack_from(msg.payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size,
                                         f"SET_MEM_TABLE: region {i}") for i in range(nregions)]
        self.memory.replace(regions, msg.fds)  # the mappings keep the memory: dispatch closes the fds
        log.info("%s: memory table of %d regions: %s", self.name, nregions,
                 ", ".join(f"{r.gpa:#x}+{r.size:#x}" for r in regions))

    def _on_add_mem_reg(self, msg: Message) -> None:
        self._expect(msg, 8 + MEM_REGION.size, 1)
        region = MemRegion.unpack_from(msg.payload, 8, "ADD_MEM_REG: region")
        self.memory.add(region, msg.fds[0])
        log.info("%s: added memory region %#x+%#x", self.name, region.gpa, region.size)

    def _on_rem_mem_reg(self, msg: Message) -> None:
        # QEMU sends the region's fd along; it is not needed to remove it (dispatch closes it)
        if len(msg.payload) != 8 + MEM_REGION.size or len(msg.fds) > 1:
            raise ProtocolError(f"REM_MEM_REG: payload of {len(msg.payload)} bytes and {len(msg.fds)} fds")
        region = MemRegion.unpack_from(msg.payload, 8, "REM_MEM_REG: region")
        self.memory.remove(region.gpa, region.size, region.uva)
        log.info("%s: removed memory region %#x+%#x", self.name, region.gpa, region.size)

    # -- rings ---------------------------------------------------------------------------------------------
    def _on_set_vring_num(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, num = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        limit = min(MAX_QUEUE_SIZE, self.device.max_queue_size)
        if not 1 <= num <= limit or num & (num - 1):
            raise ProtocolError(f"SET_VRING_NUM: queue {index} size {num} is not a power of two up to {limit}")
        self._check_inflight_size(msg, index, num)
        vring.num = num

    def _check_inflight_size(self, msg: Message, index: int, num: int) -> None:
        """A ring with a region in the inflight buffer has the size the buffer was made for."""
        buffer = self.inflight
        if buffer is not None and index < buffer.description.num_queues and num != buffer.description.queue_size:
            raise ProtocolError(f"{msg.name}: queue {index} size {num} is not the inflight buffer's queue_size "
                                f"{buffer.description.queue_size}")

    def _on_set_vring_addr(self, msg: Message) -> None:
        self._expect(msg, VRING_ADDR.size)
        index, flags, desc, used, avail, _log = VRING_ADDR.unpack(msg.payload)
        vring = self._vring(msg, index)
        if flags:  # bit 0 asks for dirty-page logging (F_LOG_ALL, never offered); no other bit is defined
            raise ProtocolError(f"SET_VRING_ADDR: queue {index} flags {flags:#x} are not 0 (dirty-page logging "
                                "is not offered)")
        vring.addr = (desc, avail, used)  # translated, and so range-checked, when the ring starts

    def _on_set_vring_base(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, base = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        if base > 0xFFFF and not self.device.driver_features & Feature.RING_PACKED:
            raise ProtocolError(f"SET_VRING_BASE: queue {index} base {base:#x} is not a 16-bit index")
        vring.base = base  # decoded, and checked against the ring size, when the ring starts

    def _on_get_vring_base(self, msg: Message) -> bytes:
        self._expect(msg, VRING_STATE.size)
        index, _ = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        self._stop(vring)
        log.info("%s: queue %d stopped at %d", self.name, index, vring.base)
        return VRING_STATE.pack(index, vring.base)

    def _eventfd_message(self, msg: Message) -> tuple[Vring, int]:
        """The ring and the fd (-1 for none) of SET_VRING_KICK / CALL / ERR, checked to be an eventfd and made
        non-blocking; the caller owns the fd."""
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
        if nofd:
            return vring, -1
        fd = msg.fds[0]
        role = _EVENTFD_ROLES[Request(msg.request)]
        kind = not_an_eventfd(fd)
        if kind is not None:
            raise ProtocolError(f"{msg.name}: the {role} fd of queue {vring.index} is not an eventfd ({kind})")
        # No read or write on a peer's fd may block this thread: a kick read with nothing pending, or a call
        # write onto a saturated counter, must fail with EAGAIN instead.
        os.set_blocking(fd, False)
        msg.fds = []
        return vring, fd

    def _on_set_vring_kick(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        self._stop(vring)  # a new kick for a running ring restarts it where it is
        vring.set_kick(fd)
        if fd < 0:
            raise ProtocolError("SET_VRING_KICK without a file descriptor: polling rings are not supported")
        if not self.acked_protocol_features:
            vring.enabled = True  # without protocol features a ring starts enabled (vhost-user.rst)
        self._start(vring, msg)

    def _on_set_vring_call(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        vring.set_call(fd)

    def _on_set_vring_err(self, msg: Message) -> None:
        vring, fd = self._eventfd_message(msg)
        vring.set_err(fd)

    def _on_set_vring_enable(self, msg: Message) -> None:
        self._expect(msg, VRING_STATE.size)
        index, enable = VRING_STATE.unpack(msg.payload)
        vring = self._vring(msg, index)
        if enable > 1:
            raise ProtocolError(f"SET_VRING_ENABLE: queue {index} state {enable} is neither 0 nor 1")
        vring.enabled = bool(enable)
        log.info("%s: queue %d %s", self.name, index, "enabled" if enable else "disabled")
        if vring.enabled:
            vring.serve()  # work the driver queued before the ring was enabled

    def _start(self, vring: Vring, msg: Message) -> None:
        """Kick received: translate the ring addresses and take the ring over at its base."""
        if vring.num == 0 or vring.addr is None:
            raise ProtocolError(f"{msg.name}: queue {vring.index} started before its size and addresses were set")
        features = self.device.driver_features
        packed = bool(features & Feature.RING_PACKED)
        # Packed: "avail" is the driver event area and "used" the device event area.
        gpas = []
        for uva, length in zip(vring.addr, area_bytes(features, vring.num)):
            gpa = self.memory.to_gpa(uva, length)
            if gpa is None:
                raise ProtocolError(f"{msg.name}: ring address {uva:#x} (+{length}) is not in any memory region")
            gpas.append(gpa)
        desc, driver_area, device_area = gpas
        region = None
        if self.inflight is not None:
            self._check_inflight_size(msg, vring.index, vring.num)
            region = self.inflight.region(vring.index, packed, msg.name)
        try:
            vring.start(self.memory.mem, features, desc, driver_area, device_area, region)
        except (VringError, ValueError, TypeError) as exc:
            raise ProtocolError(f"{msg.name}: queue {vring.index} cannot start: {exc}") from None
        self.kicks.watch(vring)
        log.info("%s: queue %d started (%s): size %d, desc %#x, avail %#x, used %#x, base %#x", self.name,
                 vring.index, "packed" if packed else "split", vring.num, desc, driver_area, device_area, vring.base)
        if vring.enabled:
            vring.serve()

    def _stop(self, vring: Vring) -> None:
        vring.stop()
        self.kicks.unwatch(vring)

    # -- config space --------------------------------------------------------------------------------------
    def _config_head(self, msg: Message) -> tuple[int, int, int]:
        """The offset, size and flags of GET_CONFIG / SET_CONFIG, checked against the payload and the limit."""
        if len(msg.payload) < CONFIG_HEAD.size:
            raise ProtocolError(f"{msg.name}: payload of {len(msg.payload)} bytes is too short")
        offset, size, flags = CONFIG_HEAD.unpack_from(msg.payload)
        self._expect(msg, CONFIG_HEAD.size + size)
        if offset + size > MAX_CONFIG_SIZE:
            raise ProtocolError(f"{msg.name}: {size} bytes at {offset} is past the {MAX_CONFIG_SIZE}-byte limit")
        if flags > CONFIG_FLAG_MIGRATION:
            raise ProtocolError(f"{msg.name}: flags {flags:#x} are neither 0 (front-end) nor 1 (migration)")
        return offset, size, flags

    def _on_get_config(self, msg: Message) -> bytes:
        offset, size, flags = self._config_head(msg)
        config = bytes(self.device.config) + bytes(MAX_CONFIG_SIZE)  # past the device's fields: zeros
        return CONFIG_HEAD.pack(offset, size, flags) + config[offset:offset + size]

    def _on_set_config(self, msg: Message) -> Reply:
        offset, _size, _flags = self._config_head(msg)
        try:
            self.device.write_config(offset, msg.payload[CONFIG_HEAD.size:])
        except VringError as exc:
            # A guest's config write is guest input: refuse it and keep the connection (QEMU 7.2 aborts if the
            # back-end drops the connection here).
            log.warning("%s: SET_CONFIG refused: %s", self.name, exc)
            return False
        return None
