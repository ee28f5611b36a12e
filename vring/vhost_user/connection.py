"""The event loop of one vhost-user connection: a selector over its socket and the kick eventfds of its started
rings. Messages go to the handler and its answers back on the socket; a kick serves its ring."""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading

from ..device import VirtioDevice
from .handler import Handler
from .protocol import FLAG_REPLY, VERSION, PeerClosed, ProtocolError, recv_message, send_message
from .vring import Vring

log = logging.getLogger("vring.vhost_user")


class Connection:
    """One front-end session, served by the thread that calls ``run``. It owns the socket and the device: both
    are closed with it."""

    def __init__(self, sock: socket.socket, device: VirtioDevice, name: str) -> None:
        self.sock = sock
        self.name = name
        self.selector = selectors.DefaultSelector()
        try:
            self.selector.register(sock, selectors.EVENT_READ, None)  # data None: the socket; else the kicked Vring
        except BaseException:
            self.selector.close()
            raise
        self.watch_changes = 0  # bumped whenever a kick fd joins or leaves the selector
        self.handler = Handler(device, name, self)

    def run(self, stop: threading.Event) -> None:
        """Serve until the front-end leaves, breaks the protocol or ``stop`` is set; then close."""
        try:
            while not stop.is_set():
                self._serve_batch()
        except PeerClosed:
            log.info("%s: front-end disconnected", self.name)
        except ProtocolError as exc:
            log.error("%s: protocol error, closing the connection: %s", self.name, exc)
        except OSError as exc:
            log.error("%s: connection failed: %s", self.name, exc)
        finally:
            self.close()

    def _serve_batch(self) -> None:
        """One select(): each ready kick serves its ring, the ready socket one message. A message that changes
        the watched fds ends the batch: the keys after it may name a kick fd closed or replaced since (what is
        still ready shows again at the next select)."""
        for key, _ in self.selector.select(timeout=0.5):
            if key.data is None:
                changes = self.watch_changes
                self._message()
                if self.watch_changes != changes:
                    return
            else:
                key.data.kicked()

    def _message(self) -> None:
        msg = recv_message(self.sock)
        reply = self.handler.handle(msg)
        if reply is not None:
            fds = self.handler.take_reply_fds()
            try:
                send_message(self.sock, msg.request, reply, fds, flags=VERSION | FLAG_REPLY)
            finally:
                for fd in fds:  # the peer has its own copy now
                    os.close(fd)

    def close(self) -> None:
        """Close the rings, the memory, the device, the selector and the socket (each even if one before fails)."""
        try:
            self.handler.close()
        finally:
            try:
                self.selector.close()
            finally:
                self.sock.close()

    # -- the handler's KickWatcher -------------------------------------------------------------------------
    def watch(self, vring: Vring) -> None:
        self.selector.register(vring.kick, selectors.EVENT_READ, vring)
        self.watch_changes += 1

    def unwatch(self, vring: Vring) -> None:
        if vring.kick >= 0:
            try:
                self.selector.unregister(vring.kick)
            except (KeyError, ValueError):
                return  # not watched: the ring was not started
            self.watch_changes += 1
