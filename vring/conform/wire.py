"""The raw vhost-user connection of a hostile front-end: any request with any payload and any fds, in any order,
and a plain account of how the back-end took it (answered, refused with a NACK, closed, or silent)."""

from __future__ import annotations

import errno
import select
import socket
from typing import Sequence

from ..vhost_user.protocol import (
    F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, FLAG_REPLY, HEADER, REPLYING, U64, VERSION, PeerClosed, ProtocolError,
    ProtocolFeature, Request, connect, recv_message, send_message,
)

# What we ask for when offered: REPLY_ACK makes every refusal visible; MQ and CONFIG as QEMU would. Memory goes
# through SET_MEM_TABLE only (CONFIGURE_MEM_SLOTS is not asked for), so that two regions go in one message.
WANTED_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
_CLOSED_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class Closed(Exception):
    """The back-end closed the connection (or refused to open one)."""


class NoReply(Exception):
    """The back-end kept the connection open but did not answer in time."""


class Refused(Exception):
    """The back-end answered a request with a non-zero REPLY_ACK, or a reply that is not its reply."""


class Wire:
    """One connection to the back-end's socket; every wait is bounded by ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.offered = 0  # GET_FEATURES
        self.protocol_features = 0  # as acked with SET_PROTOCOL_FEATURES

    def connect(self) -> "Wire":
        """Connect, retrying for up to the timeout while the socket is missing or refuses (a back-end that is
        starting, or restarting its listener)."""
        try:
            self.sock = connect(self.path, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Closed(f"cannot connect to {self.path}: {exc.strerror}") from None
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- sending and answers -------------------------------------------------------------------------------
    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = VERSION) -> None:
        """One message exactly as given; Closed if the back-end has closed the connection."""
        assert self.sock is not None, "connect() first"
        try:
            send_message(self.sock, request, payload, fds, flags)
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise Closed(f"{_name(request)}: the back-end closed the connection") from None
            raise

    def send_header(self, request: int, size: int, body: bytes) -> None:
        """A header that announces ``size`` bytes of payload, followed by ``body`` (of any length)."""
        assert self.sock is not None, "connect() first"
        try:
            self.sock.sendall(HEADER.pack(request, VERSION, size) + body)
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS or isinstance(exc, socket.timeout):
                raise Closed(f"{_name(request)}: the back-end stopped reading") from None
            raise

    def reply(self, request: int) -> bytes:
        """The payload of the reply to ``request``."""
        assert self.sock is not None, "connect() first"
        try:
            msg = recv_message(self.sock)
        except socket.timeout:
            raise NoReply(f"{_name(request)}: no reply in {self.timeout} s") from None
        except PeerClosed:
            raise Closed(f"{_name(request)}: the back-end closed the connection") from None
        except ProtocolError as exc:
            raise Refused(f"{_name(request)}: malformed reply: {exc}") from None
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise Closed(f"{_name(request)}: the back-end closed the connection") from None
            raise
        msg.close_fds()
        if msg.request != request or not msg.flags & FLAG_REPLY:
            raise Refused(f"{_name(request)}: got {msg.name} (flags {msg.flags:#x}) instead of its reply")
        return msg.payload

    def request(self, request: Request, payload: bytes = b"", fds: Sequence[int] = ()) -> bytes | None:
        """Send a request and take its answer: the reply payload of a request that has one; for the others the
        REPLY_ACK when negotiated (Refused if not 0), else nothing."""
        ack = request not in REPLYING and bool(self.protocol_features & ProtocolFeature.REPLY_ACK)
        self.send(request, payload, fds, VERSION | (FLAG_NEED_REPLY if ack else 0))
        if request in REPLYING:
            return self.reply(request)
        if ack:
            answer = self.reply(request)
            if answer != U64.pack(0):
                raise Refused(f"{request.name}: refused (ack {answer.hex()})")
        return None

    def u64(self, request: Request) -> int:
        reply = self.request(request)
        if reply is None or len(reply) != U64.size:
            raise Refused(f"{request.name}: a reply of {0 if reply is None else len(reply)} bytes, expected 8")
        return U64.unpack(reply)[0]

    def answers(self) -> bool:
        """Whether the back-end still answers a request (GET_FEATURES, which every back-end must answer)."""
        try:
            self.u64(Request.GET_FEATURES)
        except (Closed, Refused, NoReply):
            return False
        return True

    def closed(self, wait: float = 0.0) -> bool:
        """Whether the back-end has closed the connection (looked at without reading a message)."""
        if self.sock is None:
            return True
        if not select.select([self.sock], [], [], wait)[0]:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- negotiation ---------------------------------------------------------------------------------------
    def negotiate(self, wanted: int, *, owner: bool = True) -> int:
        """GET_FEATURES, protocol features, SET_OWNER, SET_FEATURES: the virtio features acked (``wanted`` of
        what is offered, F_PROTOCOL_FEATURES apart)."""
        self.offered = self.u64(Request.GET_FEATURES)
        transport = self.offered & F_PROTOCOL_FEATURES
        if transport:
            proto = self.u64(Request.GET_PROTOCOL_FEATURES) & int(WANTED_PROTOCOL_FEATURES)
            self.request(Request.SET_PROTOCOL_FEATURES, U64.pack(proto))
            self.protocol_features = proto
        if owner:
            self.request(Request.SET_OWNER)
        features = wanted & self.offered & ~F_PROTOCOL_FEATURES
        self.request(Request.SET_FEATURES, U64.pack(features | transport))
        return features

    @property
    def rings_start_disabled(self) -> bool:
        """F_PROTOCOL_FEATURES was acked: rings wait for SET_VRING_ENABLE."""
        return bool(self.offered & F_PROTOCOL_FEATURES)


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"
