"""The virtio-blk back-end on per-queue workers: the C executor (io_uring, thread pool, synchronous) and the
generic Python worker, served in-process by VhostUserBackend and driven by vring's front-end and BlkClient. The
same requests get the same answers whichever executor serves them; data is checked against the image file."""

from __future__ import annotations

import logging
import os
import re
import select
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import vring
from vring import Feature
from vring.device import DEVICE_NEEDS_RESET
from vring.devices import blk
from vring.devices.blk import (BlkDevice, DISCARD_SEG, HEADER, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH,
                               T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES)
from vring.devices.blk_executor import choose_aio
from vring.devices.image import Image
from vring.drivers.blk import BlkClient
from vring.vhost_user import VhostUserBackend
from vring.vhost_user.frontend import Frontend
from vring.vhost_user.protocol import U64, Request

from support.backends import vring_blk

pytestmark = pytest.mark.skipif(vring.IMPLEMENTATION != "cython", reason="the C executor is the C core's")

IMAGE_BYTES = 8 << 20
SECTORS = IMAGE_BYTES // 512
EXECUTORS = ["io_uring", "threads", "sync", "python"]  # "python": the generic worker and BlkDevice.handle


class RecordingBlk(BlkDevice):
    """A BlkDevice that keeps the executors it made, and the queue indices of each (or makes none: the generic
    worker serves it)."""

    def __init__(self, *args: Any, executor: str, made: list[Any], queues_per_thread: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, aio=None if executor == "python" else executor, **kwargs)
        self.queues_per_thread = queues_per_thread  # what the connection groups the rings by
        self.generic = executor == "python"
        self.made = made
        self.groups: list[tuple[int, ...]] = []  # the queue indices of each executor made, in order

    def make_worker(self, rings, stop_fd):
        if self.generic:
            return None
        executor = super().make_worker(rings, stop_fd)
        self.made.append(executor)
        self.groups.append(tuple(index for index, *_ in rings))
        return executor


class Server:
    """``vring serve blk`` in this process, on a socket in ``tmp_path``: the image opened once, shared by the
    connections' devices."""

    def __init__(self, tmp_path: Path, image: Path, executor: str, **device: Any) -> None:
        self.path = str(tmp_path / "blk.sock")
        self.made: list[Any] = []
        self.devices: list[RecordingBlk] = []
        self.image = Image(str(image), read_only=device.get("read_only", False))

        def factory() -> RecordingBlk:
            dev = RecordingBlk(self.image, executor=executor, made=self.made, **device)
            self.devices.append(dev)
            return dev

        self.backend = VhostUserBackend(factory, self.path)
        self.backend.listen()
        self.thread = threading.Thread(target=self.backend.serve_forever, daemon=True)
        self.thread.start()

    def client(self, **kwargs: Any) -> tuple[Frontend, BlkClient]:
        frontend = Frontend(self.path).connect()
        return frontend, BlkClient(frontend, **kwargs)

    def close(self) -> None:
        self.backend.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.image.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    return path


