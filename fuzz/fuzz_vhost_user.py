"""Fuzz the vhost-user back-end: message sequences with fds sent to a ``VhostUserBackend`` (an rng device) that
runs in a thread of this process on a socket in a temp directory.

Input format, up to ``MAX_MESSAGES`` times: u8 request (its number; 255 kicks the last eventfd sent instead), u8
flags (bit 0 NEED_REPLY, bit 1 a wrong version), u8 fds to attach (bit 0 a 64 KiB memfd that may be sealed, bit 1 an
eventfd in blocking mode, bit 2 a pipe's read end, bit 3 a pipe's write end, bit 4 the last fd the back-end sent,
such as GET_INFLIGHT_FD's buffer, as a front-end hands it back with SET_INFLIGHT_FD), u8 payload length, then the
payload.
Invariants, after each input: the connection's thread ends once the front-end hangs up, the server thread is
alive, a second, well-behaved client still gets a GET_FEATURES answer, and no fd leaked (``/proc/self/fd``).
Run: ``python fuzz/fuzz_vhost_user.py -max_total_time=60 CORPUS_DIR``.
"""

import logging
import os
import select
import socket
import tempfile
import threading
import time

import harness
from guest import HarnessFailure, Input

with harness.instrumented():
    from vring.devices.rng import RngDevice
    from vring.vhost_user.protocol import HEADER, REPLYING, VERSION, Request, send_message
    from vring.vhost_user.server import VhostUserBackend

MAX_MESSAGES = 16
MEMFD_BYTES = 1 << 16
KICK = 255
JOIN_SECONDS = 5.0
REPLY_SECONDS = 0.2  # how long a request that replies is waited for (so that the next message may use its fd)
logging.getLogger("vring").setLevel(logging.CRITICAL)  # every broken session logs its protocol error

scratch = tempfile.TemporaryDirectory(prefix="vring-fuzz-vhost-")
SOCKET = os.path.join(scratch.name, "vhost.sock")
backend = VhostUserBackend(RngDevice, SOCKET)
backend.listen()
server = threading.Thread(target=backend.serve_forever, name="vhost-user server", daemon=True)
server.start()
baseline_fds: int | None = None
connections = 0  # made by the harness so far


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_fds(kinds: int, keep: list[int], eventfds: list[int], received: list[int]) -> list[int]:
    """The fds a message carries (closed by the caller once sent; the server gets its own copies)."""
    fds = []
    if kinds & 16 and received:
        fds.append(os.dup(received[-1]))
    if kinds & 1:
        fd = os.memfd_create("vring-fuzz-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)  # as an inflight buffer
        os.ftruncate(fd, MEMFD_BYTES)
        fds.append(fd)
    if kinds & 2:
        fd = os.eventfd(0)  # blocking: a back-end that reads it without a kick pending would hang
        fds.append(fd)
        eventfds.append(os.dup(fd))
        keep.append(eventfds[-1])
    if kinds & 12:
        read_end, write_end = os.pipe()
        for end, wanted in ((read_end, kinds & 4), (write_end, kinds & 8)):
            (fds if wanted else keep).append(end)
    return fds


def drain(sock: socket.socket, received: list[int]) -> None:
    """Read whatever the back-end answered so far, without waiting; the fds it sent go to ``received`` (the
    caller closes them)."""
    sock.setblocking(False)  # socket.recv_fds takes flags but (3.11) does not pass them on: no MSG_DONTWAIT
    try:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 4096, 8)
            except (BlockingIOError, ConnectionError):
                return
            received.extend(fds)
            if not data:
                return
    finally:
        sock.setblocking(True)


def wait_for_connections() -> None:
    """Wait until the server accepted every connection made so far and each one's thread ended."""
    global connections
    connections += 1
    deadline = time.monotonic() + JOIN_SECONDS
    # The server counts a connection before it starts the connection's thread: wait for the thread too.
    while backend.connections < connections or not any(t.name == f"connection {connections}"
                                                       for t in backend.threads):
        if time.monotonic() > deadline:
            raise HarnessFailure(f"the server did not start a thread for connection {connections}")
        time.sleep(0.001)
    for thread in list(backend.threads):
        thread.join(JOIN_SECONDS)
        if thread.is_alive():
            raise HarnessFailure(f"{thread.name} still runs {JOIN_SECONDS} s after its front-end hung up")


def send_session(data: bytes) -> None:
    inp = Input(data)
    keep: list[int] = []  # our ends and copies, closed after the session
    eventfds: list[int] = []
    received: list[int] = []  # fds the back-end sent (GET_INFLIGHT_FD's buffer)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(SOCKET)
        for _ in range(MAX_MESSAGES):
            if not inp.more():
                break
            request, flags, kinds, length = inp.u8(), inp.u8(), inp.u8(), inp.u8()
            payload = inp.take(length)
            if request == KICK:
                if eventfds:
                    os.eventfd_write(eventfds[-1], 1)
                continue
            fds = make_fds(kinds, keep, eventfds, received)
            try:
                send_message(sock, request, payload, fds, flags=(VERSION + 1 if flags & 2 else VERSION)
                             | (1 << 3 if flags & 1 else 0))
            except (BrokenPipeError, ConnectionResetError):
                break  # the back-end closed the session: what it does on a protocol error
            finally:
                for fd in fds:
                    os.close(fd)
            if request in REPLYING or flags & 1:
                select.select([sock], [], [], REPLY_SECONDS)
            drain(sock, received)
    finally:
        sock.close()
        for fd in keep + received:
            os.close(fd)


def well_behaved_client() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(JOIN_SECONDS)
        sock.connect(SOCKET)
        send_message(sock, Request.GET_FEATURES)
        reply = b""
        while len(reply) < HEADER.size + 8:
            chunk = sock.recv(HEADER.size + 8 - len(reply))
            if not chunk:
                break
            reply += chunk
    if len(reply) != HEADER.size + 8 or HEADER.unpack(reply[: HEADER.size])[0] != Request.GET_FEATURES:
        raise HarnessFailure(f"a well-behaved client's GET_FEATURES got {reply!r}")


def test_one_input(data: bytes) -> None:
    global baseline_fds
    send_session(data)
    wait_for_connections()
    if not server.is_alive():
        raise HarnessFailure("the server thread died")
    well_behaved_client()
    wait_for_connections()
    fds = open_fds()
    if baseline_fds is None:
        baseline_fds = fds
    elif fds != baseline_fds:
        raise HarnessFailure(f"{fds - baseline_fds} fds leaked by the session (/proc/self/fd)")


if __name__ == "__main__":
    harness.fuzz(test_one_input)
