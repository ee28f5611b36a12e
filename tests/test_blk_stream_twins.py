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
