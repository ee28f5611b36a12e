"""The vhost-user back-end under bad input: every malformed message closes only its own connection with a clear
log line, while another client goes on; a malformed ring latches only its queue and signals its error eventfd."""

from __future__ import annotations

import os
import select
import socket
import struct
from pathlib import Path

import pytest

from vring.drivers.blk import BlkClient
from vring.vhost_user.frontend import BackendError, Frontend
from vring.vhost_user.protocol import (
    CONFIG_HEAD, HEADER, MEM_REGION, MEM_TABLE_HEAD, U64, VRING_ADDR, VRING_STATE, Request, send_message,
)

from support.backends import log_has, vring_blk
from support.raw import closed_by_server, raw_client


@pytest.fixture
def server(tmp_path: Path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    sock = tmp_path / "vring.sock"
    with vring_blk(image, sock, queues=2) as proc:
        yield sock, image, proc




def memfd(size: int = 1 << 20) -> int:
    fd = os.memfd_create("t")
    os.ftruncate(fd, size)
    return fd



def region(gpa: int, size: int, uva: int) -> bytes:
    return MEM_REGION.pack(gpa, size, uva, 0)


def bad_messages():
    """(name, what the log must say, a function that sends the bad input on a raw socket)."""
    def short_header(s):
        s.send(b"\x01\x00\x00\x00\x01\x00")
        s.shutdown(socket.SHUT_WR)

    def unknown(s):
        send_message(s, 99)

    def wrong_size(s):
        send_message(s, Request.SET_FEATURES, b"\0" * 4)

    def bad_version(s):
        s.send(HEADER.pack(Request.GET_FEATURES, 0x2, 0))

    def huge_payload(s):
        s.send(HEADER.pack(Request.SET_FEATURES, 0x1, 1 << 20))

    def fd_missing(s):
        send_message(s, Request.SET_VRING_KICK, U64.pack(0))

    def fd_extra(s):
        fd = memfd()
        send_message(s, Request.GET_FEATURES, b"", [fd])
        os.close(fd)

    def never_offered(s):
        send_message(s, Request.SET_FEATURES, U64.pack(1 << 63))

    def region_overlap(s):
        fds = [memfd(), memfd()]
        payload = MEM_TABLE_HEAD.pack(2, 0) + region(0, 1 << 20, 0x7000_0000) + region(0x80000, 1 << 20, 0x9000_0000)
        send_message(s, Request.SET_MEM_TABLE, payload, fds)
        for fd in fds:
            os.close(fd)

    def region_past_fd(s):
        fd = memfd(4096)
        send_message(s, Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + region(0, 1 << 30, 0x7000_0000), [fd])
        os.close(fd)

    def ring_outside_memory(s):
        fd = memfd()
        send_message(s, Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + region(0, 1 << 20, 0x7000_0000), [fd])
        os.close(fd)
        send_message(s, Request.SET_VRING_NUM, VRING_STATE.pack(0, 64))
        send_message(s, Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, 0x1234_0000, 0x1234_2000, 0x1234_1000, 0))
        kick = os.eventfd(0)
        send_message(s, Request.SET_VRING_KICK, U64.pack(0), [kick])
        os.close(kick)

    def queue_index(s):
        send_message(s, Request.SET_VRING_NUM, VRING_STATE.pack(5, 64))

    def size_not_power_of_two(s):
        send_message(s, Request.SET_VRING_NUM, VRING_STATE.pack(0, 100))

    def size_too_large(s):
        send_message(s, Request.SET_VRING_NUM, VRING_STATE.pack(0, 65536))

    def config_past_limit(s):
        send_message(s, Request.GET_CONFIG, CONFIG_HEAD.pack(200, 100, 0) + bytes(100))

    return [
        ("short header", "connection closed inside a message", short_header),
        ("unknown request", "unknown request 99", unknown),
        ("wrong size", "SET_FEATURES: payload of 4 bytes, expected 8", wrong_size),
        ("bad version", "unsupported message version", bad_version),
        ("huge payload", "over the limit", huge_payload),
        ("fd missing", "SET_VRING_KICK: 0 file descriptors with the no-fd flag clear", fd_missing),
        ("fd extra", "GET_FEATURES: 1 file descriptors, expected 0", fd_extra),
        ("features never offered", "were never offered", never_offered),
        ("region overlap", "overlaps", region_overlap),
        ("region past its fd", "cannot be mapped", region_past_fd),
        ("ring outside memory", "is not in any memory region", ring_outside_memory),
        ("queue index", "queue index 5 is out of range", queue_index),
        ("ring size 100", "size 100 is not a power of two", size_not_power_of_two),
        ("ring size 65536", "size 65536 is not a power of two", size_too_large),
        ("config past the limit", "past the 256-byte limit", config_past_limit),
    ]


