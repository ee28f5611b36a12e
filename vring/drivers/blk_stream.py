"""fio-like streams of block requests at depth (randread, randwrite, seqread) on a BlkClient's queues.

With the Cython core each queue's loop runs in C without the GIL (``vring._cring.blk_stream``): requests are built
in a preallocated slot area of the shared memory, added, kicked, reaped and checked with no Python per request,
and two queues on two threads use two cores. The pure-Python twin runs the same loop in Python (the reference:
slow, same checks). Every status byte is checked; reads are checked against the per-sector pattern
(``blk_pattern``) when ``verify``; writes write it. A single failure fails the stream, naming the sector.
"""

from __future__ import annotations

import errno
import math
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import broken_error
from .._features import Feature
from .._twin import ENGINE
from ..devices.blk import HEADER, S_OK, STATUS_NAMES, T_IN, T_OUT
from ..notify import read_eventfd
from .blk_pattern import SECTOR, first_difference, pattern

if TYPE_CHECKING:
    from ..vhost_user.frontend import FrontQueue
    from .blk import BlkClient

WORKLOADS = ("randread", "randwrite", "seqread")
CHUNK = 1 << 16  # requests per call into the loop at most: sectors and latencies for that many at a time
CHUNK_SECONDS = 0.25  # and for this long at most: between calls a Ctrl-C is seen and the others stop
SLOT_META = 32  # per slot after the data area: the 16-byte header, then the status byte
PAGE = 4096  # data slots page-aligned, as a back-end with O_DIRECT wants them

# The loop's failure codes (the STREAM_* enum of vring/_cring/blk_client.pxi).
DONE, STATUS, DATA, TIMEOUT, FD, ADD = 0, 1, 2, 3, 4, 5


class StreamError(Exception):
    """A request of a stream failed: a non-OK status or data other than the pattern. One line, naming the sector."""

    def __init__(self, message: str, sector: int) -> None:
        super().__init__(message)
        self.sector = sector


@dataclass
class StreamResult:
    workload: str
    queues: int
    depth: int
    block: int
    requests: int
    seconds: float
    verified: bool  # reads were checked against the pattern
    latencies_ns: np.ndarray = field(repr=False)  # one per request, in no particular order across queues
    peak_in_flight: list[int] = field(default_factory=list)  # per queue

    @property
    def iops(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_us(self, p: float) -> float:
        return float(np.percentile(self.latencies_ns, p)) / 1e3 if len(self.latencies_ns) else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "queues": self.queues, "depth": self.depth, "block": self.block,
                "requests": self.requests, "seconds": self.seconds, "iops": self.iops,
                "mib_s": self.requests * self.block / self.seconds / 2**20 if self.seconds else 0.0,
                "lat_us_p50": self.percentile_us(50), "lat_us_p99": self.percentile_us(99),
                "lat_us_p999": self.percentile_us(99.9),
                "lat_us_max": float(self.latencies_ns.max()) / 1e3 if len(self.latencies_ns) else 0.0,
                "verified": self.verified, "peak_in_flight": self.peak_in_flight}


