"""One hostile front-end session: a connection, its guest memory, one ring at queue 0 and its eventfds, the
standard set-up steps (each one a method, so that a case can run them in any order or leave one out), and
virtio-blk requests on the ring with a bounded wait for what became of them."""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass, field
from typing import Literal

from .._features import DESC_F_WRITE, Feature
from ..devices.blk import HEADER, S_OK, SECTOR, T_IN, T_OUT
from ..vhost_user.protocol import U64, VRING_ADDR, VRING_STATE, Request
from .guest import Guest
from .rings import Buffer, Ring, make_ring
from .wire import Closed, NoReply, Wire

QUEUE_SIZE = 16
PRIMED_STATUS = 0xFF  # what a status byte holds until the device writes it
# The virtio features a session asks for unless its case says otherwise (the back-end grants what it offers).
DEFAULT_FEATURES = Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX
# Completions are found by polling the used ring, not by sleeping on the call eventfd: some cases set event
# fields that rightly suppress the interrupt, and a back-end's interrupt is not what a case judges.
_POLL_SECONDS = 0.0005


@dataclass
class Submitted:
    """A virtio-blk request put on the ring: its id, where its status byte and its data are."""

    ident: int
    status: int | None  # guest-physical address of the status byte (None: the chain has no writable one)
    data: int = 0
    length: int = 0
    readonly: list[tuple[int, bytes]] = field(default_factory=list)  # device-readable bytes it must leave alone


@dataclass
class Outcome:
    """What became of a request: ``used`` (with its id and written length), ``error`` (the error eventfd was
    signalled), ``closed`` (the connection went) or ``silent`` (nothing in time)."""

    kind: Literal["used", "error", "closed", "silent"]
    ident: int = 0
    written: int = 0


def new_eventfd(blocking: bool = False) -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | (0 if blocking else os.EFD_NONBLOCK))


