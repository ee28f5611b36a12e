"""vhost-user back-end: serve a VirtioDevice to QEMU (or any vhost-user front-end) over a unix socket.

Server mode (``listen``, ``adopt``) accepts any number of front-ends; client mode (``connect``) dials one
listening front-end (QEMU's ``server=on``, DPDK's client mode), serves it, and dials again when it goes away. One
thread per connection runs its event loop (``connection.Connection``). Protocol errors close that connection
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
import time
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


class ConnectError(OSError):
    """Client mode: the front-end's socket cannot be connected to; ``str()`` is the one line that says why.
    ``errno`` is ENOTSOCK when the path is not a socket at all (the user named the wrong path)."""

    def __str__(self) -> str:
        return str(self.strerror)


class VhostUserBackend:
    """A vhost-user back-end on a unix socket, as its server or as a client of a listening front-end; each
    connection gets a fresh device from ``device_factory``, closed when the connection ends."""

    def __init__(self, device_factory: Callable[[], VirtioDevice], path: str) -> None:
        self.device_factory = device_factory
        self.path = path
        self.stop_event = threading.Event()  # set: the connections' threads stop
        self.stop_signal: int | None = None  # the signal stop_from_signal was called for
        self.threads: list[threading.Thread] = []
        self.listener: socket.socket | None = None
        self.socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we bound
        self.connections = 0
        self.starved = False  # the last accept() failed for want of fds or memory
        # client mode (connect): None in server mode, else seconds between attempts (0: one attempt, no retry)
        self.reconnect_delay: float | None = None
        self.dialled: socket.socket | None = None  # a connection made and not yet served
        self.last_dial = float("-inf")  # time.monotonic() of the last connection attempt
        self.dial_failure: str | None = None  # why the last attempt failed, logged once until it changes

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
        if self.socket_id is None:  # adopted (the supervisor's socket) or client mode (the front-end's)
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self.socket_id:
            os.unlink(self.path)
        else:
            log.warning("%s is no longer the socket this server created: left in place", self.path)

    # -- client mode ---------------------------------------------------------------------------------------
    def connect(self, path: str | None = None, *, reconnect_delay: float = 1.0) -> None:
        """Serve as the client of the front-end listening on ``path`` (default: the constructor's), one connection
        at a time: ``serve_forever`` serves it and, when it ends, connects again. Attempts are at least
        ``reconnect_delay`` seconds apart; a failing one is logged once per cause, not at every retry. The first
        attempt is made here: with ``reconnect_delay`` 0 (no retry) its failure is raised as ConnectError and
        ``serve_forever`` returns when that one connection ends."""
        if not reconnect_delay >= 0:
            raise ValueError(f"reconnect_delay must be 0 or more seconds, not {reconnect_delay}")
        if path is not None:
            self.path = path
        self.reconnect_delay = reconnect_delay
        self.socket_id = None  # the front-end's socket: never ours to remove
        log.info("connecting to the front-end at %s", self.path)
        try:
            self.dialled = self._dial()
        except ConnectError as exc:
            if not reconnect_delay:
                raise
            self._dial_failed(exc)

    def _dial(self) -> socket.socket:
        """One connection attempt. Non-blocking: a front-end whose listen backlog is full refuses at once
        (EAGAIN) instead of holding this thread."""
        self.last_dial = time.monotonic()
        sock: socket.socket | None = None
        try:  # the socket too: out of fds (EMFILE) is one more reason to retry, not a crash
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect(self.path)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise self._connect_error(exc) from None
        sock.setblocking(True)
        if self.dial_failure is not None:
            log.info("connected to %s again", self.path)
            self.dial_failure = None
        return sock

    def _connect_error(self, exc: OSError) -> ConnectError:
        if exc.errno == errno.ECONNREFUSED:  # Linux says the same of a socket nobody listens on and of a file
            try:
                is_socket = stat.S_ISSOCK(os.lstat(self.path).st_mode)
            except OSError:
                is_socket = True
            if not is_socket:
                return ConnectError(errno.ENOTSOCK, f"cannot connect to {self.path}: not a socket", self.path)
            reason = "connection refused (no front-end listening)"
        elif exc.errno == errno.EAGAIN:
            reason = "the front-end's listen backlog is full"
        else:
            reason = exc.strerror or str(exc)
        return ConnectError(exc.errno, f"cannot connect to {self.path}: {reason}", self.path)

    def _dial_failed(self, exc: ConnectError) -> None:
        if str(exc) != self.dial_failure:
            log.warning("%s; retrying every %g s", exc, self.reconnect_delay)
            self.dial_failure = str(exc)

    def _next_dialled(self) -> socket.socket | None:
        """The next connection to the front-end, retrying as ``connect`` says; None once stopped."""
        assert self.reconnect_delay is not None
        while not self._stopping():
            if self.dialled is not None:
                sock, self.dialled = self.dialled, None
                return sock
            if not self.reconnect_delay:  # no retry: the one connection was served
                return None
            self._pause(self.last_dial + self.reconnect_delay - time.monotonic())
            if self._stopping():
                return None
            try:
                self.dialled = self._dial()
            except ConnectError as exc:
                self._dial_failed(exc)
        return None

    def _serve_as_client(self) -> None:
        try:
            while True:
                sock = self._next_dialled()
                if sock is None:
                    return
                thread = self._start_connection(sock)
                while thread is not None and thread.is_alive() and not self._stopping():
                    thread.join(0.1)
        finally:
            self.close()

    def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, ending early on stop. In slices, not stop_event.wait(): a signal's stop
        (``stop_from_signal``) sets no event."""
        end = time.monotonic() + seconds
        while not self._stopping() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    # -- serving -------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until stop(): accept connections (server mode), or connect and reconnect (client mode)."""
        if self.reconnect_delay is not None:
            self._serve_as_client()
            return
        if self.listener is None:
            self.listen()
        try:
            while not self._stopping():
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
            if self._stopping():
                return None
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            if not self.starved:
                log.error("cannot accept a connection: %s; retrying every %g s", exc.strerror, ACCEPT_BACKOFF)
                self.starved = True
            self._pause(ACCEPT_BACKOFF)
            return None
        if self.starved:
            log.info("accepting connections again")
            self.starved = False
        sock.settimeout(None)
        return sock

    def _start_connection(self, sock: socket.socket) -> threading.Thread | None:
        """Give the connection a device and a thread (returned); if either cannot be had, log why, close it and
        return None."""
        self.connections += 1
        name = f"connection {self.connections}"
        log.info("%s: front-end connected", name)
        try:
            device = self.device_factory()
        except OSError as exc:
            log.error("%s: cannot create the device: %s", name, exc)
            sock.close()
            return None
        except Exception:
            log.exception("%s: cannot create the device", name)
            sock.close()
            return None
        try:
            conn = Connection(sock, device, name)
        except OSError as exc:
            log.error("%s: cannot serve the connection: %s", name, exc)
            try:
                device.close()
            finally:
                sock.close()
            return None
        thread = threading.Thread(target=conn.run, args=(self.stop_event,), name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had
            log.error("%s: cannot serve the connection: %s", name, exc)
            conn.close()
            return None
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        return thread

    def stop(self) -> None:
        """Stop serving (from another thread; a signal handler calls ``stop_from_signal``)."""
        self.stop_event.set()

    def stop_from_signal(self, signum: int) -> None:
        """``stop`` for a signal handler: a plain store, no lock. The handler may run on the serving thread while
        it is inside ``stop_event.set()`` (close()), whose lock is not reentrant: taking it there would deadlock.
        The serving loop looks at this at least every half second and stops the rest."""
        self.stop_signal = signum

    def _stopping(self) -> bool:
        return self.stop_signal is not None or self.stop_event.is_set()

    def close(self) -> None:
        if self.stop_signal is not None:
            log.info("signal %d: stopping", self.stop_signal)
        self.stop_event.set()
        if self.dialled is not None:
            self.dialled.close()
            self.dialled = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            self._remove_own_socket()
        for thread in self.threads:
            thread.join(timeout=2)
