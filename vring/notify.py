"""The two notification idioms of virtio, written once (spec 2.7.10 / 2.8.10 "Notification suppression").

Device side, :func:`serve_until_idle`: with notifications off, serve what is available; once the ring looks empty,
poll it briefly, then turn notifications back on and look once more, because the driver may have added a chain
between our last look and the re-arming. Only when that last look is empty may the caller sleep on the kick.

Driver side, :func:`wait_for_used`: the mirror image for completions on any of several queues: re-arm interrupts,
look at the used rings once more, and only then sleep on the call (and error) eventfds.

Both work with either twin and either layout: they use only the queues' public methods.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time
from typing import Any, Callable, Sequence

POLL_SECONDS = 50e-6  # how long a ring that ran dry is polled before the caller may sleep on its kick eventfd


def serve_until_idle(queue: Any, serve_batch: Callable[[], int], poll_seconds: float = POLL_SECONDS) -> int:
    """Call ``serve_batch`` (which pops, serves and pushes some chains of ``queue`` and returns how many) until
    the ring is empty with notifications re-armed; returns the chains served. The caller then sleeps on the kick.

    Polling for ``poll_seconds`` before re-arming means a driver that keeps the ring busy needs no kick (a system
    call on each side) and its next request waits for no wake-up.
    """
    served = 0
    while True:
        queue.disable_notifications()
        n = serve_batch()
        served += n
        if n:
            continue
        deadline = time.perf_counter() + poll_seconds
        while not queue.avail_pending() and time.perf_counter() < deadline:
            pass
        if queue.avail_pending() or queue.enable_notifications():
            continue  # work arrived while we were deciding to sleep
        return served


class RingError(Exception):
    """The other side signalled an error on a ring (its error eventfd), or nothing completed in time."""


def read_eventfd(fd: int) -> int:
    """Consume an eventfd's counter, never waiting: 0 if nothing was signalled.

    A peer's eventfd shares its file description with the peer (SCM_RIGHTS), O_NONBLOCK included, so the peer
    may clear the flag we set: the read asks RWF_NOWAIT itself (on a kernel without it for eventfds, it reads
    only what poll shows)."""
    value = bytearray(8)
    try:
        if os.preadv(fd, [value], -1, os.RWF_NOWAIT) == 8:
            return int.from_bytes(value, sys.byteorder)
        return 0
    except BlockingIOError:
        return 0
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
    if not _ready(fd, select.POLLIN):
        return 0
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def signal_eventfd(fd: int) -> None:
    """Add 1 to an eventfd unless its counter is full (the other side then has a notification pending anyway).
    Poll is asked first: a peer's eventfd may have been made blocking by the peer (see ``read_eventfd``)."""
    if not _ready(fd, select.POLLOUT):
        return
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass


def _ready(fd: int, event: int) -> bool:
    poller = select.poll()
    poller.register(fd, event)
    return any(revents & event for _, revents in poller.poll(0))


def wait_for_used(drivers: Sequence[Any], call_fds: Sequence[int], deadline: float,
                  err_fds: Sequence[int] = ()) -> None:
    """Return once any of ``drivers`` (driver queues, each interrupted through ``call_fds[i]``) may have a used
    buffer: its interrupts are re-armed and its used ring checked again before we sleep, so no wake-up is lost.

    ``deadline`` is a ``time.monotonic()`` value; past it, or when any of ``err_fds`` is signalled, RingError.
    The caller reaps the queues afterwards (nothing is reaped here).
    """
    if any(driver.enable_interrupts() for driver in drivers):  # True: something is already there
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise RingError("no completion in time")
    ready, _, _ = select.select([*call_fds, *err_fds], [], [], left)
    for fd in ready:
        if fd in err_fds:
            raise RingError("the other side signalled an error on a ring")
    for fd in ready:
        read_eventfd(fd)