class Session:
    """Queue 0 of one connection, set up by the steps below; ``features`` is what was negotiated."""

    def __init__(self, path: str, timeout: float) -> None:
        self.wire = Wire(path, timeout)
        self.timeout = timeout
        self.guest = Guest()
        self.features = 0
        self.ring: Ring | None = None
        self.fds: dict[str, int] = {}  # kick, call, err, and any fd a case made, closed with the session
        self.kick_write: int | None = None  # where a kick is written (the kick fd unless a case chose a pipe)
        self.started = False  # the ring got its kick fd (and SET_VRING_ENABLE where needed)
        self.memory_shared = False

    def close(self) -> None:
        self.wire.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.guest.close()

    # -- set-up steps --------------------------------------------------------------------------------------
    def connect(self, features: int = DEFAULT_FEATURES) -> "Session":
        self.wire.connect()
        self.features = self.wire.negotiate(int(features) | Feature.VERSION_1)
        self.ring = make_ring(self.guest, QUEUE_SIZE, self.features)
        return self

    def share_memory(self) -> None:
        fds = [self.guest.memfd] * len(self.guest.regions)
        self.wire.request(Request.SET_MEM_TABLE, self.guest.table(), fds)
        self.memory_shared = True

    def set_num(self, num: int = QUEUE_SIZE, index: int = 0) -> None:
        self.wire.request(Request.SET_VRING_NUM, VRING_STATE.pack(index, num))

    def set_base(self, base: int | None = None, index: int = 0) -> None:
        # Packed rings: both indices 0, both wrap counters 1 (bits 15 and 31); split rings: avail index 0.
        fresh = (1 << 15 | 1 << 31) if self.features & Feature.RING_PACKED else 0
        self.wire.request(Request.SET_VRING_BASE, VRING_STATE.pack(index, fresh if base is None else base))

    def set_addr(self, addresses: tuple[int, int, int] | None = None, index: int = 0) -> None:
        """SET_VRING_ADDR with the ring's user addresses (desc, used, avail), or the ones given."""
        assert self.ring is not None
        layout = self.ring.layout
        if addresses is None:
            uva = self.guest.uva_of
            addresses = (uva(layout.desc), uva(layout.device_area), uva(layout.driver_area))
        self.wire.request(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, *addresses, 0))

    def set_eventfd(self, request: Request, name: str, fd: int | None = None, index: int = 0) -> None:
        """SET_VRING_KICK / CALL / ERR with a fresh non-blocking eventfd, or ``fd`` (kept and closed with us)."""
        fd = new_eventfd() if fd is None else fd
        old = self.fds.pop(name, None)
        if old is not None:
            os.close(old)
        self.fds[name] = fd
        self.wire.request(request, U64.pack(index), [fd])

    def enable(self, index: int = 0) -> None:
        if self.wire.rings_start_disabled:
            self.wire.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, 1))

    def start_ring(self, *, call: int | None = None, err: int | None = None, kick: int | None = None,
                   kick_write: int | None = None) -> None:
        """The usual order: size, base, addresses, call, err, kick, enable (the fds given replace fresh ones)."""
        self.set_num()
        self.set_base()
        self.set_addr()
        self.finish_ring(call=call, err=err, kick=kick, kick_write=kick_write)

    def finish_ring(self, *, call: int | None = None, err: int | None = None, kick: int | None = None,
                    kick_write: int | None = None) -> None:
        """The set-up after the addresses: call, err and kick eventfds, then enable; the ring has started."""
        self.set_eventfd(Request.SET_VRING_CALL, "call", call)
        self.set_eventfd(Request.SET_VRING_ERR, "err", err)
        self.set_eventfd(Request.SET_VRING_KICK, "kick", kick)
        self.kick_write = kick_write
        self.enable()
        self.started = True

    def setup(self) -> None:
        """Whatever of the standard set-up has not been done: memory, then the ring."""
        if not self.memory_shared:
            self.share_memory()
        if not self.started:
            self.start_ring()

    # -- requests ------------------------------------------------------------------------------------------
    def kick(self) -> None:
        fd = self.kick_write if self.kick_write is not None else self.fds["kick"]
        os.write(fd, U64.pack(1))

    def header(self, rtype: int, sector: int) -> int:
        gpa = self.guest.alloc(HEADER.size)
        self.guest.write(gpa, HEADER.pack(rtype, 0, sector))
        return gpa

    def status_byte(self) -> int:
        gpa = self.guest.alloc(1)
        self.guest.write(gpa, bytes([PRIMED_STATUS]))
        return gpa

    def buffer(self, data: bytes) -> int:
        gpa = self.guest.alloc(len(data))
        self.guest.write(gpa, data)
        return gpa

    def readonly(self, buffers: list[Buffer]) -> list[tuple[int, bytes]]:
        """The current bytes of the device-readable ``buffers`` that lie in guest memory."""
        kept = []
        for addr, length, flags in buffers:
            if not flags & DESC_F_WRITE:
                try:
                    kept.append((addr, self.guest.read(addr, length)))
                except ValueError:
                    pass  # outside the guest memory: nothing a device could change there
        return kept

    def submit(self, buffers: list[Buffer], status: int | None, data: int = 0, length: int = 0) -> Submitted:
        """Make the chain of ``buffers`` available and kick."""
        assert self.ring is not None
        readonly = self.readonly(buffers)
        ident = self.ring.add(buffers)
        self.kick()
        return Submitted(ident, status, data, length, readonly)

    def changed(self, submitted: Submitted) -> int | None:
        """The address of the first device-readable byte the device wrote, or None."""
        for addr, before in submitted.readonly:
            if self.guest.read(addr, len(before)) != before:
                return addr
        return None

    def submit_write(self, sector: int, data: bytes) -> Submitted:
        header, buf, status = self.header(T_OUT, sector), self.buffer(data), self.status_byte()
        return self.submit([(header, HEADER.size, 0), (buf, len(data), 0), (status, 1, DESC_F_WRITE)], status)

    def submit_read(self, sector: int, length: int) -> Submitted:
        header, buf, status = self.header(T_IN, sector), self.guest.alloc(length), self.status_byte()
        self.guest.write(buf, bytes(length))
        return self.submit([(header, HEADER.size, 0), (buf, length, DESC_F_WRITE), (status, 1, DESC_F_WRITE)],
                           status, buf, length)

    def status(self, request: Submitted) -> int | None:
        return None if request.status is None else self.guest.read(request.status, 1)[0]

    def wait(self, timeout: float | None = None) -> Outcome:
        """The next used element, or the error eventfd, or the connection closing, or nothing in ``timeout``."""
        assert self.ring is not None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        err = self.fds.get("err")
        while True:
            elem = self.ring.used()
            if elem is not None:
                return Outcome("used", *elem)
            if err is not None and select.select([err], [], [], 0)[0]:
                return Outcome("error")
            if self.wire.closed():
                return Outcome("closed")
            if time.monotonic() > deadline:
                return Outcome("silent")
            time.sleep(_POLL_SECONDS)

    def write_sectors(self, sector: int, data: bytes) -> None:
        """A well-formed write, checked: anything but a used OK is an error (Closed, NoReply or RuntimeError)."""
        self._expect_ok(self.submit_write(sector, data), "write")

    def read_sectors(self, sector: int, count: int) -> bytes:
        request = self.submit_read(sector, count * SECTOR)
        self._expect_ok(request, "read")
        return self.guest.read(request.data, request.length)

    def _expect_ok(self, request: Submitted, what: str) -> None:
        outcome = self.wait()
        if outcome.kind == "closed":
            raise Closed(f"the back-end closed the connection instead of completing a {what}")
        if outcome.kind == "silent":
            raise NoReply(f"a well-formed {what} got no answer in {self.timeout} s")
        if outcome.kind == "error":
            raise RuntimeError(f"the back-end signalled a ring error on a well-formed {what}")
        if outcome.ident != request.ident or self.status(request) != S_OK:
            raise RuntimeError(f"a well-formed {what} completed as id {outcome.ident} with status "
                               f"{self.status(request)}")