def stream(client: "BlkClient", workload: str, *, depth: int = 32, block: int = 4096, seconds: float | None = None,
           requests: int | None = None, first: int = 0, count: int | None = None, seed: int = 0,
           verify: bool = True) -> StreamResult:
    """Run ``workload`` on every queue of ``client`` with ``depth`` requests of ``block`` bytes in flight on each,
    for ``seconds`` or until ``requests`` (per queue) are done, within sectors ``first`` to ``first + count``
    (default: to the end of the disk). Raises StreamError on the first failed request, TimeoutError when nothing
    completes for the front-end's timeout."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)})")
    if (seconds is None) == (requests is None):
        raise ValueError("give seconds or requests, not both or neither")
    if block < SECTOR or block % SECTOR:
        raise ValueError(f"the block size must be a non-zero multiple of {SECTOR}, not {block}")
    if count is None:
        count = client.capacity - first
    blocks = count // (block // SECTOR)
    if first < 0 or blocks < 1 or first + count > client.capacity:
        raise ValueError(f"sectors {first} to {first + count} hold no {block}-byte block of the "
                         f"{client.capacity}-sector disk")
    per_request = 1 if client.features & Feature.INDIRECT_DESC else 3  # descriptors: indirect, or direct chains
    size = client.queues[0].driver.size
    if depth < 1 or depth * per_request > size:
        raise ValueError(f"depth {depth} does not fit a queue of {size} descriptors ({per_request} per request)")
    writing = workload == "randwrite"
    if writing and client.read_only:
        raise ValueError("the disk is read-only")
    stop_at = time.monotonic() + seconds if seconds is not None else 0.0
    stop = threading.Event()  # set: every queue stops after its current chunk
    runners = [_QueueRun(client, q, i, workload, depth, block, first, blocks, seed, verify and not writing,
                         requests, stop_at, stop) for i, q in enumerate(client.queues)]
    start = time.perf_counter()
    if len(runners) == 1:
        runners[0].run()
    else:
        threads = [threading.Thread(target=r.run, name=f"blk-stream-{r.index}") for r in runners]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:  # a Ctrl-C here: the threads finish their chunk, and nothing uses the queues after we return
            stop.set()
            for t in threads:
                t.join()
    elapsed = time.perf_counter() - start
    for r in runners:
        if r.error is not None:
            raise r.error
    latencies = np.concatenate([np.empty(0, np.int64)] + [lat for r in runners for lat in r.latencies])
    return StreamResult(workload, len(runners), depth, block, sum(r.done for r in runners), elapsed,
                        verify and not writing, latencies, [r.peak for r in runners])


class _QueueRun:
    """One queue's part of a stream (a thread's, with several queues)."""

    def __init__(self, client: "BlkClient", queue: "FrontQueue", index: int, workload: str, depth: int, block: int,
                 first: int, blocks: int, seed: int, verify: bool, requests: int | None, stop_at: float,
                 stop: threading.Event) -> None:
        self.client, self.queue, self.index, self.workload = client, queue, index, workload
        self.depth, self.block, self.first, self.blocks = depth, block, first, blocks
        self.seed, self.verify, self.requests, self.stop_at, self.stop = seed, verify, requests, stop_at, stop
        self.rng = np.random.default_rng(seed + index)
        self.position = index * blocks // len(client.queues)  # seqread: each queue reads its own stretch
        self.latencies: list[np.ndarray] = []
        self.done = 0
        self.peak = 0
        self.error: BaseException | None = None

    def _sectors(self, n: int) -> np.ndarray:
        spb = self.block // SECTOR
        if self.workload == "seqread":
            picked = (self.position + np.arange(n, dtype=np.uint64)) % np.uint64(self.blocks)
            self.position = (self.position + n) % self.blocks
        else:
            picked = self.rng.integers(0, self.blocks, n, dtype=np.uint64)
        return picked * np.uint64(spb) + np.uint64(self.first)

    def run(self) -> None:
        try:
            area = self.client.stream_area(self.queue.index, self.depth * (self.block + SLOT_META))
            while True:
                n = CHUNK if self.requests is None else min(CHUNK, self.requests - self.done)
                now = time.monotonic()
                if n <= 0 or self.stop.is_set() or (self.stop_at and now >= self.stop_at):
                    return
                chunk_end = min(self.stop_at, now + CHUNK_SECONDS) if self.stop_at else now + CHUNK_SECONDS
                sectors = self._sectors(n)
                latencies = np.zeros(n, np.int64)
                done = self._chunk(area, sectors, latencies, chunk_end)
                self.latencies.append(latencies[:done])
                self.done += done
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
            self.stop.set()  # one queue failed: the others stop too
            self.error = exc

    def _chunk(self, area: int, sectors: np.ndarray, latencies: np.ndarray, chunk_end: float) -> int:
        q = self.queue
        timeout = self.client.frontend.timeout
        loop = getattr(ENGINE, "blk_stream", None)
        run = loop if loop is not None else _python_stream
        failure, done, peak, req, sector, detail, got, want = run(
            q.driver, area, q.kick, q.call, sectors, latencies, self.workload == "randwrite", self.seed,
            self.block, self.depth, self.verify, timeout, chunk_end)
        self.peak = max(self.peak, peak)
        what = f"{self.workload} on queue {self.index}"
        if failure == STATUS:
            name = STATUS_NAMES.get(detail, str(detail))
            raise StreamError(f"{what}: the request at sector {sector} completed with VIRTIO_BLK_S_{name} "
                              f"(status {detail})", sector)
        if failure == DATA:
            raise StreamError(f"{what}: sector {sector} byte {detail} reads {got:#04x}, the pattern (seed "
                              f"{self.seed}) has {want:#04x}: the data is wrong", sector)
        if failure == TIMEOUT:
            raise TimeoutError(f"{what}: no completion in {timeout} s ({done} of {len(sectors)} done)")
        if failure == FD:
            raise OSError(detail, f"{what}: kick or call eventfd: {os.strerror(detail)}")
        if failure == ADD:
            raise RuntimeError(f"{what}: the driver queue refused the request at sector {sector} (code {detail})")
        return done


def _python_stream(driver: Any, area: int, kick: int, call: int, sectors: np.ndarray, latencies: np.ndarray,
                   writing: bool, seed: int, block: int, depth: int, verify: bool, timeout: float,
                   stop_at: float = 0.0) -> tuple[int, int, int, int, int, int, int, int]:
    """The loop of ``vring._cring.blk_stream`` in Python, for the pure-Python twin: same slots, same checks,
    same results."""
    if block <= 0 or block % SECTOR:
        raise ValueError(f"the block size must be a non-zero multiple of {SECTOR}, not {block}")
    if not 1 <= depth <= driver.size:
        raise ValueError(f"depth must be from 1 to the queue size {driver.size}, not {depth}")
    if not (latencies.dtype == np.int64 and latencies.flags.c_contiguous and latencies.flags.writeable
            and len(latencies) >= len(sectors)):
        raise ValueError("latencies must be a writable contiguous int64 array as long as sectors")
    if driver.num_free != driver.size:
        raise ValueError("the queue has requests in flight: blk_stream needs it to itself")
    if driver.broken:  # the driver may be either twin's: its public attributes only
        raise broken_error("driver", driver.error)
    mem = driver.mem
    needed = _descriptors_needed(driver, 3)
    meta = area + block * depth
    free = list(range(depth - 1, -1, -1))
    started: dict[int, tuple[int, int, int]] = {}  # slot -> (request, sector, start ns)
    added = done = peak = 0
    failure: tuple[int, int, int, int, int, int] | None = None  # code, request, sector, detail, got, want
    deadline = time.monotonic() + timeout  # moved on by every completion
    while True:
        while (failure is None and added < len(sectors) and free and driver.num_free >= needed
               and not (stop_at and time.monotonic() >= stop_at)):
            slot = free.pop()
            sector = int(sectors[added])
            mem.write(meta + SLOT_META * slot, HEADER.pack(T_OUT if writing else T_IN, 0, sector) + b"\xff")
            data = area + block * slot
            if writing:
                mem.write(data, pattern(seed, sector, block // SECTOR))
            out = [(meta + SLOT_META * slot, HEADER.size)] + ([(data, block)] if writing else [])
            in_ = ([] if writing else [(data, block)]) + [(meta + SLOT_META * slot + HEADER.size, 1)]
            driver.add(out, in_, token=slot)
            started[slot] = (added, sector, time.monotonic_ns())
            added += 1
        peak = max(peak, added - done)
        if driver.kick_needed():
            try:
                os.eventfd_write(kick, 1)
            except BlockingIOError:  # the counter is full: the device has a kick pending anyway
                pass
            except OSError as exc:  # as the C loop: the failure already met, else this one; nothing drained
                code, req, sector, detail, got, want = failure or (FD, 0, 0, exc.errno or errno.EIO, 0, 0)
                return code, done, peak, req, sector, detail, got, want
        reaped = driver.pop_used()
        for slot, _written in reaped:
            req, sector, t0 = started.pop(slot)
            latencies[req] = time.monotonic_ns() - t0
            status = mem.read(meta + SLOT_META * slot + HEADER.size, 1)[0]
            if failure is None and status != S_OK:
                failure = (STATUS, req, sector, status, 0, 0)
            elif failure is None and verify and not writing:
                data = mem.read(area + block * slot, block)
                wrong = first_difference(data, seed, sector)
                if wrong is not None:
                    at = (wrong[0] - sector) * SECTOR + wrong[1]
                    want = pattern(seed, wrong[0], 1)[wrong[1]]
                    failure = (DATA, req, wrong[0], wrong[1], data[at], want)
            free.append(slot)
            done += 1
        if reaped:
            deadline = time.monotonic() + timeout
            continue
        if added == done:
            code, req, sector, detail, got, want = failure or (DONE, 0, 0, 0, 0, 0)
            return code, done, peak, req, sector, detail, got, want
        if driver.enable_interrupts():  # re-armed, and something came meanwhile: no sleep
            continue
        waited = _wait_call(call, deadline)
        if waited is not None:  # as the C loop: this code replaces one met before (an FD's errno its detail too)
            code, error = waited
            _, req, sector, detail, got, want = failure or (DONE, 0, 0, 0, 0, 0)
            return code, done, peak, req, sector, error if code == FD else detail, got, want


def _descriptors_needed(driver: Any, nseg: int) -> int:
    """The free descriptors a chain of ``nseg`` buffers takes: 1 if it goes in an indirect table (as the
    engine's ``drv_needed``)."""
    indirect = (driver.features & Feature.INDIRECT_DESC and driver.indirect_area is not None
                and driver.indirect_threshold <= nseg <= driver.indirect_max)
    return 1 if indirect else nseg


def _wait_call(call: int, deadline: float) -> tuple[int, int] | None:
    """Sleep on the call eventfd until the device may have returned something (None), as ``stream_wait`` of the
    C loop: TIMEOUT past ``deadline``; FD with an errno for an fd that is closed (EBADF), broken (EIO) or fails
    to read, which poll() would otherwise report ready at once, again and again."""
    poller = select.poll()
    poller.register(call, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return TIMEOUT, 0
        try:
            ready = poller.poll(math.ceil(left * 1000))
        except OSError as exc:
            return FD, exc.errno or errno.EIO
        if not ready:
            continue
        revents = ready[0][1]
        if revents & (select.POLLERR | select.POLLNVAL | select.POLLHUP):
            return FD, errno.EBADF if revents & select.POLLNVAL else errno.EIO
        try:
            read_eventfd(call)
        except OSError as exc:
            return FD, exc.errno or errno.EIO
        return None
