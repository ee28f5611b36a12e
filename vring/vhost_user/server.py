"""vhost-user back-end: serve a VirtioDevice to QEMU (or any vhost-user front-end) over a unix socket.

One thread per connection runs its event loop (``connection.Connection``). Protocol errors close that connection
(with a log line naming the check) and the server goes on accepting; a malformed ring (bad guest input) latches
only its queue, writes the queue's error eventfd and leaves the connection up. Running out of fds or threads
refuses (or delays) a connection, never stops the server.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from typing import Callable

from ..device import VirtioDevice
from .connection import Connection

log = logging.getLogger("vring.vhost_user")

ACCEPT_BACKOFF = 0.2  # seconds between accept() attempts while the process is out of fds or memory
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ListenError(OSError):
    """The socket path cannot be listened on; ``str()`` is the one line that says why."""

    def __str__(self) -> str:
        return str(self.strerror)


class SocketInUse(ListenError):
    """A server is already listening on the socket path."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{path}: address in use (a server is listening on it)", path)


class NotASocket(ListenError):
    """Something other than a socket is at the socket path; it is left untouched."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EEXIST, f"{path} exists and is not a socket: refusing to replace it", path)


class VhostUserBackend:
    """A vhost-user server on a unix socket; each connection gets a fresh device from ``device_factory``, closed
    when the connection ends."""

    def __init__(self, device_factory: Callable[[], VirtioDevice], path: str) -> None:
        self.device_factory = device_factory
        self.path = path
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.listener: socket.socket | None = None
        self.socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we bound
        self.connections = 0
        self.starved = False  # the last accept() failed for want of fds or memory

    # -- the socket file -----------------------------------------------------------------------------------
    def listen(self, mode: int | None = None, group: int | None = None) -> None:
        """Bind and listen on ``path``. A stale socket there (connect() is refused) is replaced; a live one is
        SocketInUse and anything else NotASocket, both left as they are. ``mode`` and ``group`` set the socket
        file's permission bits and group (a QEMU running as another user needs them) before anyone can connect:
        connect() is refused until listen()."""
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:  # another server bound it since we looked
                raise SocketInUse(self.path) from None
            raise
        st = os.stat(self.path)
        self.socket_id = (st.st_dev, st.st_ino)
        try:
            if group is not None:
                os.chown(self.path, -1, group)
            if mode is not None:
                os.chmod(self.path, mode)
        except OSError:
            listener.close()
            self._remove_own_socket()
            raise
        listener.listen(8)
        self._serve_on(listener)

    def adopt(self, fd: int) -> None:
        """Serve on a unix socket a supervisor (systemd socket activation, libvirt) bound and listens on, passed
        as ``fd``. Its path is the supervisor's: it is neither replaced nor removed."""
        try:
            listener = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenError(exc.errno, f"fd {fd} is not a socket ({exc.strerror})") from None
        if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM:
            listener.detach()
            raise ListenError(errno.EINVAL, f"fd {fd} is not a unix stream socket")
        if not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            listener.detach()
            raise ListenError(errno.EINVAL, f"fd {fd} is a unix socket that is not listening")
        self.path = listener.getsockname() or f"fd {fd}"
        self.socket_id = None  # not ours to remove
        self._serve_on(listener)

    def _serve_on(self, listener: socket.socket) -> None:
        listener.settimeout(0.5)
        self.listener = listener
        log.info("listening on %s", self.path)

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise NotASocket(self.path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)  # a live server with a full backlog answers EAGAIN instead of making us wait
            err = probe.connect_ex(self.path)
        if err in (0, errno.EAGAIN):
            raise SocketInUse(self.path)
        if err != errno.ECONNREFUSED:
            raise OSError(err, os.strerror(err), self.path)
        os.unlink(self.path)
        log.info("removed the stale socket %s (no server listening on it)", self.path)

    def _remove_own_socket(self) -> None:
        """Unlink ``path`` if it is still the socket we bound, not a file someone put there since."""
        if self.socket_id is None:  # adopted: the supervisor's socket
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self.socket_id:
            os.unlink(self.path)
        else:
            log.warning("%s is no longer the socket this server created: left in place", self.path)

    # -- serving -------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        if self.listener is None:
            self.listen()
        try:
            while not self.stop_event.is_set():
                sock = self._accept()
                if sock is not None:
                    self._start_connection(sock)
        finally:
            self.close()

    def _accept(self) -> socket.socket | None:
        """The next connection; None on the accept timeout, on stop, or while out of fds or memory (logged when
        it starts, after a short back-off: the connection waits in the listen backlog)."""
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except socket.timeout:
            return None
        except OSError as exc:
            if self.stop_event.is_set():
                return None
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            if not self.starved:
                log.error("cannot accept a connection: %s; retrying every %g s", exc.strerror, ACCEPT_BACKOFF)
                self.starved = True
            self.stop_event.wait(ACCEPT_BACKOFF)
            return None
        if self.starved:
            log.info("accepting connections again")
            self.starved = False
        sock.settimeout(None)
        return sock

    def _start_connection(self, sock: socket.socket) -> None:
        """Give the connection a device and a thread; if either cannot be had, log why and close it."""
        self.connections += 1
        name = f"connection {self.connections}"
        log.info("%s: front-end connected", name)
        try:
            device = self.device_factory()
        except OSError as exc:
            log.error("%s: cannot create the device: %s", name, exc)
            sock.close()
            return
        except Exception:
            log.exception("%s: cannot create the device", name)
            sock.close()
            return
        try:
            conn = Connection(sock, device, name)
        except OSError as exc:
            log.error("%s: cannot serve the connection: %s", name, exc)
            try:
                device.close()
            finally:
                sock.close()
            return
        thread = threading.Thread(target=conn.run, args=(self.stop_event,), name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had
            log.error("%s: cannot serve the connection: %s", name, exc)
            conn.close()
            return
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            self._remove_own_socket()
        for thread in self.threads:
            thread.join(timeout=2)
