"""The C virtio-blk executor (``vring._cring.BlkWorker``) at its edges, driven directly over a split ring in a
bytearray: a short transfer through an O_DIRECT bounce buffer, two rings broken in one round, and a ring whose
notification flags a worker before it left off."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import vring
from vring import Feature, GuestMemory, contiguous_layout, create_device_queue
from vring.devices.blk import HEADER, S_IOERR, T_IN

pytestmark = pytest.mark.skipif(vring.IMPLEMENTATION != "cython", reason="the C executor is the C core's")

RING, DATA = 0x1000, 0x10000  # guest-physical: the ring's region, then the data's
NEXT, WRITE = 1, 2
AIO = ["sync", "threads", "io_uring"]


class Ring:
    """A split ring of 16 over two regions of a bytearray: the ring at RING, data at DATA."""

    def __init__(self, features: int = 0) -> None:
        self.buf = bytearray(0x1000 + 0x10000)
        self.mem = GuestMemory()
        view = memoryview(self.buf)
        self.mem.add_region(RING, view[:0x1000])
        self.mem.add_region(DATA, view[0x1000:])
        self.layout = contiguous_layout(features, 16, RING, align=4)
        self.queue: Any = create_device_queue(self.mem, self.layout, features)
        self.kick, self.call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)

    def _at(self, gpa: int) -> int:
        return gpa - RING if gpa < DATA else 0x1000 + gpa - DATA

    def write(self, gpa: int, data: bytes) -> None:
        self.buf[self._at(gpa):self._at(gpa) + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.buf[self._at(gpa):self._at(gpa) + length])

    def chain(self, slot: int, segments: list[tuple[int, int, bool]]) -> None:
        """Descriptors from ``slot``: (address, length, device-writable) each, linked in order; made available."""
        for k, (gpa, length, writable) in enumerate(segments):
            more = k + 1 < len(segments)
            flags = (NEXT if more else 0) | (WRITE if writable else 0)
            self.write(self.layout.desc + 16 * (slot + k), struct.pack("<QIHH", gpa, length, flags,
                                                                       slot + k + 1 if more else 0))
        idx = struct.unpack("<H", self.read(self.layout.driver_area + 2, 2))[0]
        self.write(self.layout.driver_area + 4 + 2 * (idx % 16), struct.pack("<H", slot))
        self.write(self.layout.driver_area + 2, struct.pack("<H", idx + 1))

    def used(self) -> list[tuple[int, int]]:
        count = struct.unpack("<H", self.read(self.layout.device_area + 2, 2))[0]
        return [struct.unpack("<II", self.read(self.layout.device_area + 4 + 8 * k, 8)) for k in range(count)]

    def close(self) -> None:
        os.close(self.kick)
        os.close(self.call)


@pytest.fixture
def image(tmp_path: Path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x11" * 4096)
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def worker(rings: list[Ring], fd: int, size: int, stop: int, **options: Any) -> Any:
    return vring._cring.BlkWorker([(r.queue, r.kick, r.call) for r in rings], fd, size, stop_fd=stop, **options)


@pytest.mark.parametrize("aio", AIO)
def test_a_short_read_through_a_bounce_buffer_is_an_io_error_not_a_crash(image, aio):
    """The image is 4 KiB but the executor was told 8 KiB (it shrank): a 2 KiB read at sector 6, into a guest
    buffer O_DIRECT's alignment refuses (bounced), gets 1 KiB, then the end of the file."""
    ring = Ring()
    stop = os.eventfd(1, os.EFD_NONBLOCK)  # stop at once: the request in flight is finished first
    notices: list[tuple[int, ...]] = []
    ring.write(DATA, HEADER.pack(T_IN, 0, 6))
    ring.chain(0, [(DATA, 16, False), (DATA + 0x101, 2048, True), (DATA + 0x1000, 1, True)])
    executor = worker([ring], image, 8192, stop, align=512, aio=aio, notice=lambda *a: notices.append(a))
    try:
        assert executor.run() is None
        assert ring.used() == [(0, 1)]
        assert ring.read(DATA + 0x1000, 1) == bytes([S_IOERR])
        assert [(kind, head) for kind, _, head, _ in notices] == [(vring._cring.BLK_NOTICES["io-error"], 0)]
    finally:
        executor.close()
        os.close(stop)
        ring.close()


def test_two_rings_broken_in_one_round_are_each_reported(image):
    rings = [Ring(), Ring()]
    for ring in rings:
        ring.write(ring.layout.driver_area + 2, struct.pack("<H", 100))  # avail->idx 100 ahead of a ring of 16
    stop = os.eventfd(0, os.EFD_NONBLOCK)
    executor = worker(rings, image, 4096, stop, aio="sync")
    try:
        first = executor.run()
        second = executor.run()
        assert {first, second} == {0, 1}
        for position in (first, second):
            assert "avail" in str(executor.failure(position))
        os.eventfd_write(stop, 1)
        assert executor.run() is None
    finally:
        executor.close()
        os.close(stop)
        for ring in rings:
            ring.close()


@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event-idx"])
def test_an_idle_worker_rearms_notifications_a_worker_before_it_left_off(image, event_idx):
    """A worker stopped while it had notifications off (or a back-end before a restart) leaves the ring so:
    the next one must turn them on before it sleeps on the kick, or the driver never kicks again."""
    features = int(Feature.EVENT_IDX) if event_idx else 0
    ring = Ring(features)
    if event_idx:
        avail_event = ring.layout.device_area + 4 + 8 * 16
        ring.write(avail_event, struct.pack("<H", 3))  # stale: the driver is 7 ahead
        ring.write(ring.layout.driver_area + 2, struct.pack("<H", 7))
        ring.write(ring.layout.device_area + 2, struct.pack("<H", 7))
        ring.queue.restore((7, None))
    else:
        ring.write(ring.layout.device_area, struct.pack("<H", 1))  # VRING_USED_F_NO_NOTIFY
    stop = os.eventfd(0, os.EFD_NONBLOCK)
    executor = worker([ring], image, 4096, stop, aio="sync")
    thread = threading.Thread(target=executor.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        where = avail_event if event_idx else ring.layout.device_area
        want = 7 if event_idx else 0
        while struct.unpack("<H", ring.read(where, 2))[0] != want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert struct.unpack("<H", ring.read(where, 2))[0] == want
    finally:
        os.eventfd_write(stop, 1)
        thread.join(10)
        executor.close()
        os.close(stop)
        ring.close()
