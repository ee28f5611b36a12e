"""vhost-user: vring devices served to QEMU or any front-end (the back-end), and Python driving any back-end (the
front-end)."""

from .connection import Connection
from .frontend import BackendError, Frontend
from .protocol import Message, ProtocolError, ProtocolFeature, Request, recv_message, send_message
from .server import ListenError, NotASocket, SocketInUse, VhostUserBackend

__all__ = ["BackendError", "Connection", "Frontend", "ListenError", "Message", "NotASocket", "ProtocolError",
           "ProtocolFeature", "Request", "SocketInUse", "VhostUserBackend", "recv_message", "send_message"]
