"""The control path of one vhost-user connection: a thread reading its socket, each message handed to the handler
and its answer sent back. The started rings are served by workers (``worker.Worker``), never by this thread.

Around every message that may change what a worker uses (the memory table, a ring's eventfds or state, the
features, the device's config), the workers concerned are quiesced first and started again afterwards for the
rings that still run: a worker never sees memory unmapped or an eventfd closed under it, and GET_VRING_BASE
answers only once the ring's requests in flight are pushed. A message about one ring (its size, addresses, base,
eventfds, enable) quiesces only the worker of that ring's group, so that the other queues go on serving;
a message about the device quiesces them all. Read-only requests leave the workers running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading

from ..device import VirtioDevice
from .handler import Handler
from .protocol import (
    FLAG_REPLY, U64, VERSION, VRING_IDX_MASK, VRING_STATE, Message, PeerClosed, ProtocolError, Request, recv_message,
    send_message,
)
from .vring import Vring
from .worker import Worker, group_rings

log = logging.getLogger("vring.vhost_user")

# Requests that change nothing a worker uses: answered with the workers running.
_WORKER_SAFE = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
                          Request.GET_MAX_MEM_SLOTS, Request.GET_CONFIG, Request.SET_OWNER, Request.GET_STATUS})
# Requests about one ring, named by the first u32 of the payload (vhost_vring_state, vhost_vring_addr) ...
_ONE_RING = frozenset({Request.SET_VRING_NUM, Request.SET_VRING_ADDR, Request.SET_VRING_BASE,
                       Request.GET_VRING_BASE, Request.SET_VRING_ENABLE})
# ... or by the low byte of the u64 that comes with an eventfd.
_ONE_RING_FD = frozenset({Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR})
_ALL = -1  # the group "every worker": a message about the whole device


def ring_of(msg: Message) -> int | None:
    """The queue index a message about one ring names; None for any other message, or one too short to say
    (the handler refuses it)."""
    if msg.request in _ONE_RING and len(msg.payload) >= VRING_STATE.size:
        return int(VRING_STATE.unpack_from(msg.payload)[0])
    if msg.request in _ONE_RING_FD and len(msg.payload) == U64.size:
        return int(U64.unpack(msg.payload)[0] & VRING_IDX_MASK)
    return None


class Connection:
    """One front-end session, served by the thread that calls ``run``. It owns the socket and the device: both
    are closed with it. ``queues_per_thread`` rings share a worker (by queue index: 0..k-1, k..2k-1, ...); the
    device's ``queues_per_thread`` attribute, where it has one, is the default."""

    def __init__(self, sock: socket.socket, device: VirtioDevice, name: str,
                 queues_per_thread: int | None = None) -> None:
        self.sock = sock
        self.name = name
        self.device = device
        self.queues_per_thread = queues_per_thread or int(getattr(device, "queues_per_thread", 1))
        if self.queues_per_thread < 1:
            raise ValueError(f"queues_per_thread must be at least 1, not {self.queues_per_thread}")
        self.selector = selectors.DefaultSelector()
        try:
            self.selector.register(sock, selectors.EVENT_READ)
        except BaseException:
            self.selector.close()
            raise
        self.started: set[int] = set()  # queue indices the handler started and has not stopped
        self.workers: dict[int, Worker] = {}  # by group: queue index // queues_per_thread
        self.handler = Handler(device, name, self)

    def run(self, stop: threading.Event) -> None:
        """Serve until the front-end leaves, breaks the protocol or ``stop`` is set; then close."""
        try:
            while not stop.is_set():
                if self.selector.select(timeout=0.5):
                    self._message()
        except PeerClosed:
            log.info("%s: front-end disconnected", self.name)
        except ProtocolError as exc:
            log.error("%s: protocol error, closing the connection: %s", self.name, exc)
        except OSError as exc:
            log.error("%s: connection failed: %s", self.name, exc)
        except RuntimeError as exc:  # a worker's thread cannot start ("can't start new thread")
            log.error("%s: closing the connection: %s", self.name, exc)
        finally:
            self.close()

    def _message(self) -> None:
        msg = recv_message(self.sock)
        group = None
        if msg.request not in _WORKER_SAFE:
            ring = ring_of(msg)
            group = _ALL if ring is None else ring // self.queues_per_thread
            self._quiesce_workers(group)
        try:
            reply = self.handler.handle(msg)
        except BaseException:
            self._discard_reply_fds()
            if group is not None:
                # Even after a protocol error (close() then quiesces them in order); its failure is not the one
                # to report, and the connection closes anyway.
                with contextlib.suppress(Exception):
                    self._start_workers(group)
            raise
        if group is not None:
            try:
                self._start_workers(group)
            except BaseException:
                self._discard_reply_fds()  # a reply never to be sent (GET_INFLIGHT_FD's memfd)
                raise
        if reply is not None:
            fds = self.handler.take_reply_fds()
            try:
                send_message(self.sock, msg.request, reply, fds, flags=VERSION | FLAG_REPLY)
            finally:
                for fd in fds:  # the peer has its own copy now
                    os.close(fd)

    def _discard_reply_fds(self) -> None:
        for fd in self.handler.take_reply_fds():
            os.close(fd)

    def _start_workers(self, group: int) -> None:
        """Start the workers of ``group`` (or of every group: ``_ALL``) for its rings that run."""
        running = [v for v in self.handler.vrings
                   if v.index in self.started and v.queue is not None and v.enabled and not v.broken]
        for key, rings in group_rings(running, self.queues_per_thread).items():
            if group in (_ALL, key) and key not in self.workers:
                worker = Worker(rings, self.device, self.name)
                self.workers[key] = worker  # before start: quiesce must find it even if start fails
                worker.start()

    def _quiesce_workers(self, group: int = _ALL) -> None:
        """Quiesce the worker of ``group`` (or every worker: ``_ALL``); if one fails, the others still are, and
        the first failure is raised after."""
        keys = list(self.workers) if group == _ALL else [group] if group in self.workers else []
        failure: BaseException | None = None
        for key in keys:
            try:
                self.workers.pop(key).quiesce()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Stop the workers, then close the rings, the memory, the device, the selector and the socket (each
        even if one before fails)."""
        try:
            self._quiesce_workers()
        finally:
            try:
                self.handler.close()
            finally:
                try:
                    self.selector.close()
                finally:
                    self.sock.close()

    # -- the handler's KickWatcher: which rings run (their workers start after the message) ----------------
    def watch(self, vring: Vring) -> None:
        self.started.add(vring.index)

    def unwatch(self, vring: Vring) -> None:
        self.started.discard(vring.index)
