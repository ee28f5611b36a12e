"""The vhost-user wire format (QEMU docs/interop/vhost-user.rst), shared by the backend and the frontend.

A message is a 12-byte header (request, flags, payload size; native-endian u32s on the one host both ends share)
and a payload; file descriptors ride along as SCM_RIGHTS ancillary data of the same ``sendmsg``.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Sequence

from .._state import QueueState

HEADER = struct.Struct("=III")
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
MAX_PAYLOAD = 4096  # far above any message we handle: anything larger is refused before it is read
MAX_FDS = 8  # VHOST_MEMORY_BASELINE_NREGIONS: the most fds one message carries

U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")  # index, num
VRING_ADDR = struct.Struct("=IIQQQQ")  # index, flags, descriptor, used, available, log (user addresses)
MEM_REGION = struct.Struct("=QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
MEM_TABLE_HEAD = struct.Struct("=II")  # nregions, padding
CONFIG_HEAD = struct.Struct("=III")  # offset, size, flags
CONFIG_FLAG_MIGRATION = 1  # the highest config flags value: 0 is a front-end access, 1 one during migration
MAX_CONFIG_SIZE = 256
# VhostUserInflight: mmap_size, mmap_offset, num_queues, queue_size, and the 4 bytes of padding that round
# QEMU's (unpacked) struct up to 24
INFLIGHT = struct.Struct("=QQHH4x")
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8

# VHOST_USER_F_PROTOCOL_FEATURES: a transport bit, not a virtio one. The back-end offers it in GET_FEATURES when it
# speaks GET/SET_PROTOCOL_FEATURES; once the front-end acks it in SET_FEATURES, rings start disabled until
# SET_VRING_ENABLE. It never reaches a device or a ring.
F_PROTOCOL_FEATURES = 1 << 30


class Request(enum.IntEnum):
    """Front-end to back-end requests."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntFlag):
    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


# Requests whose success the back-end acknowledges only when asked (REPLY_ACK); the rest always reply.
REPLYING = {
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE, Request.GET_QUEUE_NUM,
    Request.GET_CONFIG, Request.GET_MAX_MEM_SLOTS, Request.GET_INFLIGHT_FD, Request.GET_STATUS,
}


def encode_ring_base(state: QueueState, packed: bool) -> int:
    """The ``num`` of a SET/GET_VRING_BASE for ``state``.

    Split rings: the next available index (16 bits); the used index is not carried. Packed rings (QEMU's
    encoding): bits 0-14 the next available index, bit 15 its wrap counter, bits 16-30 the used index, bit 31
    its wrap counter.
    """
    if not packed:
        return state.last_avail_idx
    return (state.last_avail_idx | state.avail_wrap << 15 | (state.used_idx or 0) << 16
            | state.used_wrap << 31)


def decode_ring_base(value: int, packed: bool) -> QueueState:
    """The state a SET/GET_VRING_BASE ``num`` carries (the layout is in ``encode_ring_base``). A split ring's
    used index is None: a back-end taking the ring over reads it from the used ring itself."""
    if not packed:
        return QueueState(value, None)
    return QueueState(value & 0x7FFF, (value >> 16) & 0x7FFF, (value >> 15) & 1, (value >> 31) & 1)


class ProtocolError(Exception):
    """The peer broke the protocol: the connection cannot go on."""


class PeerClosed(ProtocolError):
    """The peer closed the connection (between messages, which is how a session ends)."""


@dataclass
class Message:
    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def connect(path: str, timeout: float) -> socket.socket:
    """A connection to the back-end listening on ``path``, retrying for up to ``timeout`` seconds while the socket
    is missing or refuses (a back-end that is starting, or restarting its listener); the last OSError after that.
    The socket has ``timeout`` set for what follows."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            sock.settimeout(timeout)
            return sock


def _recv_exact(sock: socket.socket, n: int, fds: list[int]) -> bytes:
    """n bytes from the socket, collecting any fds that arrive with them."""
    data = b""
    while len(data) < n:
        chunk, got_fds, _flags, _addr = socket.recv_fds(sock, n - len(data), MAX_FDS)
        fds.extend(got_fds)
        if not chunk:
            if data:
                raise ProtocolError(f"connection closed inside a message ({len(data)} of {n} bytes)")
            raise PeerClosed("peer closed the connection")
        data += chunk
    return data


def recv_message(sock: socket.socket, max_payload: int = MAX_PAYLOAD) -> Message:
    """Read one message; raises PeerClosed at a clean end and ProtocolError on a malformed header."""
    fds: list[int] = []
    try:
        head = _recv_exact(sock, HEADER.size, fds)
        request, flags, size = HEADER.unpack(head)
        if flags & FLAG_VERSION_MASK != VERSION:
            raise ProtocolError(f"unsupported message version {flags & FLAG_VERSION_MASK} (flags {flags:#x})")
        if size > max_payload:
            raise ProtocolError(f"payload of {size} bytes is over the limit of {max_payload}")
        payload = _recv_exact(sock, size, fds) if size else b""
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Message(request, flags, payload, fds)


def send_message(sock: socket.socket, request: int, payload: bytes = b"", fds: Sequence[int] = (),
                 flags: int = VERSION) -> None:
    data = HEADER.pack(request, flags, len(payload)) + payload
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])
