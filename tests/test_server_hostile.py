"""The vhost-user server against hostile front-ends: no resource outlives its connection, no peer fd can block a
connection thread, every field is range-checked, every closing log line names its cause, and ``--socket`` replaces
only a stale socket. Each error closes only its own connection; the server goes on serving the others."""

from __future__ import annotations

import logging
import mmap
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from vring import Feature, GuestMemory, contiguous_layout, create_driver_queue
from vring.devices.rng import RngDevice
from vring.drivers.blk import BlkClient
from vring.vhost_user import Connection, VhostUserBackend
from vring.vhost_user.frontend import Frontend
from vring.vhost_user.protocol import (
    CONFIG_HEAD, HEADER, MEM_REGION, MEM_TABLE_HEAD, U64, VRING_ADDR, VRING_STATE, Request, send_message,
)

from support.backends import PACKAGE_ROOT, log_has, vring_blk
from support.raw import closed_by_server, raw_client

RING = 64  # the size of every ring set up by raw messages here
UVA = 0x7000_0000  # the user address the raw front-ends give their one memory region (guest-physical 0)
MEM_BYTES = 1 << 20
SATURATED = 0xFFFF_FFFF_FFFF_FFFE  # an eventfd counter at its maximum: one more write would block


# -- raw front-ends ------------------------------------------------------------------------------------------


def answer(s: socket.socket, timeout: float = 5.0) -> str:
    """Ask GET_FEATURES: "reply" if the connection thread answers in time, "closed" or "silent" if not."""
    s.settimeout(timeout)
    try:
        send_message(s, Request.GET_FEATURES)
        head = s.recv(HEADER.size + U64.size)
    except (BrokenPipeError, ConnectionResetError):
        return "closed"
    except socket.timeout:
        return "silent"
    return "reply" if head else "closed"


def memfd(size: int = MEM_BYTES) -> int:
    fd = os.memfd_create("hostile")
    os.ftruncate(fd, size)
    return fd


def region(gpa: int = 0, size: int = MEM_BYTES, uva: int = UVA, offset: int = 0) -> bytes:
    return MEM_REGION.pack(gpa, size, uva, offset)


def send_with_fd(s: socket.socket, request: Request, payload: bytes, fd: int) -> None:
    """Send a message carrying ``fd``, then close our copy: the back-end holds its own."""
    send_message(s, request, payload, [fd])
    os.close(fd)


def start_ring(s: socket.socket, mem: int, kick: int | None = None) -> None:
    """A ring the way a front-end without protocol features sets it up: features, the memory table (from
    ``mem``), size, addresses, call and kick eventfds; it starts, enabled, at the kick. ``kick`` is sent as is
    (and closed here); None sends a fresh eventfd."""
    layout = contiguous_layout(Feature.VERSION_1, RING, 0)
    send_message(s, Request.SET_FEATURES, U64.pack(Feature.VERSION_1))
    send_message(s, Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + region(), [mem])
    send_message(s, Request.SET_VRING_NUM, VRING_STATE.pack(0, RING))
    send_message(s, Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, UVA + layout.desc, UVA + layout.device_area,
                                                            UVA + layout.driver_area, 0))
    send_with_fd(s, Request.SET_VRING_CALL, U64.pack(0), os.eventfd(0, os.EFD_NONBLOCK))
    send_with_fd(s, Request.SET_VRING_KICK, U64.pack(0), os.eventfd(0, os.EFD_NONBLOCK) if kick is None else kick)


# -- the server process --------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    sock = tmp_path / "vring.sock"
    with vring_blk(image, sock) as proc:
        yield sock, image, proc



def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mappings(pid: int) -> list[str]:
    """The memory mappings of a process: one line of /proc/PID/maps each, the path (if any) in the sixth field.

    The kernel hands the file out a page at a time and walks the mappings afresh for each page, so a read that
    crosses a change (a heap grown or trimmed by one of the process's threads) can show a line twice or miss
    one: the reading is taken again until two in a row agree."""
    def read() -> list[str]:
        with open(f"/proc/{pid}/maps") as maps:
            return maps.read().splitlines()

    last = read()
    for _ in range(50):
        now = read()
        if now == last:
            return now
        last = now
        time.sleep(0.01)
    return last