def test_bad_messages_close_only_their_connection(server):
    sock, image, proc = server
    good = Frontend(str(sock)).connect()
    client = BlkClient(good, queues=1)
    data = image.read_bytes()
    for name, expected, send in bad_messages():
        s = raw_client(sock)
        send(s)
        assert closed_by_server(s), f"{name}: the connection stayed open"
        s.close()
        assert log_has(sock, expected), f"{name}: no log line saying {expected!r}"
        assert client.read(3, 1) == data[3 * 512:4 * 512], f"{name}: the other client lost its service"
    assert proc.poll() is None  # the server survived all of it
    fresh = Frontend(str(sock)).connect()  # and still accepts new connections
    assert BlkClient(fresh, queues=2).read(0, 1) == data[:512]
    fresh.close()
    good.close()


def test_malformed_ring_latches_only_its_queue(server):
    sock, image, proc = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=2)
    q0 = front.queues[0]
    # A guest writes a head that is out of range into the avail ring of queue 0 and kicks.
    layout = q0.layout
    front.mem.write(layout.avail + 4, struct.pack("<H", 999))
    front.mem.write(layout.avail + 2, struct.pack("<H", 1))
    os.eventfd_write(q0.kick, 1)
    ready, _, _ = select.select([q0.err], [], [], 5)
    assert ready == [q0.err], "the back-end did not signal the ring error"
    assert log_has(sock, "queue 0 stopped: malformed chain (head-out-of-range)")
    # The connection and the other queue go on.
    client.queues = [front.queues[1]]
    assert client.read(7, 1) == image.read_bytes()[7 * 512:8 * 512]
    assert front.stop_queue(0) == 0
    assert proc.poll() is None
    front.close()


def test_config_write_to_a_read_only_field_is_refused_not_fatal(server):
    sock, image, _ = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=1)
    with pytest.raises(BackendError, match="refused"):
        front.request(Request.SET_CONFIG, CONFIG_HEAD.pack(0, 8, 0) + bytes(8))  # capacity is read-only
    front.request(Request.SET_CONFIG, CONFIG_HEAD.pack(32, 1, 0) + b"\0")  # writeback (CONFIG_WCE) may change
    assert front.get_config(60)[32] == 0
    assert client.read(0, 1) == image.read_bytes()[:512]
    front.close()


def test_rng_device(tmp_path):
    from vring import Feature

    sock = tmp_path / "rng.sock"
    with vring_blk(tmp_path, sock, device="rng"):
        front = Frontend(str(sock)).connect()
        front.negotiate(Feature.EVENT_IDX)
        (q,) = front.setup_queues(1, 16)
        buf = front.allocator.alloc(64)
        q.driver.add([], [(buf, 64)], token="entropy")
        front.kick(q)
        assert front.wait(q) == [("entropy", 64)]
        assert front.mem.read(buf, 64) != bytes(64)
        front.close()


def test_legacy_driver_without_version_1_is_served(server):
    sock, image, _ = server
    s = raw_client(sock)
    send_message(s, Request.SET_FEATURES, U64.pack(0))  # a driver that accepts nothing, VERSION_1 included
    send_message(s, Request.GET_FEATURES)
    reply = s.recv(64)
    assert len(reply) == HEADER.size + 8  # the connection is up and answering
    assert log_has(sock, "did not accept VERSION_1: serving it as a legacy little-endian driver")
    s.close()


def test_every_handler_answers_as_the_protocol_says(server):
    """The messages a BlkClient session does not send, each with its answer checked."""
    from vring.vhost_user.frontend import GPA_BASE
    from vring.vhost_user.protocol import ProtocolFeature

    sock, image, _ = server
    front = Frontend(str(sock)).connect()
    front.negotiate(0)
    assert front.protocol_features & ProtocolFeature.REPLY_ACK  # so every request below is acknowledged
    assert front.queue_num() == 2
    assert front._u64(Request.GET_MAX_MEM_SLOTS) >= 8
    region = MEM_REGION.pack(GPA_BASE, front.mem_size, front.uva, 0)
    front.request(Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + region, [front.memfd])
    front.request(Request.REM_MEM_REG, bytes(8) + region)  # the table's one region, removed again
    with pytest.raises(BackendError):
        front.request(Request.REM_MEM_REG, bytes(8) + region)  # not there any more: the connection closes
    front.close()

    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=2)
    assert client.read(1, 1) == image.read_bytes()[512:1024]
    front.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 0))  # disabled rings are not served
    front.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1))
    assert client.read(2, 1) == image.read_bytes()[1024:1536]
    assert front.stop_queue(0) == 2 and front.stop_queue(1) == 0
    front.request(Request.RESET_OWNER)
    front.request(Request.RESET_DEVICE)
    front.request(Request.SET_FEATURES, U64.pack(front.features))  # a reset device negotiates again
    front.close()


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal(tmp_path, signum):
    import signal

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 16))
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock) as proc:
        front = Frontend(str(sock)).connect()
        BlkClient(front).read(0, 1)  # a live session when the signal comes
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(timeout=10) == 0
        front.close()
    assert not sock.exists()  # the socket is removed on the way out
    assert f"signal {getattr(signal, signum).value}: stopping" in sock.with_suffix(".log").read_text()
