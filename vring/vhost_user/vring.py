"""One ring of a vhost-user connection: what the front-end set up for it (size, addresses, base, eventfds) and,
while it is started, the device queue over it, served by the device and signalled through the call eventfd.
The eventfds are the peer's: each is checked to be one when it arrives (``not_an_eventfd``) and used without ever
blocking."""

from __future__ import annotations

import logging
import os
import stat
import threading
from typing import Any

from .. import create_device_queue, ring_layout
from .._errors import VringError
from .._features import Feature
from ..device import VirtioDevice
from ..notify import read_eventfd, serve_until_idle, signal_eventfd
from .protocol import decode_ring_base, encode_ring_base

log = logging.getLogger("vring.vhost_user")


class Vring:
    """Queue ``index`` of ``device`` on the connection ``name`` (the prefix of its log lines)."""

    def __init__(self, index: int, device: VirtioDevice, name: str) -> None:
        self.index = index
        self.device = device
        self.name = name
        self.num = 0
        self.addr: tuple[int, int, int] | None = None  # desc, avail, used, as front-end user addresses
        self.base = 0  # where the ring starts or stopped, as SET/GET_VRING_BASE carry it
        self.kick = -1
        self.call = -1
        self.err = -1
        self.enabled = False
        self.queue: Any = None  # the device queue while the ring is started (kick received, not stopped)
        self.packed = False  # the layout the queue was started with
        self.broken = False
        self.recording = False  # the queue keeps a record in its region of the inflight buffer

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, mem: Any, features: int, desc: int, driver_area: int, device_area: int,
              inflight: memoryview | None = None) -> None:
        """Take the ring over at its base: a device queue under the negotiated ``features`` at these
        guest-physical addresses, recording what is in flight in ``inflight`` (its region of the inflight
        buffer) if given. Raises VringError, ValueError or TypeError for a ring that cannot be."""
        packed = bool(features & Feature.RING_PACKED)
        queue = create_device_queue(mem, ring_layout(features, self.num, desc, driver_area, device_area), features)
        # A split ring's used index comes from the ring itself, as a back-end taking over a running ring must read it.
        queue.restore(decode_ring_base(self.base, packed))
        self.queue = queue
        self.packed = packed
        self.broken = False
        self.recording = False
        if inflight is not None:
            self._attach(inflight)

    def _attach(self, region: memoryview) -> None:
        """Keep the inflight record in ``region``; a record left by a back-end before us sets where the ring is
        and which chains come back first. A record no crash can leave (the front-end's or a guest's doing)
        breaks this ring only, as a malformed chain does."""
        try:
            resubmit = self.queue.attach_inflight(region)
        except (VringError, ValueError) as exc:
            self.broken = True
            log.error("%s: queue %d stopped: %s", self.name, self.index, exc)
            self.device.queue_broken(self.index, exc)
            self.signal_error()
            return
        self.recording = True
        if resubmit:
            log.info("%s: queue %d: resubmitting %d requests from the inflight record", self.name, self.index,
                     resubmit)

    def stop(self) -> None:
        """Drop the device queue, keeping where it is in ``base`` for GET_VRING_BASE or a restart."""
        if self.queue is not None:
            self.base = encode_ring_base(self.queue.state, self.packed)
            self._drop_queue()

    def _drop_queue(self) -> None:
        """Let go of the queue and of its region of the inflight buffer (which the record stays in)."""
        if self.recording:
            self.queue.detach_inflight()
            self.recording = False
        self.queue = None

    def close(self) -> None:
        """The connection is gone: drop the queue and close the eventfds."""
        if self.queue is not None:
            self._drop_queue()
        self.set_kick(-1)
        self.set_call(-1)
        self.set_err(-1)

    # -- eventfds (each replaces and closes the one before; -1 for none) -----------------------------------
    def set_kick(self, fd: int) -> None:
        if self.kick >= 0:
            os.close(self.kick)
        self.kick = fd

    def set_call(self, fd: int) -> None:
        if self.call >= 0:
            os.close(self.call)
        self.call = fd

    def set_err(self, fd: int) -> None:
        if self.err >= 0:
            os.close(self.err)
        self.err = fd

    def signal(self) -> None:
        """Interrupt the driver: the device used buffers it asked to hear about."""
        if self.call >= 0:
            signal_eventfd(self.call)

    def signal_error(self) -> None:
        if self.err >= 0:
            signal_eventfd(self.err)

    # -- serving (by the ring's worker) ---------------------------------------------------------------------
    def kicked(self, stop: threading.Event | None = None) -> None:
        """The kick eventfd is readable: consume it and serve the ring if it runs."""
        read_eventfd(self.kick)
        if self.queue is not None and self.enabled:
            self.serve(stop)

    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve what the driver made available until the ring is idle with notifications re-armed, or until
        ``stop`` is set (checked between batches: every chain popped is pushed first). A malformed ring (bad
        guest input) latches this ring only (``fail``)."""
        queue = self.queue
        if queue is None or self.broken:
            return

        def serve_batch() -> int:
            if stop is not None and stop.is_set():
                raise _Stopped
            served, notify = self.device.process(self.index, queue)
            if notify:
                self.signal()
            return served

        try:
            serve_until_idle(queue, serve_batch)
        except _Stopped:
            pass
        except VringError as exc:
            self.fail(exc)

    def fail(self, error: Exception) -> None:
        """The ring is malformed: logged, the error eventfd written, never served again until it restarts."""
        self.broken = True
        log.error("%s: queue %d stopped: %s", self.name, self.index, error)
        self.signal_error()


class _Stopped(Exception):
    """The worker was asked to stop between two batches."""




_FILE_KINDS = {stat.S_IFIFO: "a pipe", stat.S_IFSOCK: "a socket", stat.S_IFREG: "a regular file",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory",
               stat.S_IFLNK: "a symbolic link", 0: "an anonymous inode of another kind"}


def not_an_eventfd(fd: int) -> str | None:
    """What ``fd`` is if it is not an eventfd (e.g. "a pipe"), or None for an eventfd: Linux shows an eventfd's
    counter as the "eventfd-count" line of its /proc/self/fdinfo entry."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            if any(line.startswith("eventfd-count:") for line in info):
                return None
    except OSError as exc:
        return f"its /proc/self/fdinfo entry cannot be read: {exc.strerror}"
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    return _FILE_KINDS.get(kind, f"a file of type {kind:#o}")
