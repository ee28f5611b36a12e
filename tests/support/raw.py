"""A front-end with no manners: a bare unix socket to a back-end, for tests that send it raw messages."""

from __future__ import annotations

import socket
from pathlib import Path


def raw_client(path: Path, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))  # blocking: waits for room in a full listen backlog (a timeout would make it EAGAIN)
    s.settimeout(timeout)
    return s


def closed_by_server(s: socket.socket) -> bool:
    """True once the back-end has closed its end (what it does on a protocol error)."""
    try:
        return s.recv(64) == b""
    except ConnectionResetError:
        return True
