"""Crash-safe restart over vhost-user, no VM needed: a front-end keeps many requests in flight on `vring serve blk`,
the test kills the back-end with SIGKILL while it holds some of them, starts a new one on the same socket and
reconnects; every request completes exactly once with the right data, on split and packed rings, 1 and 2 queues,
in both twins. Also the messages behind it (GET/SET_INFLIGHT_FD, SET/GET_STATUS, RESET_DEVICE), well-formed and
not."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import random
import re
import select
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from vring import inflight_region_size
from vring.drivers.blk import BlkClient
from vring.vhost_user import Frontend, ProtocolFeature
from vring.vhost_user.frontend import BackendError
from vring.vhost_user.inflight import InflightDescription
from vring.vhost_user.protocol import INFLIGHT, U64, VRING_STATE, Request, send_message

from support.backends import log_has, qsd_blk, vring_blk
from support.raw import closed_by_server, raw_client
from test_server_hostile import at_rest, settles_at, usage

SECTOR = 512
CHUNK = 1 << 20  # bytes per request (the device's SIZE_MAX): long in the device, for a kill to find some in flight
SLOTS = 16  # write area and read area, each SLOTS chunks
NEEDS_RESET = 64


def _image(tmp_path: Path) -> tuple[Path, bytes]:
    image = tmp_path / "disk.img"
    original = bytes(SLOTS * CHUNK) + os.urandom(SLOTS * CHUNK)  # writes go to the first half, reads to the second
    image.write_bytes(original)
    return image, original


def _pattern(slot: int) -> bytes:
    return struct.pack("<I", slot) * (CHUNK // 4)


def _ops(rounds: int) -> list[tuple[str, int, object]]:
    """Writes of each slot's own pattern (the same bytes every round, so their order does not matter) and reads
    of the untouched half, interleaved."""
    ops: list[tuple[str, int, object]] = []
    per = CHUNK // SECTOR
    for _ in range(rounds):
        for slot in range(SLOTS):
            ops.append(("write", slot * per, _pattern(slot)))
            ops.append(("read", (SLOTS + slot) * per, per))
    return ops


def _resubmitted(sock: Path) -> int:
    """The requests the back-end's log says it resubmitted from the inflight record."""
    text = sock.with_suffix(".log").read_text()
    return sum(int(n) for n in re.findall(r"resubmitting (\d+) requests from the inflight record", text))


