"""The front-end trusts no back-end: wrong replies, silence and a corrupt used ring are clear errors, not hangs;
and `vring blk` drives a back-end from the shell."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import vring
from vring import MalformedUsed
from vring.drivers.blk import BlkClient
from vring.vhost_user.frontend import Allocator, BackendError, Frontend
from vring.vhost_user.protocol import FLAG_REPLY, U64, VERSION, Request, recv_message

from support.backends import vring_blk

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def fake_backend(path: Path, answer) -> threading.Thread:
    """A back-end that accepts one connection and answers each message with ``answer(msg)`` (None: silence)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        try:
            while True:
                msg = recv_message(conn)
                msg.close_fds()
                reply = answer(msg)
                if reply is not None:
                    conn.sendall(reply)
        except Exception:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def reply(request: int, payload: bytes, flags: int = VERSION | FLAG_REPLY) -> bytes:
    return struct.pack("=III", request, flags, len(payload)) + payload


@pytest.mark.parametrize("case,expected", [
    ("wrong request", "instead of its reply"),
    ("not a reply", "instead of its reply"),
    ("short reply", "reply of 4 bytes, expected 8"),
    ("silence", "no reply in"),
    ("no VERSION_1", "does not offer VERSION_1"),
])
def test_a_misbehaving_back_end_is_a_clear_error(tmp_path, case, expected):
    def answer(msg):
        if case == "wrong request":
            return reply(Request.GET_QUEUE_NUM, U64.pack(1))
        if case == "not a reply":
            return reply(msg.request, U64.pack(1 << 32), flags=VERSION)
        if case == "short reply":
            return reply(msg.request, b"\0" * 4)
        if case == "no VERSION_1":
            return reply(msg.request, U64.pack(1 << 28))
        return None

    fake_backend(tmp_path / "sock", answer)
    front = Frontend(str(tmp_path / "sock"), timeout=1.0).connect()
    with pytest.raises(BackendError, match=expected):
        front.negotiate(0)
    front.close()


def test_no_back_end_listening(tmp_path):
    with pytest.raises(BackendError, match="no back-end listening"):
        Frontend(str(tmp_path / "nothing"), timeout=0.3).connect()


