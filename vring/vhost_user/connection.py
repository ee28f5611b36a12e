"""The event loop of one vhost-user connection: a selector over its socket and the kick eventfds of its started
rings. Messages go to the handler and its answers back on the socket; a kick serves its ring."""

from __future__ import annotations

import logging
import selectors
import socket
import threading

from ..device import VirtioDevice
from .handler import Handler
from .protocol import FLAG_REPLY, VERSION, PeerClosed, ProtocolError, recv_message, send_message
from .vring import Vring

log = logging.getLogger("vring.vhost_user")


class Connection:
    """One front-end session, served by the thread that calls ``run``."""

    def __init__(self, sock: socket.socket, device: VirtioDevice, name: str) -> None:
        self.sock = sock
        self.name = name
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)  # data None: the socket; else the kicked Vring
        self.handler = Handler(device, name, self)

    def run(self, stop: threading.Event) -> None:
        """Serve until the front-end leaves, breaks the protocol or ``stop`` is set; then close."""
        try:
            while not stop.is_set():
                for key, _ in self.selector.select(timeout=0.5):
                    if key.data is None:
                        self._message()
                    else:
                        key.data.kicked()
        except PeerClosed:
            log.info("%s: front-end disconnected", self.name)
        except ProtocolError as exc:
            log.error("%s: protocol error, closing the connection: %s", self.name, exc)
        except OSError as exc:
            log.error("%s: connection failed: %s", self.name, exc)
        finally:
            self.close()

    def _message(self) -> None:
        msg = recv_message(self.sock)
        reply = self.handler.handle(msg)
        if reply is not None:
            send_message(self.sock, msg.request, reply, flags=VERSION | FLAG_REPLY)

    def close(self) -> None:
        self.handler.close()
        try:
            self.selector.close()
        finally:
            self.sock.close()

    # -- the handler's KickWatcher -------------------------------------------------------------------------
    def watch(self, vring: Vring) -> None:
        self.selector.register(vring.kick, selectors.EVENT_READ, vring)

    def unwatch(self, vring: Vring) -> None:
        if vring.kick >= 0:
            try:
                self.selector.unregister(vring.kick)
            except (KeyError, ValueError):
                pass  # not watched: the ring was not started