def _freeze(pid: int) -> None:
    """SIGSTOP the process and wait until every one of its threads has stopped (the signal is delivered
    asynchronously: until then, a running thread may still change the record)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                with open(f"/proc/{pid}/task/{task}/stat") as stat:
                    states.append(stat.read().rsplit(")", 1)[1].split()[0])
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.0005)
    raise AssertionError(f"process {pid} did not stop")


def _stop_with_requests_in_flight(proc, front: Frontend, queues: int, busy, tries: int = 200) -> list[int] | None:
    """Freeze the back-end (SIGSTOP) at a moment its inflight record shows chains it popped and has not completed,
    and return the recorded counts per queue, the back-end left stopped. The record is shared memory: the
    front-end reads it, live and while the back-end is frozen. A device faster than the front-end has little in
    flight, so each try first holds the back-end stopped while the front-end fills the rings, then lets it pop
    them all and stops it once the record shows some in flight. None (the back-end running) once ``busy()`` is
    false: the requests are all done."""
    for _ in range(tries):
        if not busy():
            return None
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.02)
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 0.01
        while time.monotonic() < deadline and not any(front.inflight_count(i) for i in range(queues)):
            pass
        time.sleep(random.uniform(0, 0.002))  # somewhere into the batch: some of its requests done, some not
        _freeze(proc.pid)
        recorded = [front.inflight_count(i) for i in range(queues)]
        if sum(recorded):
            return recorded
        proc.send_signal(signal.SIGCONT)
    _freeze(proc.pid)
    return [front.inflight_count(i) for i in range(queues)]


def _kill_and_recover(tmp_path: Path, backend, *, packed: bool, queues: int, kills: int,
                      rounds: int, until_resubmitted: int = 0) -> list[tuple[int, int]]:
    """The recovery run against ``backend`` (a context manager like vring_blk); returns, for each kill, the
    requests the record held in flight and those the next back-end said it resubmitted. After ``kills``, it
    goes on killing, up to ``until_resubmitted`` kills in all, until one left a request to resubmit (a kill can
    land after a batch completed and before its flags were cleared: the record then holds nothing to redo)."""
    image, original = _image(tmp_path)
    sock = tmp_path / "blk.sock"
    ops = _ops(rounds)
    kills_seen: list[tuple[int, int]] = []
    with contextlib.ExitStack() as stack, Frontend(str(sock), mem_size=256 << 20, timeout=30.0) as front:
        proc = stack.enter_context(backend(image, sock, queues=queues))
        front.connect()
        client = BlkClient(front, queues=queues, packed=packed)
        assert front.inflight is not None, "the front-end did not get an inflight buffer"
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["results"] = client.run(ops, depth=16)
            except BaseException as exc:  # reported by the test thread
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        def more() -> bool:
            if len(kills_seen) < kills:
                return True
            return len(kills_seen) < until_resubmitted and not any(redone for _, redone in kills_seen)

        while more() and worker.is_alive():
            counts = _stop_with_requests_in_flight(proc, front, queues, worker.is_alive)
            if counts is None:
                break
            proc.kill()
            proc.wait()
            proc = stack.enter_context(backend(image, sock, queues=queues))
            front.reconnect()
            resubmitted = _resubmitted(sock)
            # A kill between publishing a batch and clearing its flags leaves it counted in the record: the
            # recovery then finds it complete and resubmits fewer.
            assert resubmitted <= sum(counts), (counts, resubmitted)
            kills_seen.append((sum(counts), resubmitted))
        worker.join(120)
        assert not worker.is_alive(), "the requests never all completed"
        assert "error" not in outcome, outcome.get("error")
        results = outcome["results"]
        assert isinstance(results, list) and len(results) == len(ops)
        for (kind, sector, _arg), result in zip(ops, results):
            if kind == "read":
                assert result == original[sector * SECTOR:sector * SECTOR + CHUNK], f"read of sector {sector}"
            else:
                assert result is None, f"write of sector {sector}: {result}"
        time.sleep(0.2)
        for q in front.queues:  # nothing completes twice: no completion arrives after each completed once
            assert q.driver.pop_used() == []
            assert front.inflight_count(q.index) == 0
    expected = b"".join(_pattern(slot) for slot in range(SLOTS)) + original[SLOTS * CHUNK:]
    assert image.read_bytes() == expected
    return kills_seen


@pytest.mark.parametrize("twin_name", ["cython", "python"])
@pytest.mark.parametrize("queues", [1, 2])
@pytest.mark.parametrize("ring", ["split", "packed"])
def test_sigkill_with_requests_in_flight_loses_none_and_repeats_none(tmp_path, monkeypatch, twin_name, queues, ring):
    monkeypatch.setenv("VRING_PUREPYTHON", "1" if twin_name == "python" else "0")  # the back-end's twin
    kills = _kill_and_recover(tmp_path, vring_blk, packed=ring == "packed", queues=queues, kills=2, rounds=12,
                              until_resubmitted=6)
    print(f"\n{ring}, {queues} queue(s), {twin_name} back-end: (in flight, resubmitted) at each kill: {kills}")
    assert kills and max(k[1] for k in kills) > 0, f"no kill left a request to resubmit: {kills}"


def test_other_back_ends_recover_if_they_offer_inflight_and_are_served_without_a_buffer_if_not(tmp_path):
    """qemu-storage-daemon: if it offers INFLIGHT_SHMFD, the same recovery run; if not (7.2 does not), the
    front-end asks it for no buffer and its I/O works without one."""
    image, original = _image(tmp_path)
    sock = tmp_path / "probe.sock"
    with qsd_blk(image, sock):
        with Frontend(str(sock)).connect() as front:
            client = BlkClient(front, queues=1)
            if front.protocol_features & ProtocolFeature.INFLIGHT_SHMFD:
                offered = True
            else:
                offered = False
                assert front.inflight is None, "the front-end asked for a buffer the back-end does not offer"
                half = SLOTS * CHUNK  # the random half of the image
                assert client.read(half // 512, 8) == original[half:half + 8 * 512]
    if offered:
        _kill_and_recover(tmp_path, qsd_blk, packed=False, queues=1, kills=2, rounds=1)


# -- the messages ------------------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path):
    image, _ = _image(tmp_path)
    sock = tmp_path / "vring.sock"
    with vring_blk(image, sock, queues=2) as proc:
        yield sock, image, proc


def _get_inflight(front: Frontend, num_queues: int, queue_size: int) -> tuple[InflightDescription, int]:
    assert front.sock is not None
    send_message(front.sock, Request.GET_INFLIGHT_FD, InflightDescription(0, 0, num_queues, queue_size).pack())
    msg = front._reply_message(Request.GET_INFLIGHT_FD)
    assert len(msg.payload) == INFLIGHT.size == 24 and len(msg.fds) == 1
    return InflightDescription(*INFLIGHT.unpack(msg.payload)), msg.fds[0]


@pytest.mark.parametrize("packed", [False, True])
def test_get_inflight_fd_makes_a_zeroed_sealed_buffer_of_the_right_size(server, packed):
    sock, _, _ = server
    from vring import Feature

    with Frontend(str(sock)).connect() as front:
        front.negotiate(Feature.RING_PACKED if packed else 0)
        assert front.protocol_features & ProtocolFeature.INFLIGHT_SHMFD
        description, fd = _get_inflight(front, 2, 256)
        try:
            assert (description.num_queues, description.queue_size) == (2, 256)
            assert description.mmap_offset == 0
            assert description.mmap_size == 2 * inflight_region_size(256, packed)
            assert os.fstat(fd).st_size >= description.mmap_size
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)  # the front-end cannot pull the memory from under the back-end's mapping
            with mmap.mmap(fd, description.mmap_size) as shared:
                assert shared[:] == bytes(description.mmap_size)
        finally:
            os.close(fd)
        assert front.get_status() == 0x0B  # ACKNOWLEDGE | DRIVER | FEATURES_OK: the front-end said so


def test_set_status_and_get_status_and_needs_reset_after_a_malformed_ring(server):
    sock, _, _ = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=2)
    front.set_status(0x0F)
    assert front.get_status() == 0x0F
    q0 = front.queues[0]
    front.mem.write(q0.layout.driver_area + 4, struct.pack("<H", 999))  # a head out of range, made available
    front.mem.write(q0.layout.driver_area + 2, struct.pack("<H", 1))
    os.eventfd_write(q0.kick, 1)
    assert select.select([q0.err], [], [], 5)[0] == [q0.err]
    assert front.get_status() == 0x0F | NEEDS_RESET
    front.set_status(0x0F)  # the device's bit stays whatever the driver writes
    assert front.get_status() & NEEDS_RESET
    client.queues = [front.queues[1]]
    assert client.read(0, 1) == bytes(SECTOR)  # the other queue goes on
    front.close()


def test_set_status_0_keeps_the_rings_where_they_are(server):
    """QEMU 7.2 writes status 0 before GET_VRING_BASE when it stops the device: the rings must survive it."""
    sock, image, _ = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=1)
    for sector in range(3):
        assert client.read(sector, 1) == bytes(SECTOR)
    front.set_status(0)
    assert front.get_status() == 0
    assert client.read(5, 1) == bytes(SECTOR)  # still served
    assert front.stop_queue(0) == 4
    front.close()


def test_reset_device_forgets_the_rings_and_keeps_the_memory(server):
    sock, _, _ = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=2)
    front.set_status(0x0F)
    assert client.read(1, 1) == bytes(SECTOR)
    front.reset_device()
    assert front.inflight is None and front.queues == []
    assert front.get_status() == 0
    # The same connection negotiates and sets rings up again without sharing the memory a second time (the
    # back-end kept it: a second ADD_MEM_REG of the same region would overlap and close the connection).
    client = BlkClient(front, queues=2)
    assert front.inflight is not None
    assert client.read(2, 1) == bytes(SECTOR)
    assert front.stop_queue(0) == 1  # the reset ring started again from 0
    front.close()


def test_a_bad_inflight_record_breaks_only_its_ring(server):
    sock, _, _ = server
    front = Frontend(str(sock)).connect()
    client = BlkClient(front, queues=2)
    assert client.read(0, 1) == bytes(SECTOR)
    assert front.inflight is not None
    # What no back-end can have left: queue 0's record claims 7 descriptors for a ring of 128.
    struct.pack_into("<H", front.inflight.map, 10, 7)
    front.reconnect()  # the same back-end, a new connection: the record is read when the rings start
    assert select.select([front.queues[0].err], [], [], 5)[0] == [front.queues[0].err]
    assert log_has(sock, "queue 0 stopped: inflight record")
    assert front.get_status() & NEEDS_RESET
    client.queues = [front.queues[1]]
    assert client.read(3, 1) == bytes(SECTOR)
    front.close()


def test_vring_num_must_match_the_inflight_buffer(server):
    sock, _, _ = server
    front = Frontend(str(sock)).connect()
    BlkClient(front, queues=1, queue_size=128)
    with pytest.raises(BackendError):
        front.request(Request.SET_VRING_NUM, VRING_STATE.pack(0, 64))
    assert log_has(sock, "SET_VRING_NUM: queue 0 size 64 is not the inflight buffer's queue_size 128")
    front.close()


def _memfd(size: int, sealable: bool = True) -> int:
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING if sealable else 0)
    os.ftruncate(fd, size)
    return fd


def bad_inflight_messages():
    """(name, what the log must say, a function that sends it on a connection that negotiated split rings)."""
    size = 2 * inflight_region_size(128, False)

    def send_set(s, description: tuple[int, int, int, int], fd: int | None = None, payload: bytes | None = None):
        own = fd is None
        fd = _memfd(size) if own else fd
        send_message(s, Request.SET_INFLIGHT_FD, INFLIGHT.pack(*description) if payload is None else payload, [fd])
        if own:
            os.close(fd)

    def get(num_queues, queue_size):
        def send(s):
                send_message(s, Request.GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, num_queues, queue_size))
        return send

    def pipe_fd(s):
        r, w = os.pipe()
        send_set(s, (size, 0, 2, 128), r)
        os.close(r)
        os.close(w)

    def unsealable(s):
        fd = _memfd(size, sealable=False)
        send_set(s, (size, 0, 2, 128), fd)
        os.close(fd)

    def no_fd(s):
        send_message(s, Request.SET_INFLIGHT_FD, INFLIGHT.pack(size, 0, 2, 128))

    def status(value):
        def send(s):
                send_message(s, Request.SET_STATUS, U64.pack(value))
        return send

    return [
        ("get: 0 queues", "GET_INFLIGHT_FD: num_queues 0 is not from 1", get(0, 128)),
        ("get: 3 queues", "GET_INFLIGHT_FD: num_queues 3 is not from 1 to the device's 2", get(3, 128)),
        ("get: size 100", "GET_INFLIGHT_FD: queue_size 100 is not a power of two", get(1, 100)),
        ("get: size 65535", "GET_INFLIGHT_FD: queue_size 65535 is not a power of two", get(1, 65535)),
        ("get: short", "GET_INFLIGHT_FD: payload of 20 bytes, expected 24",
         lambda s: send_message(s, Request.GET_INFLIGHT_FD, bytes(20))),
        ("set: no fd", "SET_INFLIGHT_FD: 0 file descriptors, expected 1", no_fd),
        ("set: size 0", "SET_INFLIGHT_FD: mmap_size is 0", lambda s: send_set(s, (0, 0, 2, 128))),
        ("set: size 2^63", "SET_INFLIGHT_FD: mmap_size 0x8000000000000000 is past the largest file offset",
         lambda s: send_set(s, (1 << 63, 0, 2, 128))),
        ("set: offset 2^63", "SET_INFLIGHT_FD: mmap_offset 0x8000000000000000 is past",
         lambda s: send_set(s, (size, 1 << 63, 2, 128))),
        ("set: offset unaligned", "SET_INFLIGHT_FD: mmap_offset 0x10 is not a multiple of the page size",
         lambda s: send_set(s, (size, 16, 2, 128))),
        ("set: past the fd", "is past the end of the", lambda s: send_set(s, (size, 4096, 2, 128))),
        ("set: too small", "SET_INFLIGHT_FD: mmap_size 0x40 is less than", lambda s: send_set(s, (64, 0, 2, 128))),
        ("set: a pipe", "SET_INFLIGHT_FD: the fd is not a memfd or regular file", pipe_fd),
        ("set: unsealable", "SET_INFLIGHT_FD: the fd cannot be sealed against shrinking", unsealable),
        ("set: 5 queues", "SET_INFLIGHT_FD: num_queues 5 is not from 1", lambda s: send_set(s, (size, 0, 5, 128))),
        ("status 0x100", "SET_STATUS: status 0x100 is not a byte", status(0x100)),
        ("status 2^63", "SET_STATUS: status 0x8000000000000000 is not a byte", status(1 << 63)),
    ]


def test_bad_inflight_and_status_messages_close_only_their_connection(server):
    sock, _, proc = server
    good = Frontend(str(sock)).connect()
    client = BlkClient(good, queues=1)
    for name, expected, send in bad_inflight_messages():
        s = raw_client(sock)
        send_message(s, Request.SET_FEATURES, U64.pack(1 << 32))  # VERSION_1: split rings
        send(s)
        assert closed_by_server(s), f"{name}: the connection stayed open"
        s.close()
        assert log_has(sock, expected), f"{name}: no log line saying {expected!r}"
        assert client.read(3, 1) == bytes(SECTOR), f"{name}: the other client lost its service"
    assert proc.poll() is None
    good.close()


def test_inflight_buffers_are_unmapped_with_their_connection(server):
    """GET_INFLIGHT_FD, SET_INFLIGHT_FD (twice: the second replaces the first) and rings recording in the buffer,
    over many connections: no fd or mapping outlives its connection."""
    sock, _, proc = server
    threads = usage(proc.pid)[2]

    def cycle() -> None:
        with Frontend(str(sock), mem_size=4 << 20) as front:
            front.connect()
            client = BlkClient(front, queues=2)
            assert front.inflight is not None
            front._set_inflight()
            assert client.read(0, 1) == bytes(SECTOR)

    for _ in range(5):
        cycle()
    baseline = at_rest(proc.pid, threads)
    for _ in range(40):
        cycle()
    fds, files, _threads = settles_at(proc.pid, baseline)
    # One left per connection would add 40; the baseline may still hold the last warm-up connection's mapping
    # (released with the queue objects that viewed it), so it is a ceiling, not an exact figure.
    assert fds <= baseline[0] and files <= baseline[1], \
        f"(fds, mappings of files) {(fds, files)} after 40 connections, {baseline[:2]} before"