def test_a_corrupt_used_ring_is_caught(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with vring_blk(image, tmp_path / "s.sock"):
        front = Frontend(str(tmp_path / "s.sock")).connect()
        client = BlkClient(front)
        client.read(0, 1)
        q = front.queues[0]
        # The "device" returns a head that is not in flight: the driver must refuse it, not free it.
        used = q.layout.used
        front.mem.write(used + 4 + 8 * (1 % 128), struct.pack("<II", 5, 0))
        front.mem.write(used + 2, struct.pack("<H", 2))
        with pytest.raises(MalformedUsed, match="used-index-jump|used-id-not-in-flight"):
            q.driver.pop_used()
        front.close()


def test_allocator_reuses_and_merges():
    alloc = Allocator(0x1000, 0x1000)
    a = alloc.alloc(100)
    b = alloc.alloc(100)
    assert a == 0x1000 and b == 0x1000 + 128  # 64-byte alignment
    alloc.release(a)
    alloc.release(b)
    assert alloc.free == [(0x1000, 0x1000)]
    with pytest.raises(MemoryError):
        alloc.alloc(0x1001)


def vring_blk_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vring", "blk", *args], input=stdin, capture_output=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


def test_vring_blk_command(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock, queues=2):
        info = vring_blk_cli("--socket", str(sock), "info")
        assert info.returncode == 0, info.stderr
        assert b"capacity: 2048 sectors" in info.stdout and b"EVENT_IDX" in info.stdout
        read = vring_blk_cli("--socket", str(sock), "read", "--sector", "3", "--count", "2")
        assert read.stdout == image.read_bytes()[3 * 512:5 * 512]
        write = vring_blk_cli("--socket", str(sock), "write", "--sector", "10", stdin=b"Z" * 1024)
        assert write.returncode == 0, write.stderr
        assert image.read_bytes()[10 * 512:12 * 512] == b"Z" * 1024
        odd = vring_blk_cli("--socket", str(sock), "write", "--sector", "10", stdin=b"Z" * 100)
        assert odd.returncode == 2 and b"not a multiple of 512" in odd.stderr
        verify = vring_blk_cli("--socket", str(sock), "--queues", "2", "verify", "--scratch", "64:64")
        assert verify.returncode == 0 and b"intact" in verify.stdout, verify.stderr
        assert image.read_bytes()[10 * 512:12 * 512] == b"Z" * 1024  # only the scratch range was written
        bench = vring_blk_cli("--socket", str(sock), "bench", "--seconds", "0.2", "--depth", "8", "--json", "-")
        assert bench.returncode == 0, bench.stderr
        assert b'"workload": "randread"' in bench.stdout and b'"lat_us_p99"' in bench.stdout
        beyond = vring_blk_cli("--socket", str(sock), "read", "--sector", "2048", "--count", "1")
        assert beyond.returncode == 1 and b"VIRTIO_BLK_S_IOERR" in beyond.stderr


def _inflight_backend(path: Path, inflight_reply: bytes) -> threading.Thread:
    """A back-end that offers INFLIGHT_SHMFD and answers GET_INFLIGHT_FD with ``inflight_reply`` (and no fd)."""
    from vring.vhost_user.protocol import ProtocolFeature

    def answer(msg):
        if msg.request == Request.GET_FEATURES:
            return reply(msg.request, U64.pack(1 << 32 | 1 << 30))  # VERSION_1, F_PROTOCOL_FEATURES
        if msg.request == Request.GET_PROTOCOL_FEATURES:
            return reply(msg.request, U64.pack(ProtocolFeature.INFLIGHT_SHMFD))
        if msg.request == Request.GET_INFLIGHT_FD:
            return reply(msg.request, inflight_reply)
        return None

    return fake_backend(path, answer)


def test_an_inflight_reply_without_its_fd_is_a_clear_error(tmp_path):
    from vring.vhost_user.protocol import INFLIGHT

    _inflight_backend(tmp_path / "sock", INFLIGHT.pack(4096, 0, 1, 16))
    front = Frontend(str(tmp_path / "sock"), timeout=2.0).connect()
    front.negotiate(0)
    with pytest.raises(BackendError, match="GET_INFLIGHT_FD: reply of 24 bytes and 0 fds, expected 24 and 1"):
        front.setup_queues(1, 16)
    assert front.inflight is None and front.inflight_count(0) == 0
    front.close()


def test_reconnect_with_no_back_end_listening_gives_up_after_its_timeout(tmp_path):
    front = Frontend(str(tmp_path / "nobody.sock"), timeout=0.3)
    with pytest.raises(BackendError, match="no back-end listening"):
        front.reconnect()
    front.close()


def test_status_helpers_need_the_protocol_feature(tmp_path):
    _inflight_backend(tmp_path / "sock", b"")
    front = Frontend(str(tmp_path / "sock"), timeout=2.0).connect()
    front.negotiate(0)
    for call in (front.get_status, lambda: front.set_status(1), front.reset_device):
        with pytest.raises(BackendError, match="does not offer the (STATUS|RESET_DEVICE) protocol feature"):
            call()
    front.close()


def test_reconnect_to_a_restarted_back_end_serves_on(tmp_path):
    """A clean restart (SIGTERM, a new process on the same socket): the rings go on where they were."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    sock = tmp_path / "blk.sock"
    with Frontend(str(sock)) as front:
        with vring_blk(image, sock):
            client = BlkClient(front.connect(), queues=1, packed=True)
            assert client.read(0, 2) == image.read_bytes()[:1024]
        with vring_blk(image, sock):
            front.reconnect()
            assert front.inflight_count(0) == 0
            assert client.read(4, 1) == image.read_bytes()[2048:2560]
            assert front.stop_queue(0) == 2
