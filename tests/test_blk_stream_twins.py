"""The blk stream loop's twins (the C core's ``blk_stream``, the reference ``_python_stream``) answer alike where
the fds or the queue are not as they should be: the same failure code and detail, the same peak, the same
refusal, and at once rather than spinning until the timeout."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest

import vring
from test_blk_client import bare_ring, twin_loop
from vring.drivers import blk_stream

__all__ = ["twin_loop"]  # the fixture, used by name

SECTORS = np.arange(8, dtype=np.uint64) * 8
EVENTFD_MAX = 0xFFFF_FFFF_FFFF_FFFE  # an eventfd counter that takes no more


def run(loop, driver, area, kick, call, depth: int = 4, timeout: float = 5.0,
        sectors: np.ndarray = SECTORS) -> tuple[tuple[int, ...], float]:
    """The loop's result on a ring nobody serves, and the seconds it took."""
    start = time.monotonic()
    result = loop(driver, area, kick, call, sectors, np.zeros(len(sectors), np.int64), False, 0, 4096, depth,
                  True, timeout)
    return tuple(result), time.monotonic() - start


def closed_fd() -> int:
    fd = os.eventfd(0)
    os.close(fd)
    return fd


def hung_up_pipe() -> int:
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


def directory() -> int:
    return os.open("/", os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("make_call,detail", [(closed_fd, errno.EBADF), (hung_up_pipe, errno.EIO),
                                              (directory, errno.EISDIR)])
def test_a_call_fd_that_cannot_be_waited_on_fails_at_once(twin_loop, make_call, detail):
    """poll() reports a closed fd (POLLNVAL), a hung-up one (POLLHUP) or an unreadable one (a directory) ready
    again and again: that is an FD failure naming why, not a spin until the timeout."""
    twin, loop = twin_loop
    _mem, _layout, driver, kick, _call, area = bare_ring(twin)
    call = make_call()
    try:
        result, seconds = run(loop, driver, area, kick, call)
    finally:
        if make_call is not closed_fd:
            os.close(call)
    assert result == (blk_stream.FD, 0, 4, 0, 0, detail, 0, 0)
    assert seconds < 1


def test_indirect_requests_fill_the_ring(twin_loop):
    """With indirect descriptors a request takes one ring slot: depth 16 on 16 slots puts 16 in flight."""
    twin, loop = twin_loop
    mem = twin.GuestMemory()
    mem.add_region(0x10000, bytearray(1 << 20))
    features = vring.Feature.VERSION_1 | vring.Feature.INDIRECT_DESC
    driver = vring.create_driver_queue(mem, vring.contiguous_layout(features, 16, 0x10000), features, twin=twin,
                                       indirect_area=0x60000)
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    result, _ = run(loop, driver, 0x80000, kick, call, depth=16, timeout=0.2,
                    sectors=np.arange(32, dtype=np.uint64) * 8)
    assert result[:3] == (blk_stream.TIMEOUT, 0, 16)


def test_a_saturated_kick_is_no_failure(twin_loop):
    """A kick eventfd whose counter is full (EAGAIN): the device has a kick pending anyway."""
    twin, loop = twin_loop
    _mem, _layout, driver, kick, call, area = bare_ring(twin)
    os.eventfd_write(kick, EVENTFD_MAX)
    result, _ = run(loop, driver, area, kick, call, timeout=0.2)
    assert result[:3] == (blk_stream.TIMEOUT, 0, 4)


def test_a_closed_kick_fd_is_an_fd_failure(twin_loop):
    twin, loop = twin_loop
    _mem, _layout, driver, _kick, call, area = bare_ring(twin)
    result, _ = run(loop, driver, area, closed_fd(), call)
    assert result == (blk_stream.FD, 0, 4, 0, 0, errno.EBADF, 0, 0)


def test_a_queue_with_requests_in_flight_is_refused(twin_loop):
    twin, loop = twin_loop
    _mem, _layout, driver, kick, call, area = bare_ring(twin)
    driver.add([], [(0x90000, 16)], token="someone else's")
    with pytest.raises(ValueError, match="^the queue has requests in flight: blk_stream needs it to itself$"):
        run(loop, driver, area, kick, call)


@pytest.mark.parametrize("block,depth,latencies,message", [
    (4000, 4, 8, "the block size must be a non-zero multiple of 512, not 4000"),
    (0, 4, 8, "the block size must be a non-zero multiple of 512, not 0"),
    (4096, 0, 8, "depth must be from 1 to the queue size 16, not 0"),
    (4096, 17, 8, "depth must be from 1 to the queue size 16, not 17"),
    (4096, 4, 7, "latencies must be a writable contiguous int64 array as long as sectors"),
])
def test_bad_arguments_are_refused_alike(twin_loop, block, depth, latencies, message):
    twin, loop = twin_loop
    _mem, _layout, driver, kick, call, area = bare_ring(twin)
    with pytest.raises(ValueError, match=f"^{message}$"):
        loop(driver, area, kick, call, SECTORS, np.zeros(latencies, np.int64), False, 0, block, depth, True, 5.0)