@pytest.fixture
def serve(tmp_path: Path, image: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(executor: str, **device: Any) -> Server:
        server = Server(tmp_path, image, executor, **device)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_wire_constants_are_the_devices():
    from vring._cring import BLK_WIRE

    assert BLK_WIRE == {name: getattr(blk, name) for name in BLK_WIRE}


def test_aio_default_is_io_uring_where_it_works():
    from vring._cring import blk_uring_unavailable

    why = blk_uring_unavailable()
    mode, note = choose_aio(None)
    if why is None:
        assert (mode, note) == ("io_uring", None)
    else:  # a core built without liburing, or a kernel that refuses io_uring
        assert mode == "threads" and note is not None and why in note
    assert choose_aio("threads") == ("threads", None)
    with pytest.raises(ValueError, match="aio must be one of"):
        choose_aio("posix")


@pytest.mark.parametrize("cache", ["writeback", "none"])
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("queues,packed", [(1, False), (2, True)], ids=["1q-split", "2q-packed"])
def test_data_round_trip(serve, image, executor, cache, queues, packed):
    server = serve(executor, num_queues=queues, cache=cache)
    frontend, client = server.client(queues=queues, packed=packed)
    try:
        assert bool(client.features & Feature.RING_PACKED) == packed
        sizes = [1, 8, 3, 64, 2, 128]  # sectors: mixed sizes, not all a page
        writes = [("write", 130 * k, os.urandom(512 * sizes[k % len(sizes)])) for k in range(96)]
        assert client.run(writes, depth=32) == [None] * len(writes)
        client.flush()
        current = image.read_bytes()
        for _, sector, payload in writes:
            assert current[sector * 512:sector * 512 + len(payload)] == payload
        reads = [("read", sector, len(payload) // 512) for _, sector, payload in writes]
        assert client.run(reads, depth=32) == [payload for _, _, payload in writes]
    finally:
        frontend.close()


def test_cache_none_reads_and_writes_with_o_direct(serve):
    server = serve("io_uring", cache="none")
    frontend, client = server.client()
    try:
        device = server.devices[0]
        fdinfo = Path(f"/proc/self/fdinfo/{device.direct_fd}").read_text()
        flags = int(next(line for line in fdinfo.splitlines() if line.startswith("flags:")).split()[1], 8)
        assert flags & os.O_DIRECT
        client.write(3, b"x" * 1536)  # BlkClient's buffers are 64-byte aligned: bounced
        assert client.read(3, 3) == b"x" * 1536
    finally:
        frontend.close()


def test_io_uring_completes_out_of_order(serve):
    server = serve("io_uring", cache="none")
    frontend, client = server.client(queue_size=256)
    try:
        ops: list[tuple[str, int, Any]] = []
        for k in range(200):  # big reads, small ones, writes and flushes: they do not finish in order
            ops.append(("read", (k * 517) % (SECTORS - 2048), 2048 if k % 3 == 0 else 1))
            if k % 10 == 0:
                ops += [("write", 4096 + k, os.urandom(512)), ("flush", 0, None)]
        assert all(not isinstance(r, Exception) for r in client.run(ops, depth=128))
    finally:
        frontend.close()
    server.close()
    assert sum(executor.completed_out_of_order for executor in server.made) > 0


def request(frontend: Frontend, q: Any, readable: list[bytes], writable: list[int]) -> tuple[list[bytes], int]:
    """Make one chain available (``readable`` buffers' contents, ``writable`` buffers' sizes, pre-filled with
    0xEE), kick, and wait for it: the writable buffers' contents and the written length."""
    alloc, mem = frontend.allocator.alloc, frontend.mem
    out = []
    for data in readable:
        addr = alloc(len(data))
        mem.write(addr, data)
        out.append((addr, len(data)))
    in_ = []
    for size in writable:
        addr = alloc(size)
        mem.write(addr, b"\xee" * size)
        in_.append((addr, size))
    q.driver.add(out, in_, token="raw")
    frontend.kick(q)
    [(token, written)] = frontend.wait(q)
    assert token == "raw"
    return [mem.read(addr, size) for addr, size in in_], written


def header(rtype: int, sector: int = 0) -> bytes:
    return HEADER.pack(rtype, 0, sector)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_request_rules(serve, image, executor):
    """Request.parse and BlkDevice._serve's rules, whoever serves: statuses and written lengths."""
    server = serve(executor, serial="disk-serial")
    frontend, client = server.client()
    q = client.queues[0]
    try:
        data = image.read_bytes()
        # A read whose status byte ends its data buffer, the header split over two buffers.
        (buf,), written = request(frontend, q, [header(T_IN, 2)[:5], header(T_IN, 2)[5:]], [1025])
        assert (buf[:1024], buf[1024], written) == (data[1024:2048], S_OK, 1025)
        # Short header: IOERR in the status byte.
        (status,), written = request(frontend, q, [header(T_IN)[:8]], [1])
        assert (status, written) == (bytes([S_IOERR]), 1)
        # No writable byte: completed with nothing written.
        _, written = request(frontend, q, [header(T_FLUSH)], [])
        assert written == 0
        # Out of range, unaligned length, past the end.
        for sector, length in [(SECTORS, 512), (0, 100), (SECTORS - 1, 1024), (1 << 62, 512)]:
            (_, status), written = request(frontend, q, [header(T_IN, sector)], [length, 1])
            assert (status, written) == (bytes([S_IOERR]), 1)
        # Unknown type.
        (status,), written = request(frontend, q, [header(99)], [1])
        assert (status, written) == (bytes([S_UNSUPP]), 1)
        # GET_ID: the serial NUL-padded to 20 bytes, or cut to the buffer; none without a buffer.
        (ident, status), written = request(frontend, q, [header(T_GET_ID)], [20, 1])
        assert (ident, status, written) == (b"disk-serial".ljust(20, b"\0"), bytes([S_OK]), 21)
        (ident, status), written = request(frontend, q, [header(T_GET_ID)], [4, 1])
        assert (ident, status, written) == (b"disk", bytes([S_OK]), 5)
        (status,), written = request(frontend, q, [header(T_GET_ID)], [1])
        assert (status, written) == (bytes([S_IOERR]), 1)
        # A write, then flush; a write past the end.
        (status,), written = request(frontend, q, [header(T_OUT, 10), b"w" * 512], [1])
        assert (status, written) == (bytes([S_OK]), 1)
        (status,), _ = request(frontend, q, [header(T_FLUSH)], [1])
        assert status == bytes([S_OK])
        assert image.read_bytes()[10 * 512:11 * 512] == b"w" * 512
        (status,), _ = request(frontend, q, [header(T_OUT, SECTORS), b"w" * 512], [1])
        assert status == bytes([S_IOERR])
        # Write zeroes and discard: segments checked first, flags by type.
        (status,), _ = request(frontend, q, [header(T_WRITE_ZEROES), DISCARD_SEG.pack(20, 4, 0)], [1])
        assert status == bytes([S_OK]) and image.read_bytes()[20 * 512:24 * 512] == bytes(2048)
        (status,), _ = request(frontend, q, [header(T_DISCARD), DISCARD_SEG.pack(30, 8, 0)], [1])
        assert status == bytes([S_OK])
        (status,), _ = request(frontend, q, [header(T_DISCARD), DISCARD_SEG.pack(30, 8, 1)], [1])
        assert status == bytes([S_UNSUPP])
        (status,), _ = request(frontend, q, [header(T_WRITE_ZEROES), DISCARD_SEG.pack(30, 8, 2)], [1])
        assert status == bytes([S_UNSUPP])
        (status,), _ = request(frontend, q, [header(T_WRITE_ZEROES), DISCARD_SEG.pack(SECTORS, 1, 0)], [1])
        assert status == bytes([S_IOERR])
        (status,), _ = request(frontend, q, [header(T_DISCARD), b"short"], [1])
        assert status == bytes([S_IOERR])
        (status,), _ = request(frontend, q, [header(T_DISCARD)], [1])
        assert status == bytes([S_IOERR])
    finally:
        frontend.close()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_what_an_answer_cannot_tell_is_logged_alike(serve, executor, caplog):
    """A request with no status byte or a short header, and an I/O the image refuses, are each one warning
    line of vring.blk, the same whoever serves (the C executor calls the device's own lines)."""
    server = serve(executor)
    frontend, client = server.client()
    q = client.queues[0]
    caplog.set_level(logging.WARNING, logger="vring.blk")
    try:
        request(frontend, q, [header(T_FLUSH)], [])
        request(frontend, q, [header(T_IN)[:8]], [1])
        full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
        try:
            os.dup2(full, server.image.fd)
        finally:
            os.close(full)
        (status,), _ = request(frontend, q, [header(T_OUT, 4), b"x" * 512], [1])
        assert status == bytes([S_IOERR])
        (status,), _ = request(frontend, q, [header(T_WRITE_ZEROES), DISCARD_SEG.pack(8, 2, 0)], [1])
        assert status == bytes([S_IOERR])
    finally:
        frontend.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "vring.blk"]
    enospc = f"I/O error on {server.image.path}: [Errno 28] No space left on device"
    assert len(lines) == 4, lines
    assert re.fullmatch(r"queue 0: request \d+ has no status byte; completed without an answer", lines[0])
    assert re.fullmatch(r"queue 0: request \d+ header is 8 bytes, not 16", lines[1])
    assert lines[2:] == [enospc, enospc]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_read_only_device(serve, image, executor):
    os.chmod(image, 0o444)
    server = serve(executor, read_only=True)
    frontend, client = server.client()
    q = client.queues[0]
    try:
        before = image.read_bytes()
        assert client.read_only and client.read(1, 1) == before[512:1024]
        for chain in ([header(T_OUT, 1), b"w" * 512], [header(T_DISCARD), DISCARD_SEG.pack(0, 1, 0)],
                      [header(T_WRITE_ZEROES), DISCARD_SEG.pack(0, 1, 0)]):
            (status,), _ = request(frontend, q, chain, [1])
            assert status == bytes([S_IOERR])
        (status,), _ = request(frontend, q, [header(T_FLUSH)], [1])
        assert status == bytes([S_OK])
        assert image.read_bytes() == before
    finally:
        frontend.close()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_malformed_ring_latches_only_its_queue(serve, executor):
    server = serve(executor, num_queues=2)
    frontend, client = server.client(queues=2)
    try:
        q0, q1 = client.queues
        assert client.read(0, 1)
        # queue 0's next avail entry: a head out of range
        avail = q0.layout.driver_area
        index = struct.unpack("<H", frontend.mem.read(avail + 2, 2))[0]
        frontend.mem.write(avail + 4 + 2 * (index % 128), struct.pack("<H", 999))
        frontend.mem.write(avail + 2, struct.pack("<H", (index + 1) & 0xFFFF))
        os.eventfd_write(q0.kick, 1)
        assert select.select([q0.err], [], [], 10)[0] == [q0.err]
        assert server.devices[0].status & DEVICE_NEEDS_RESET
        ops = [("read", k, 1) for k in range(8)]
        client.queues = [q1]  # queue 1 still serves
        assert len(client.run(ops, depth=8)) == 8
    finally:
        frontend.close()


@pytest.mark.parametrize("executor", ["io_uring", "threads", "python"])
def test_get_vring_base_waits_for_requests_in_flight(serve, executor):
    server = serve(executor, cache="none")
    frontend, client = server.client(queue_size=128)
    q = client.queues[0]
    try:
        for k in range(60):
            client._submit(q, blk_pending(k), in_len=256 * 512)  # 128 KiB reads, O_DIRECT: slow enough
        frontend.kick(q)
        base = frontend.stop_queue(0)
        used_idx = struct.unpack("<H", frontend.mem.read(q.layout.device_area + 2, 2))[0]
        assert base == used_idx  # every chain the back-end took was pushed before it answered
        assert len(q.driver.pop_used()) == base
    finally:
        frontend.close()


def blk_pending(index: int) -> Any:
    from vring.drivers.blk import _Pending

    return _Pending(T_IN, index * 256, index)


def test_stop_eventfd_wakes_an_idle_worker_promptly(serve):
    server = serve("io_uring", num_queues=2)
    frontend, client = server.client(queues=2)
    try:
        client.read(0, 1)
        done = threading.Event()

        def stop() -> None:
            frontend.stop_queue(1)  # queue 1's worker, idle, quiesces before the answer
            done.set()

        started = time.monotonic()
        threading.Thread(target=stop, daemon=True).start()
        assert done.wait(5), "an idle worker did not wake for its stop eventfd"
        assert time.monotonic() - started < 5
        assert client.read(1, 1)  # queue 0's worker was restarted
    finally:
        frontend.close()


@pytest.mark.parametrize("per_thread", [1, 2])
def test_a_message_about_one_ring_restarts_only_its_groups_worker(serve, per_thread):
    """SET_VRING_CALL and GET_VRING_BASE for queue 3 quiesce the worker of queue 3's group and no other: queue
    0's worker serves on, never restarted, while the messages come and after them."""
    server = serve("io_uring", num_queues=4, queues_per_thread=per_thread)
    frontend, client = server.client(queues=4)
    device = server.devices[0]
    try:
        started = list(device.groups)
        # The set-up: SET_VRING_ENABLE k starts queue k's group (with the rings of it that run), and no other;
        # SET_STATUS (DRIVER_OK), a message about the whole device, restarts every group.
        if per_thread == 1:
            assert started == [(0,), (1,), (2,), (3,)] * 2
        else:
            assert started == [(0,), (0, 1), (2,), (2, 3), (0, 1), (2, 3)]
        groups = sorted(set(started[-4 // per_thread:]))
        first = len(started)
        stop = threading.Event()
        reads = [0]

        def read_queue0() -> None:  # client.read uses queue 0; this thread alone uses the client meanwhile
            while not stop.is_set():
                assert client.read(reads[0] % SECTORS, 1)
                reads[0] += 1

        thread = threading.Thread(target=read_queue0)
        thread.start()
        try:
            for _ in range(20):
                frontend.request(Request.SET_VRING_CALL, U64.pack(3), [client.queues[3].call])
        finally:
            stop.set()
            thread.join(10)
        assert not thread.is_alive() and reads[0] > 0
        assert device.groups[first:] == [groups[-1]] * 20  # queue 3's group, restarted with its new call fd
        frontend.stop_queue(3)
        after = [(2,)] if per_thread == 2 else []  # queue 2 goes on alone
        assert device.groups[first + 20:] == after
        assert client.read(0, 1)
        assert len(device.groups) == first + 20 + len(after)  # and queue 0's worker served that read
    finally:
        frontend.close()


@pytest.mark.parametrize("executor", ["io_uring", "python"])
def test_no_fd_or_thread_leak_over_many_connections(serve, executor):
    server = serve(executor, num_queues=2)

    def cycle() -> None:
        frontend, client = server.client(queues=2)
        client.read(0, 1)
        frontend.close()
        os.close(frontend.memfd)  # the front-end keeps its memory for a reconnect

    def at_rest(threads: int) -> int:
        """The open fds once only ``threads`` run: a connection's thread closes what it holds after the
        front-end went, then ends."""
        deadline = time.monotonic() + 10
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() == threads
        return len(os.listdir("/proc/self/fd"))

    threads = threading.active_count()  # the server's accept loop runs; no connection yet
    cycle()
    fds = at_rest(threads)
    for _ in range(1000):
        cycle()
    assert at_rest(threads) == fds


@pytest.mark.parametrize("aio,cache", [("io_uring", "writeback"), ("threads", "none"), ("sync", "writeback"),
                                       ("io_uring", "none")])
def test_vring_serve_blk_aio_and_cache_options(tmp_path, image, aio, cache):
    """`vring serve blk --aio --cache` as a user runs it: the start-up line says which I/O is used, and
    BlkClient's requests (two queues, many in flight) get the image's data."""
    sock = tmp_path / "blk.sock"
    with vring_blk(image, sock, queues=2, extra=("--aio", aio, "--cache", cache, "--queues-per-thread", "2")):
        frontend = Frontend(str(sock)).connect()
        try:
            client = BlkClient(frontend, queues=2)
            writes = [("write", 16 * k, os.urandom(4096)) for k in range(64)]
            assert client.run(writes, depth=32) == [None] * 64
            assert client.run([("read", s, 8) for _, s, _ in writes], depth=32) == [d for _, _, d in writes]
            client.write_zeroes(2000, 8)
            client.flush()
            assert image.read_bytes()[2000 * 512:2008 * 512] == bytes(4096)
        finally:
            frontend.close()
    described = {"io_uring": "io_uring", "threads": "a thread pool", "sync": "synchronous I/O"}[aio]
    assert f"vring: block I/O by {described}, cache {cache}\n" in sock.with_suffix(".log").read_text()


def test_a_subclass_serving_its_own_way_gets_the_python_worker(image):
    class Custom(BlkDevice):
        def handle(self, queue, chain):
            return super().handle(queue, chain)

    shared = Image(str(image))
    try:
        assert Custom(shared).make_worker([], -1) is None  # the C loop would bypass its handle
        assert BlkDevice(shared).make_worker([], -1) is not None
    finally:
        shared.close()
