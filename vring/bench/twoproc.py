"""Two-process benchmark: the driver here, the device in a forked process, one memfd mapping between them.

The device either sleeps on an eventfd when the ring is empty (and the driver on another when nothing came back),
with EVENT_IDX deciding who must write one, or both sides busy-poll. Requests have the virtio-blk read shape
(16-byte header, 4 KiB data, status byte); with ``copy`` the device copies 4 KiB into each request's data buffer.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .._factory import contiguous_layout, create_device_queue, create_driver_queue
from .._features import Feature
from ..notify import RingError, serve_until_idle, wait_for_used
from .cases import twin

SIZE = 256
MEM_BYTES = 4 << 20
TABLES = 0x10000
HDRS = 0x40000  # 16 bytes per slot
STATUS = 0x48000  # 1 byte per slot
DATA = 0x100000  # 4 KiB per slot
STOP = MEM_BYTES - 64  # a byte the driver sets to stop the device
FEATURES = Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX


@dataclass
class TwoProcessResult:
    mode: str
    copy: bool
    requests: int
    seconds: float
    requests_per_s: float
    ns_per_request: float
    impl: str = "cython"


def _wait(fd: int, timeout_ms: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(timeout_ms):
        os.eventfd_read(fd)
        return True
    return False


def _device(impl, fd: int, mode: str, copy: bool, kick: int, call: int) -> None:
    buf = mmap.mmap(fd, MEM_BYTES)
    ram = memoryview(buf)
    mem = impl.GuestMemory()
    mem.add_region(0, buf)
    dev = create_device_queue(mem, contiguous_layout(FEATURES, SIZE, 0), FEATURES, twin=impl)
    batch = impl.Batch(SIZE, 3 * SIZE)
    batch.lens[:] = 4097
    image = bytes(range(256)) * 16
    uses_eventfds = mode == "eventfd"

    def serve_batch() -> int:
        n = dev.pop_batch(batch)
        if n == 0:
            return 0
        if copy:
            starts = batch.seg_start[:n].tolist()
            addrs = batch.seg_addr[:batch.seg_start[n]].tolist()  # the segments popped, not the whole array
            for s in starts:
                data = addrs[s + 1]  # header, data, status: the data buffer is the second segment
                ram[data:data + 4096] = image
        dev.push_batch(batch)
        if uses_eventfds and dev.notify_needed():
            os.eventfd_write(call, 1)
        return n

    if mode == "poll":
        dev.disable_notifications()
        while not buf[STOP]:
            serve_batch()
        return
    while not buf[STOP]:
        # No polling window: this mode measures sleeping on the kick as soon as the ring is empty.
        serve_until_idle(dev, serve_batch, poll_seconds=0)
        _wait(kick, 200)


def run_one(mode: str, copy: bool, seconds: float, impl_name: str = "cython") -> TwoProcessResult:
    impl = twin(impl_name)
    fd = os.memfd_create("vring-bench")
    os.ftruncate(fd, MEM_BYTES)
    kick, call = os.eventfd(0), os.eventfd(0)
    pid = os.fork()
    if pid == 0:  # the device
        code = 0
        try:
            _device(impl, fd, mode, copy, kick, call)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    buf = mmap.mmap(fd, MEM_BYTES)
    try:
        mem = impl.GuestMemory()
        mem.add_region(0, buf)
        drv = create_driver_queue(mem, contiguous_layout(FEATURES, SIZE, 0), FEATURES, twin=impl,
                                  indirect_area=TABLES, indirect_max=4)
        requests = impl.Batch(SIZE, 3 * SIZE)
        for k in range(SIZE):  # every slot its own buffers
            requests.seg_addr[3 * k:3 * k + 3] = (HDRS + 16 * k, DATA + 4096 * k, STATUS + k)
            requests.seg_len[3 * k:3 * k + 3] = (16, 4096, 1)
            requests.seg_writable[3 * k:3 * k + 3] = (0, 1, 1)
        requests.nsegs[:] = 3
        reaped = impl.Batch(SIZE)
        if mode == "poll":
            drv.disable_interrupts()
        done = 0
        deadline = None
        t0 = 0.0
        while True:
            free = drv.num_free
            if free:
                drv.add_batch(requests, free)
            if drv.kick_needed() and mode == "eventfd":
                os.eventfd_write(kick, 1)
            n = drv.reap_batch(reaped)
            if deadline is None:
                if n:  # the device is up: start the clock
                    t0 = time.perf_counter()
                    deadline = t0 + seconds
                    done = 0
                    continue
            else:
                done += n
                if time.perf_counter() >= deadline:
                    break
            if n == 0 and mode == "eventfd":
                try:
                    wait_for_used([drv], [call], time.monotonic() + 5)
                except RingError as exc:
                    raise RuntimeError("the device process went quiet") from exc
                drv.disable_interrupts()
        elapsed = time.perf_counter() - t0
    finally:
        buf[STOP] = 1
        os.eventfd_write(kick, 1)
        _, status = os.waitpid(pid, 0)
        for f in (fd, kick, call):
            os.close(f)
    if status:
        raise RuntimeError(f"the device process failed (status {status})")
    return TwoProcessResult(mode, copy, done, elapsed, done / elapsed, elapsed * 1e9 / max(done, 1), impl_name)


def run_all(seconds: float, progress: Callable[[str], None],
            out: list[TwoProcessResult] | None = None) -> list[TwoProcessResult]:
    """Every case, each result appended to ``out`` (a new list if None) as it finishes, so that a caller whose
    run is interrupted keeps the cases that finished."""
    out = [] if out is None else out
    cases = [(m, c) for m in ("poll", "eventfd") for c in (False, True)]
    for i, (mode, copy) in enumerate(cases, 1):
        progress(f"[two-process {i}/{len(cases)}] {mode}, {'4 KiB copy' if copy else 'no copy'}")
        out.append(run_one(mode, copy, seconds))
    return out


def format_table(results: Sequence[TwoProcessResult]) -> str:
    lines = ["two processes over one memfd, blk read shape, batches of up to 256 (Cython core):",
             f"{'notification':<14}{'data':<14}{'requests/s':>14}{'ns/request':>12}", "-" * 54]
    for r in results:
        lines.append(f"{r.mode:<14}{'4 KiB copy' if r.copy else 'no copy':<14}{r.requests_per_s:>14,.0f}"
                     f"{r.ns_per_request:>12.1f}")
    return "\n".join(lines)
