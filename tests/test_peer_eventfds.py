"""A front-end's eventfds are shared with it: SCM_RIGHTS hands the back-end the same open file description, so
the O_NONBLOCK the back-end sets on a kick or call fd, the front-end can clear again, and it can fill a call
counter to its maximum. No worker may then block on a read or write of either: GET_VRING_BASE is still answered,
and the ring still serves. The C executor (virtio-blk) and the generic Python worker (rng) are both driven here."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from vring import Feature
from vring.devices.blk import BlkDevice, HEADER, S_OK, T_IN
from vring.devices.rng import RngDevice
from vring.vhost_user import VhostUserBackend
from vring.vhost_user.frontend import Frontend

SATURATED = 0xFFFF_FFFF_FFFF_FFFE  # an eventfd counter at its maximum: adding 1 would block a blocking writer
DEVICES = ["blk", "rng"]  # the C executor, the generic Python worker


@pytest.fixture(params=DEVICES)
def frontend(request, tmp_path: Path) -> Iterator[tuple[str, Frontend]]:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    kind = request.param
    factory = (lambda: BlkDevice(str(image))) if kind == "blk" else RngDevice
    path = str(tmp_path / "peer.sock")
    backend = VhostUserBackend(factory, path)
    backend.listen()
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    front = Frontend(path, timeout=5.0).connect()
    front.negotiate(Feature.VERSION_1 | Feature.EVENT_IDX)
    front.setup_queues(1, 64)
    try:
        yield kind, front
    finally:
        front.close()
        backend.stop()
        thread.join(10)
        assert not thread.is_alive()


def submit(kind: str, front: Frontend, token: Any) -> int:
    """One request made available (not kicked): a 4 KiB read for blk, 64 random bytes for rng; its status
    or data buffer's address."""
    q = front.queues[0]
    alloc, mem = front.allocator.alloc, front.mem
    if kind == "blk":
        head, data, status = alloc(HEADER.size), alloc(4096), alloc(1)
        mem.write(head, HEADER.pack(T_IN, 0, 8))
        mem.write(status, b"\xee")
        q.driver.add([(head, HEADER.size)], [(data, 4096), (status, 1)], token=token)
        return status
    data = alloc(64)
    q.driver.add([], [(data, 64)], token=token)
    return data


def completed(front: Frontend, count: int, timeout: float = 10.0) -> list[Any]:
    """Wait, by looking at the used ring and never at the call eventfd, for ``count`` completions."""
    q = front.queues[0]
    done: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        done += [token for token, _ in q.driver.pop_used()]
        time.sleep(0.001)
    return done


def test_a_call_eventfd_made_blocking_and_full_never_blocks_a_worker(frontend):
    kind, front = frontend
    q = front.queues[0]
    os.set_blocking(q.call, True)  # the back-end's copy with it: one file description
    os.eventfd_write(q.call, SATURATED)
    status = [submit(kind, front, k) for k in range(8)]
    front.kick(q)  # published, and kicked
    assert sorted(completed(front, 8)) == list(range(8))  # served, though no interrupt could be added
    if kind == "blk":
        assert {front.mem.read(addr, 1) for addr in status} == {bytes([S_OK])}
    assert front.stop_queue(0) == 8  # answered: the worker quiesced instead of blocking in its write
    assert os.eventfd_read(q.call) == SATURATED  # the counter was left as the peer made it


def test_a_kick_eventfd_made_blocking_and_raced_never_blocks_a_worker(frontend):
    """The front-end takes back each kick it sends, racing the worker that poll() woke for it: a worker that
    then read the kick without RWF_NOWAIT would wait forever on an empty, blocking eventfd."""
    kind, front = frontend
    q = front.queues[0]
    os.set_blocking(q.kick, True)
    os.set_blocking(q.call, False)
    for _ in range(300):
        os.eventfd_write(q.kick, 1)
        try:  # taken back unless the worker took it first (the test's own read must not wait either)
            os.preadv(q.kick, [bytearray(8)], -1, os.RWF_NOWAIT)
        except BlockingIOError:
            pass
    submit(kind, front, "last")
    front.kick(q)  # the worker still serves: its kicks are read, never waited for
    os.eventfd_write(q.kick, 1)
    assert completed(front, 1) == ["last"]
    assert front.stop_queue(0) == 1
