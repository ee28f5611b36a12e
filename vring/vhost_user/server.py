"""vhost-user back-end: serve a VirtioDevice to QEMU (or any vhost-user front-end) over a unix socket.

One thread per connection runs its event loop (``connection.Connection``). Protocol errors close that connection
(with a log line naming the check) and the server goes on accepting; a malformed ring (bad guest input) latches
only its queue, writes the queue's error eventfd and leaves the connection up.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

from ..device import VirtioDevice
from .connection import Connection

log = logging.getLogger("vring.vhost_user")


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
