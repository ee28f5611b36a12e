"""Ring workers: the threads that serve a connection's started rings, so that the connection thread keeps only the
control path (vhost-user messages) and two queues can use two cores.

A worker serves a group of rings (``queues_per_thread`` of them, one by default). It waits with poll() on the
rings' kick eventfds and on its own stop eventfd, never on anything else of the peer's, and serves a kicked ring
until it is idle. A device may bring its own executor for the rings (``make_worker``, e.g. virtio-blk's C loop
with io_uring, which also waits for its I/O completions); otherwise the worker calls ``Vring.serve``, that is
``device.process`` and the device's per-chain ``handle``.

``quiesce`` is how the control path takes a ring back: the worker stops popping, waits for the requests it has
in flight to complete, pushes them, signals the driver and exits; the connection calls it before any message that
changes what the worker uses (memory, eventfds, ring state) and starts a new worker after it.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Protocol, Sequence

from ..device import VirtioDevice
from .vring import Vring

log = logging.getLogger("vring.vhost_user")


class Executor(Protocol):
    """A device's own loop over a group of rings: what its ``make_worker(rings, stop_fd)`` returns, with rings as
    (index, device queue, kick fd, call fd); None from ``make_worker`` means the generic worker serves them."""

    def run(self) -> int | None:
        """Serve until the stop eventfd is readable, then finish the requests in flight, push them, signal and
        return None; or return the position (in the rings given) of a ring found malformed, which the executor
        no longer serves (``failure`` says why) and the caller latches before calling ``run`` again."""

    def failure(self, position: int) -> Exception:
        """The error that stopped the ring at ``position``."""

    def close(self) -> None:
        """Release what the executor holds (after ``run`` returned None)."""


class Worker:
    """One thread serving ``rings`` (started, enabled, not broken) of ``device``, until ``quiesce``."""

    def __init__(self, rings: Sequence[Vring], device: VirtioDevice, name: str) -> None:
        self.rings = list(rings)
        self.name = name
        self.stopping = threading.Event()  # the generic loop's between-batches check
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # wakes the poll() of either loop
        self.executor: Executor | None = None
        indices = ",".join(str(r.index) for r in self.rings)
        make_worker = getattr(device, "make_worker", None)
        if make_worker is not None:
            try:
                self.executor = make_worker([(r.index, r.queue, r.kick, r.call) for r in self.rings], self.stop_fd)
            except OSError as exc:  # e.g. no io_uring or thread to be had now: the generic worker still serves
                log.error("%s: queue(s) %s served in Python: the device's executor cannot start: %s", name,
                          indices, exc)
            except BaseException:
                os.close(self.stop_fd)
                raise
        self.thread = threading.Thread(target=self._run, name=f"{name} queue {indices}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def quiesce(self) -> None:
        """Stop the worker and wait for it: when this returns, every request it popped has been pushed and
        signalled, and the thread is gone."""
        self.stopping.set()
        os.eventfd_write(self.stop_fd, 1)
        if self.thread.ident is not None:  # started (a thread that could not start has nothing to wait for)
            self.thread.join()
        try:
            if self.executor is not None:
                self.executor.close()
        finally:
            os.close(self.stop_fd)

    def _run(self) -> None:
        try:
            if self.executor is not None:
                self._run_executor(self.executor)
            else:
                self._run_generic()
        except Exception:  # a bug here must not take the process down; the rings just stop being served
            log.exception("%s: worker of queue(s) %s failed", self.name, ",".join(str(r.index) for r in self.rings))

    def _run_executor(self, executor: Executor) -> None:
        while (position := executor.run()) is not None:
            vring = self.rings[position]
            error = executor.failure(position)
            vring.device.queue_broken(vring.index, error)
            vring.fail(error)

    def _run_generic(self) -> None:
        """Serve every ring once (work queued before the worker started), then whatever each kick brings."""
        by_kick = {r.kick: r for r in self.rings}
        poller = select.poll()
        poller.register(self.stop_fd, select.POLLIN)
        for fd in by_kick:
            poller.register(fd, select.POLLIN)
        for vring in self.rings:
            vring.serve(self.stopping)
        while not self.stopping.is_set():
            for fd, _ in poller.poll():
                kicked = by_kick.get(fd)
                if kicked is not None and not self.stopping.is_set():
                    kicked.kicked(self.stopping)


def group_rings(rings: Sequence[Vring], per_thread: int) -> dict[int, list[Vring]]:
    """The rings by group of queue indices ``per_thread`` wide, keyed by index // per_thread: with 2, queues
    0-1 share a worker (group 0), 2-3 the next, and so on (a group has only the rings that run)."""
    groups: dict[int, list[Vring]] = {}
    for vring in rings:
        groups.setdefault(vring.index // per_thread, []).append(vring)
    return groups
