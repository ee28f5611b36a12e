"""vhost-user: vring devices served to QEMU (the back-end), and (later) Python driving any back-end."""

from .backend import Connection, VhostUserBackend
from .protocol import Message, ProtocolError, ProtocolFeature, Request, recv_message, send_message

__all__ = ["Connection", "Message", "ProtocolError", "ProtocolFeature", "Request", "VhostUserBackend",
           "recv_message", "send_message"]