def usage(pid: int) -> tuple[int, int, int]:
    """(open fds, mappings of files, threads) of a process. A connection maps the front-end's memory from its fd
    (a memfd here): a mapping of a file. The anonymous ones are the allocators' (the C library's arenas and
    cache of thread stacks, Python's object arenas), grown and shrunk with the heap, not with connections."""
    files = sum(1 for line in mappings(pid) if line.split(maxsplit=5)[-1].startswith("/"))  # a path, not an inode
    return fd_count(pid), files, len(os.listdir(f"/proc/{pid}/task"))


def settles_at(pid: int, expected: tuple[int, int, int], timeout: float = 10.0) -> tuple[int, int, int]:
    """The process's usage once it equals ``expected`` (connection threads take a moment to close), or what it
    is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while (now := usage(pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def at_rest(pid: int, threads: int, timeout: float = 10.0) -> tuple[int, int, int]:
    """The usage of the server once it runs only the ``threads`` it had before any connection."""
    deadline = time.monotonic() + timeout
    while (now := usage(pid))[2] != threads and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


# -- 1. nothing outlives its connection ----------------------------------------------------------------------
CYCLES = 10_000  # connect, SET_MEM_TABLE, start a ring, disconnect: about 30 s


def test_connection_cycles_leave_no_fd_or_mapping_behind(server):
    sock, _, proc = server
    threads = usage(proc.pid)[2]  # before any connection: the accept loop (and any thread a library started)
    mem = memfd()

    def cycle() -> None:
        with raw_client(sock) as s:
            start_ring(s, mem)
            assert answer(s) == "reply"  # every message before it was handled: the ring runs

    # Warm up what the C library keeps for the process's life once it has made it: malloc's per-thread arenas
    # (at most 8 per core) and its cache of thread stacks. Many connections at once make them all.
    warm = [raw_client(sock) for _ in range(20)]
    for s in warm:
        start_ring(s, mem)
    assert [answer(s) for s in warm] == ["reply"] * len(warm)
    for s in warm:
        s.close()
    for _ in range(5):
        cycle()
    baseline = at_rest(proc.pid, threads)
    assert baseline[2] == threads
    all_mappings = len(mappings(proc.pid))
    for _ in range(CYCLES):
        cycle()
    assert settles_at(proc.pid, baseline) == baseline, f"(fds, mappings of files, threads) after {CYCLES} connections"
    assert not [line for line in mappings(proc.pid) if "memfd:hostile" in line], "a front-end's memory is still mapped"
    # Anything left per connection would add one per cycle; the allocators' own mappings move by a few either way.
    assert len(mappings(proc.pid)) <= all_mappings + 8
    os.close(mem)
    assert proc.poll() is None


def test_hundred_concurrent_connections_are_served(server):
    sock, image, proc = server
    data = image.read_bytes()
    fronts = [Frontend(str(sock), mem_size=MEM_BYTES).connect() for _ in range(100)]
    try:
        clients = [BlkClient(front, queue_size=16, indirect=False) for front in fronts]
        for i, client in enumerate(clients):
            assert client.read(i, 1) == data[i * 512:(i + 1) * 512], f"connection {i}"
        for i, client in enumerate(clients):  # all of them still up, each served again
            assert client.read(2 * i + 1, 1) == data[(2 * i + 1) * 512:(2 * i + 2) * 512], f"connection {i}"
    finally:
        for front in fronts:
            front.close()
            os.close(front.memfd)
    assert proc.poll() is None


def test_a_client_that_stops_reading_its_replies_blocks_no_other_connection(server):
    sock, image, proc = server
    greedy = raw_client(sock)
    greedy.settimeout(None)
    sent = [0]

    def ask_and_never_read() -> None:  # the replies fill the socket, then our requests fill it the other way
        try:
            while True:
                greedy.sendall(HEADER.pack(Request.GET_FEATURES, 1, 0))
                sent[0] += 1
        except OSError:
            pass  # the socket was shut down at the end of the test

    asker = threading.Thread(target=ask_and_never_read, daemon=True)
    asker.start()
    before = -1
    while sent[0] != before:  # until our requests no longer go out: the server's thread is stuck writing
        before = sent[0]
        time.sleep(0.5)
    # A few hundred small messages fill a unix socket each way (each takes a buffer of its own): a server that
    # answered them all would have let thousands through.
    assert 100 < sent[0] < 100_000
    with Frontend(str(sock), mem_size=MEM_BYTES) as front:
        front.connect()
        assert BlkClient(front, queue_size=16).read(7, 1) == image.read_bytes()[7 * 512:8 * 512]
        os.close(front.memfd)
    greedy.shutdown(socket.SHUT_RDWR)
    greedy.close()
    asker.join(5)
    assert proc.poll() is None


def test_running_out_of_fds_is_logged_and_survived(server):
    """With its fd limit lowered at run time, the server runs out of fds at each step of taking a connection
    (accept, opening the image, the connection's selector) in turn: it logs it and goes on, and once fds are
    free again it serves a new connection."""
    sock, _, proc = server
    idle = fd_count(proc.pid)
    probe = raw_client(sock)
    assert answer(probe) == "reply"
    per_connection = fd_count(proc.pid) - idle
    probe.close()
    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    try:
        for spare in range(per_connection):  # fds left for the third connection: it fails at step `spare`
            deadline = time.monotonic() + 10
            while fd_count(proc.pid) != idle and time.monotonic() < deadline:
                time.sleep(0.05)
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (idle + 2 * per_connection + spare, hard))
            held = [raw_client(sock) for _ in range(2)]
            assert [answer(s) for s in held] == ["reply", "reply"], f"spare {spare}"
            starved = raw_client(sock)
            outcome = answer(starved, timeout=3)  # closed (no device or selector) or silent (not accepted)
            assert outcome in ("closed", "silent"), f"spare {spare}: {outcome}"
            assert proc.poll() is None, f"spare {spare}: the server exited"
            for s in held:
                s.close()
            if outcome == "silent":  # still waiting in the listen backlog: accepted now that fds are free
                assert answer(starved) == "reply", f"spare {spare}: the waiting connection was not served"
            starved.close()
            assert proc.poll() is None and sock.exists(), f"spare {spare}: the server stopped"
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
            with raw_client(sock) as fresh:
                assert answer(fresh) == "reply", f"spare {spare}: no new connection served"
    finally:
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert log_has(sock, "Too many open files")
    assert proc.poll() is None


# -- 2. no peer fd blocks a connection thread ----------------------------------------------------------------
@pytest.fixture
def rng_server(tmp_path: Path):
    sock = tmp_path / "rng.sock"
    with vring_blk(tmp_path, sock, device="rng") as proc:
        yield sock, proc


@pytest.mark.parametrize("which", ["call", "err"])
def test_saturated_blocking_eventfd_does_not_hang_the_connection(rng_server, which):
    """A call or err eventfd passed in blocking mode with its counter at the maximum: signalling it must not block
    the connection thread (the driver has an interrupt pending anyway)."""
    sock, proc = rng_server
    front = Frontend(str(sock), mem_size=MEM_BYTES, timeout=3).connect()
    front.negotiate(0)  # no EVENT_IDX: every used buffer interrupts
    (q,) = front.setup_queues(1, 16)
    saturated = os.eventfd(0)  # blocking
    os.eventfd_write(saturated, SATURATED)
    request = Request.SET_VRING_CALL if which == "call" else Request.SET_VRING_ERR
    send_with_fd(front.sock, request, U64.pack(0), saturated)
    if which == "call":  # a request served: the back-end signals the call eventfd
        buf = front.allocator.alloc(64)
        q.driver.add([], [(buf, 64)], token="entropy")
        front.kick(q)
        deadline = time.monotonic() + 5
        while not (done := q.driver.pop_used()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done == [("entropy", 64)]
    else:  # a malformed ring: the back-end signals the err eventfd
        front.mem.write(q.layout.avail + 4, struct.pack("<H", 999))  # ring[0]: a head out of range
        front.mem.write(q.layout.avail + 2, struct.pack("<H", 1))  # avail idx
        os.eventfd_write(q.kick, 1)
        assert log_has(sock, "queue 0 stopped: malformed chain")
    assert front.request(Request.GET_FEATURES) is not None  # the connection thread is still serving
    front.close()
    os.close(front.memfd)
    assert proc.poll() is None


@pytest.mark.parametrize("swap", ["SET_VRING_KICK", "RESET_OWNER"])
def test_kick_fd_replaced_while_its_kick_is_pending(swap, caplog):
    """A message that replaces (or closes) a kick fd, handled in the same selector batch as a pending kick on the
    old fd: the stale kick must neither block on the new fd nor read a closed one."""
    caplog.set_level(logging.INFO, logger="vring.vhost_user")
    ours, theirs = socket.socketpair()
    conn = Connection(ours, RngDevice(), "hostile")
    mem = memfd()
    old_kick = os.eventfd(0, os.EFD_NONBLOCK)
    os.eventfd_write(old_kick, 1)  # already kicked when the ring starts: ready in the batch after it
    new_kick = os.eventfd(0)  # blocking, never kicked
    # All queued before the connection runs: handled one message per select(), the swap comes in the batch that
    # also reports the old kick (the kick fd joins the ready list behind the socket).
    start_ring(theirs, mem, kick=os.dup(old_kick))
    if swap == "SET_VRING_KICK":
        send_message(theirs, Request.SET_VRING_KICK, U64.pack(0), [new_kick])
    else:
        send_message(theirs, Request.RESET_OWNER)
    stop = threading.Event()
    thread = threading.Thread(target=conn.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert answer(theirs) == "reply", "the connection thread stopped answering"
        if swap == "SET_VRING_KICK":  # the new kick fd is the one watched: a chain made available is served
            shared = mmap.mmap(mem, MEM_BYTES)
            guest = GuestMemory()
            guest.add_region(0, shared)
            driver = create_driver_queue(guest, contiguous_layout(Feature.VERSION_1, RING, 0), Feature.VERSION_1)
            driver.add([], [(0x8000, 32)], token="after the swap")
            assert driver.kick_needed()
            os.eventfd_write(new_kick, 1)
            deadline = time.monotonic() + 5
            while not (done := driver.pop_used()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert done == [("after the swap", 32)]
    finally:
        theirs.close()
        thread.join(timeout=5)
        stop.set()
    assert not thread.is_alive()
    assert "front-end disconnected" in caplog.text
    for fd in (mem, old_kick, new_kick):
        os.close(fd)


# -- 3. every field range-checked; 4. every closing cause named ----------------------------------------------
def bad_fields() -> list[tuple[str, str, Callable[[socket.socket], None]]]:
    """(name, what the log must say, a function that sends it on a raw socket)."""
    huge = 1 << 63

    def mem_table(**fields: int) -> Callable[[socket.socket], None]:
        def send(s: socket.socket) -> None:
            send_with_fd(s, Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0) + region(**fields), memfd())
        return send

    def add_mem_reg(**fields: int) -> Callable[[socket.socket], None]:
        def send(s: socket.socket) -> None:
            send_with_fd(s, Request.ADD_MEM_REG, bytes(8) + region(**fields), memfd())
        return send

    def message(request: Request, payload: bytes) -> Callable[[socket.socket], None]:
        return lambda s: send_message(s, request, payload)

    def eventfd_kind(request: Request, make_fd: Callable[[], int]) -> Callable[[socket.socket], None]:
        def send(s: socket.socket) -> None:
            mem = memfd()
            start_ring(s, mem)
            os.close(mem)
            send_with_fd(s, request, U64.pack(0), make_fd())
        return send

    def pipe_at_eof() -> int:
        read_end, write_end = os.pipe()
        os.close(write_end)
        return read_end

    def a_socket() -> int:
        one, other = socket.socketpair()
        other.close()
        return one.detach()

    def an_epoll() -> int:
        with select.epoll() as epoll:
            return os.dup(epoll.fileno())

    def kick_pipe_at_eof(s: socket.socket) -> None:  # the pipe replaces a running ring's kick
        mem = memfd()
        start_ring(s, mem, kick=pipe_at_eof())
        os.close(mem)

    return [
        ("SET_MEM_TABLE memory_size 2^63", "SET_MEM_TABLE: region 0 memory_size 0x8000000000000000",
         mem_table(size=huge)),
        ("SET_MEM_TABLE memory_size 2^64-1", "SET_MEM_TABLE: region 0 memory_size 0xffffffffffffffff",
         mem_table(size=(1 << 64) - 1)),
        ("SET_MEM_TABLE mmap_offset 2^63", "SET_MEM_TABLE: region 0 mmap_offset 0x8000000000000000",
         mem_table(offset=huge)),
        ("SET_MEM_TABLE mmap_offset + memory_size", "SET_MEM_TABLE: region 0 mmap_offset 0x4000000000000000 + "
         "memory_size 0x4000000000000000", mem_table(offset=1 << 62, size=1 << 62)),
        ("SET_MEM_TABLE memory_size 0", "SET_MEM_TABLE: region 0 memory_size is 0", mem_table(size=0)),
        ("SET_MEM_TABLE guest_phys_addr wraps", "SET_MEM_TABLE: region 0 guest_phys_addr 0xfffffffffffff000 + "
         "memory_size", mem_table(gpa=(1 << 64) - 4096)),
        ("SET_MEM_TABLE userspace_addr wraps", "SET_MEM_TABLE: region 0 userspace_addr 0xfffffffffffff000 + "
         "memory_size", mem_table(uva=(1 << 64) - 4096)),
        ("SET_MEM_TABLE nregions 2^32-1", "SET_MEM_TABLE: 4294967295 regions",
         message(Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(0xFFFF_FFFF, 0))),
        ("ADD_MEM_REG memory_size 2^63", "ADD_MEM_REG: region memory_size 0x8000000000000000",
         add_mem_reg(size=huge)),
        ("ADD_MEM_REG mmap_offset 2^64-1", "ADD_MEM_REG: region mmap_offset 0xffffffffffffffff",
         add_mem_reg(offset=(1 << 64) - 1)),
        ("REM_MEM_REG memory_size 2^63", "REM_MEM_REG: region memory_size 0x8000000000000000",
         message(Request.REM_MEM_REG, bytes(8) + region(size=huge))),
        ("SET_VRING_NUM index 2^32-1", "SET_VRING_NUM: queue index 4294967295 is out of range",
         message(Request.SET_VRING_NUM, VRING_STATE.pack(0xFFFF_FFFF, RING))),
        ("SET_VRING_NUM num 2^32-1", "SET_VRING_NUM: queue 0 size 4294967295 is not a power of two",
         message(Request.SET_VRING_NUM, VRING_STATE.pack(0, 0xFFFF_FFFF))),
        ("SET_VRING_ADDR index 2^32-1", "SET_VRING_ADDR: queue index 4294967295 is out of range",
         message(Request.SET_VRING_ADDR, VRING_ADDR.pack(0xFFFF_FFFF, 0, 0, 0, 0, 0))),
        ("SET_VRING_ADDR flags", "SET_VRING_ADDR: queue 0 flags 0xffffffff",
         message(Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0xFFFF_FFFF, 0, 0, 0, 0))),
        ("SET_VRING_BASE index 2^32-1", "SET_VRING_BASE: queue index 4294967295 is out of range",
         message(Request.SET_VRING_BASE, VRING_STATE.pack(0xFFFF_FFFF, 0))),
        ("SET_VRING_BASE num 2^32-1", "SET_VRING_BASE: queue 0 base 0xffffffff is not a 16-bit index",
         message(Request.SET_VRING_BASE, VRING_STATE.pack(0, 0xFFFF_FFFF))),
        ("GET_VRING_BASE index 2^32-1", "GET_VRING_BASE: queue index 4294967295 is out of range",
         message(Request.GET_VRING_BASE, VRING_STATE.pack(0xFFFF_FFFF, 0))),
        ("SET_VRING_KICK u64 2^64-1", "SET_VRING_KICK: unknown bits in 0xffffffffffffffff",
         message(Request.SET_VRING_KICK, U64.pack((1 << 64) - 1))),
        ("SET_VRING_ENABLE index 2^32-1", "SET_VRING_ENABLE: queue index 4294967295 is out of range",
         message(Request.SET_VRING_ENABLE, VRING_STATE.pack(0xFFFF_FFFF, 1))),
        ("SET_VRING_ENABLE num 2^32-1", "SET_VRING_ENABLE: queue 0 state 4294967295 is neither 0 nor 1",
         message(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 0xFFFF_FFFF))),
        ("SET_FEATURES 2^64-1", "SET_FEATURES: 0x", message(Request.SET_FEATURES, U64.pack((1 << 64) - 1))),
        ("SET_PROTOCOL_FEATURES 2^64-1", "SET_PROTOCOL_FEATURES: 0x",
         message(Request.SET_PROTOCOL_FEATURES, U64.pack((1 << 64) - 1))),
        ("GET_CONFIG offset 2^32-1", "GET_CONFIG: 0 bytes at 4294967295 is past the 256-byte limit",
         message(Request.GET_CONFIG, CONFIG_HEAD.pack(0xFFFF_FFFF, 0, 0))),
        ("GET_CONFIG flags 2^32-1", "GET_CONFIG: flags 0xffffffff",
         message(Request.GET_CONFIG, CONFIG_HEAD.pack(0, 4, 0xFFFF_FFFF) + bytes(4))),
        ("SET_CONFIG offset 2^32-1", "SET_CONFIG: 1 bytes at 4294967295 is past the 256-byte limit",
         message(Request.SET_CONFIG, CONFIG_HEAD.pack(0xFFFF_FFFF, 1, 0) + bytes(1))),
        ("SET_CONFIG flags 2^32-1", "SET_CONFIG: flags 0xffffffff",
         message(Request.SET_CONFIG, CONFIG_HEAD.pack(32, 1, 0xFFFF_FFFF) + bytes(1))),
        ("header size 2^32-1", "payload of 4294967295 bytes is over the limit",
         lambda s: s.send(HEADER.pack(Request.SET_FEATURES, 0x1, 0xFFFF_FFFF))),
        ("header request 2^32-1", "unknown request 4294967295",
         lambda s: s.send(HEADER.pack(0xFFFF_FFFF, 0x1, 0))),
        # 4: an fd that is not an eventfd is refused when it arrives, named for what it is
        ("kick: a pipe at end of file", "SET_VRING_KICK: the kick fd of queue 0 is not an eventfd (a pipe)",
         kick_pipe_at_eof),
        ("kick: a regular file", "SET_VRING_KICK: the kick fd of queue 0 is not an eventfd (a regular file)",
         eventfd_kind(Request.SET_VRING_KICK, memfd)),
        ("call: a pipe", "SET_VRING_CALL: the call fd of queue 0 is not an eventfd (a pipe)",
         eventfd_kind(Request.SET_VRING_CALL, pipe_at_eof)),
        ("err: a socket", "SET_VRING_ERR: the err fd of queue 0 is not an eventfd (a socket)",
         eventfd_kind(Request.SET_VRING_ERR, a_socket)),
        ("kick: an epoll fd", "SET_VRING_KICK: the kick fd of queue 0 is not an eventfd (an anonymous inode "
         "of another kind)", eventfd_kind(Request.SET_VRING_KICK, an_epoll)),
    ]


def test_bad_fields_close_only_their_connection_naming_the_check(server):
    sock, image, proc = server
    good = Frontend(str(sock), mem_size=MEM_BYTES).connect()
    client = BlkClient(good, queue_size=16)
    data = image.read_bytes()
    for name, expected, send in bad_fields():
        with raw_client(sock) as s:
            send(s)
            assert closed_by_server(s), f"{name}: the connection stayed open"
        assert log_has(sock, f"protocol error, closing the connection: {expected}"), \
            f"{name}: no log line saying {expected!r}"
        assert client.read(3, 1) == data[3 * 512:4 * 512], f"{name}: the other client lost its service"
    log = sock.with_suffix(".log").read_text()
    assert "Traceback" not in log and "[Errno 0]" not in log
    assert proc.poll() is None
    with Frontend(str(sock), mem_size=MEM_BYTES) as fresh:  # and a new client is served
        fresh.connect()
        assert BlkClient(fresh, queue_size=16).read(0, 1) == data[:512]
        os.close(fresh.memfd)
    good.close()
    os.close(good.memfd)


# -- 5. --socket replaces only a stale socket ----------------------------------------------------------------
def rng_backend(path: Path) -> VhostUserBackend:
    return VhostUserBackend(RngDevice, str(path))


def test_listen_refuses_a_file_that_is_not_a_socket(tmp_path):
    from vring.vhost_user import NotASocket

    image = tmp_path / "disk.img"
    content = os.urandom(1 << 16)
    image.write_bytes(content)
    link = tmp_path / "link.sock"
    link.symlink_to(image)
    for path in (image, link):
        backend = rng_backend(path)
        with pytest.raises(NotASocket) as refused:
            backend.listen()
        assert str(refused.value) == f"{path} exists and is not a socket: refusing to replace it"
        backend.close()
    assert image.read_bytes() == content and link.is_symlink()


def test_serve_blk_with_the_image_as_socket_keeps_the_image(tmp_path):
    image = tmp_path / "disk.img"
    content = os.urandom(1 << 16)
    image.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "vring", "serve", "blk", str(image), "--socket", str(image)],
                          env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "is not a socket" in proc.stderr
    assert image.read_bytes() == content


def test_listen_on_a_live_socket_is_address_in_use(server):
    from vring.vhost_user import SocketInUse

    sock, image, proc = server
    inode = sock.stat().st_ino
    second = rng_backend(sock)
    with pytest.raises(SocketInUse) as in_use:
        second.listen()
    assert str(in_use.value) == f"{sock}: address in use (a server is listening on it)"
    second.close()
    assert sock.stat().st_ino == inode  # neither replaced nor removed
    with Frontend(str(sock), mem_size=MEM_BYTES) as front:
        front.connect()
        assert BlkClient(front, queue_size=16).read(5, 1) == image.read_bytes()[5 * 512:6 * 512]
        os.close(front.memfd)
    assert proc.poll() is None


def test_a_stale_socket_is_replaced_and_removed_at_exit(tmp_path):
    sock = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))  # a server that died without removing its socket
    dead.close()
    backend = rng_backend(sock)
    backend.listen()  # connect() is refused there: the socket is stale and replaced
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    with Frontend(str(sock), mem_size=MEM_BYTES) as front:
        front.connect()
        front.negotiate(0)
        (q,) = front.setup_queues(1, 16)
        buf = front.allocator.alloc(64)
        q.driver.add([], [(buf, 64)], token="entropy")
        front.kick(q)
        assert front.wait(q) == [("entropy", 64)]
        os.close(front.memfd)
    backend.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert not sock.exists()


def test_close_removes_only_the_socket_it_created(tmp_path):
    sock = tmp_path / "moved.sock"
    backend = rng_backend(sock)
    backend.listen()
    sock.unlink()  # someone else takes the path over while the server runs
    sock.write_text("not the server's")
    backend.close()
    assert sock.read_text() == "not the server's"
