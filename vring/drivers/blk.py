"""virtio-blk (spec 5.2 "Block Device"): a driver-side model on a vhost-user front-end.

Each request is a chain the driver builds in shared memory: the 16-byte header, the data, and a status byte primed
with a value the device must overwrite. The wire format (request types, status values, structs, feature bits) is
the device's, in ``vring.devices.blk``.
"""

from __future__ import annotations

import time
from typing import Any

from .._features import Feature
from ..devices.blk import (
    CONFIG, DISCARD_SEG, F_BLK_SIZE, F_CONFIG_WCE, F_DISCARD, F_FLUSH, F_MQ, F_RO, F_SEG_MAX, F_SIZE_MAX, F_TOPOLOGY,
    F_WRITE_ZEROES, HEADER, ID_BYTES, S_OK, SECTOR, STATUS_NAMES, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT,
    T_WRITE_ZEROES, WZ_UNMAP,
)
from ..notify import RingError, wait_for_used
from ..vhost_user.frontend import PAGE, Frontend, FrontQueue
from .blk_stream import StreamResult, stream

OP_NAMES = {T_IN: "read", T_OUT: "write", T_FLUSH: "flush", T_GET_ID: "get_id", T_DISCARD: "discard",
            T_WRITE_ZEROES: "write_zeroes"}


class BlkError(Exception):
    """A request completed with a status other than OK."""

    def __init__(self, op: str, status: int) -> None:
        super().__init__(f"{op} failed with VIRTIO_BLK_S_{STATUS_NAMES.get(status, str(status))}")
        self.status = status


class NotABlockDevice(ValueError):
    """The back-end serves another kind of device: it offers no virtio-blk feature and no capacity."""


class BlkConfig:
    """struct virtio_blk_config, decoded."""

    def __init__(self, raw: bytes) -> None:
        (self.capacity, self.size_max, self.seg_max, self.cylinders, self.heads, self.sectors, self.blk_size,
         self.physical_block_exp, self.alignment_offset, self.min_io_size, self.opt_io_size, self.writeback,
         _unused, self.num_queues, self.max_discard_sectors, self.max_discard_seg, self.discard_sector_alignment,
         self.max_write_zeroes_sectors, self.max_write_zeroes_seg, self.write_zeroes_may_unmap) = CONFIG.unpack(
            raw[:CONFIG.size])

    def describe(self) -> list[tuple[str, str]]:
        return [("capacity", f"{self.capacity} sectors ({self.capacity * SECTOR / 2**20:.1f} MiB)"),
                ("size_max", str(self.size_max)), ("seg_max", str(self.seg_max)), ("blk_size", str(self.blk_size)),
                ("num_queues", str(self.num_queues)), ("writeback", str(self.writeback)),
                ("max_discard_sectors", str(self.max_discard_sectors)),
                ("max_discard_seg", str(self.max_discard_seg)),
                ("max_write_zeroes_sectors", str(self.max_write_zeroes_sectors)),
                ("max_write_zeroes_seg", str(self.max_write_zeroes_seg)),
                ("write_zeroes_may_unmap", str(self.write_zeroes_may_unmap))]


class _Pending:
    """One request in flight: what it is, where its buffers are, and which result slot it fills."""

    __slots__ = ("rtype", "sector", "buffers", "data", "in_len", "status", "index", "queue")

    def __init__(self, rtype: int, sector: int, index: int) -> None:
        self.rtype = rtype
        self.sector = sector
        self.index = index
        self.buffers: list[int] = []
        self.data = 0
        self.in_len = 0
        self.status = 0
        self.queue = 0


class BlkClient:
    """virtio-blk requests through any vhost-user-blk back-end: synchronous calls, ``run`` for batches of any
    requests that keep up to ``depth`` in flight on every queue, and ``stream`` for fio-like workloads that run in
    the C core (``blk_stream``)."""

    FEATURES = (F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE | F_MQ | F_DISCARD
                | F_WRITE_ZEROES | F_RO)

    def __init__(self, frontend: Frontend, *, queues: int = 1, queue_size: int = 128, event_idx: bool = True,
                 indirect: bool = True, packed: bool = False) -> None:
        self.frontend = frontend
        wanted = (self.FEATURES | (Feature.EVENT_IDX if event_idx else 0) | (Feature.INDIRECT_DESC if indirect else 0)
                  | (Feature.RING_PACKED if packed else 0))
        self.features = frontend.negotiate(wanted)
        available = frontend.queue_num()
        if queues > available:
            raise ValueError(f"{queues} queues asked for, the back-end has {available}")
        self.config = BlkConfig(frontend.get_config(CONFIG.size))
        if not self.features & self.FEATURES and self.config.capacity == 0:
            # vhost-user has no message that names the device type: a back-end with none of the virtio-blk
            # features and an all-zero capacity (an rng, say) is not a disk to read or write.
            raise NotABlockDevice("not a block device: the back-end offers no virtio-blk feature and a "
                                  "capacity of 0")
        self.read_only = bool(self.features & F_RO)
        self.queues = frontend.setup_queues(queues, queue_size)
        self.mem = frontend.mem
        self._stream_areas: dict[int, tuple[int, int]] = {}  # queue index -> (address, bytes) of its slots

    def stream_area(self, queue: int, size: int) -> int:
        """Guest memory for the request slots of ``stream`` on ``queue``: kept for the next stream, grown when a
        larger one is needed."""
        addr, have = self._stream_areas.get(queue, (0, 0))
        if have < size:
            if have:
                self.frontend.allocator.release(addr)
            addr = self.frontend.allocator.alloc(size, PAGE)
            self._stream_areas[queue] = (addr, size)
        return addr

    def stream(self, workload: str, **options: Any) -> StreamResult:
        """A fio-like stream of requests at depth on every queue, in C with the Cython core: see
        ``blk_stream.stream`` for the options. Raises StreamError on the first failed request."""
        return stream(self, workload, **options)

    @property
    def capacity(self) -> int:
        return self.config.capacity

    # -- one request ---------------------------------------------------------------------------------------
    def _submit(self, q: FrontQueue, pending: _Pending, out_data: bytes = b"", in_len: int = 0) -> None:
        alloc = self.frontend.allocator.alloc
        header = alloc(HEADER.size)
        status = alloc(1)
        pending.buffers = [header, status]
        self.mem.write(header, HEADER.pack(pending.rtype, 0, pending.sector))
        self.mem.write(status, b"\xff")  # a status the device must overwrite
        out = [(header, HEADER.size)]
        in_: list[tuple[int, int]] = []
        if out_data:
            data = alloc(len(out_data))
            pending.buffers.append(data)
            self.mem.write(data, out_data)
            out.append((data, len(out_data)))
        if in_len:
            pending.data = alloc(in_len)
            pending.buffers.append(pending.data)
            in_.append((pending.data, in_len))
        pending.in_len = in_len
        pending.status = status
        pending.queue = q.index
        q.driver.add(out, in_ + [(status, 1)], token=pending)

    def _finish(self, pending: _Pending, written: int, keep_data: bool = True) -> bytes | None:
        status = self.mem.read(pending.status, 1)[0]
        data = (self.mem.read(pending.data, pending.in_len) if keep_data and pending.in_len and status == S_OK
                else None)
        for addr in pending.buffers:
            self.frontend.allocator.release(addr)
        if status != S_OK:
            raise BlkError(OP_NAMES.get(pending.rtype, str(pending.rtype)), status)
        if pending.rtype == T_GET_ID and data is not None:
            return data[:max(0, written - 1)]
        return data

    def _one(self, rtype: int, sector: int = 0, out_data: bytes = b"", in_len: int = 0) -> bytes | None:
        q = self.queues[0]
        pending = _Pending(rtype, sector, 0)
        self._submit(q, pending, out_data, in_len)
        self.frontend.kick(q)
        while True:
            for token, written in self.frontend.wait(q):
                if token is pending:
                    return self._finish(pending, written)
                raise RuntimeError("a completion nobody waits for")  # only one request is in flight here

    def read(self, sector: int, count: int) -> bytes:
        """``count`` 512-byte sectors from ``sector``."""
        _check_range(sector, count)
        data = self._one(T_IN, sector, in_len=count * SECTOR)
        assert data is not None
        return data

    def write(self, sector: int, data: bytes) -> None:
        if len(data) % SECTOR or not data:
            raise ValueError("data must be a non-zero multiple of 512 bytes")
        _check_range(sector, len(data) // SECTOR)
        self._one(T_OUT, sector, out_data=data)

    def flush(self) -> None:
        self._one(T_FLUSH)

    def get_id(self) -> bytes:
        data = self._one(T_GET_ID, in_len=ID_BYTES)
        return (data or b"").rstrip(b"\0")

    def discard(self, sector: int, count: int) -> None:
        _check_range(sector, count)
        self._one(T_DISCARD, out_data=DISCARD_SEG.pack(sector, count, 0))

    def write_zeroes(self, sector: int, count: int, unmap: bool = False) -> None:
        _check_range(sector, count)
        self._one(T_WRITE_ZEROES, out_data=DISCARD_SEG.pack(sector, count, WZ_UNMAP if unmap else 0))

    # -- many requests -------------------------------------------------------------------------------------
    def run(self, ops: list[tuple[str, int, Any]], depth: int = 32, latencies: list[float] | None = None,
            keep_data: bool = True) -> list[Any]:
        """Execute ``ops`` — ("read", sector, count), ("write", sector, data), ("flush", 0, None) — spread over
        the queues with up to ``depth`` in flight on each. Returns the results in order (bytes for reads unless
        ``keep_data`` is false, None otherwise, or the BlkError of a failed request); ``latencies`` receives each
        request's submit-to-completion time in seconds. TimeoutError if no request completes for the front-end's
        timeout."""
        if depth < 1:
            raise ValueError(f"depth must be 1 or more, not {depth}")
        started: dict[int, float] = {}
        results: list[Any] = [None] * len(ops)
        next_op = 0
        in_flight = {q.index: 0 for q in self.queues}
        done = 0
        drivers = [q.driver for q in self.queues]
        call_fds = [q.call for q in self.queues]
        deadline = time.monotonic() + self.frontend.timeout
        while done < len(ops):
            for q in self.queues:
                while next_op < len(ops) and in_flight[q.index] < depth and q.driver.num_free >= 3:
                    kind, sector, arg = ops[next_op]
                    pending = _Pending({"read": T_IN, "write": T_OUT, "flush": T_FLUSH}[kind], sector, next_op)
                    if kind == "read":
                        self._submit(q, pending, in_len=arg * SECTOR)
                    elif kind == "write":
                        self._submit(q, pending, out_data=arg)
                    else:
                        self._submit(q, pending)
                    if latencies is not None:
                        started[next_op] = time.perf_counter()
                    in_flight[q.index] += 1
                    next_op += 1
                self.frontend.kick(q)
            progressed = False
            for q in self.queues:
                for pending, written in q.driver.pop_used():
                    if latencies is not None:
                        latencies.append(time.perf_counter() - started.pop(pending.index))
                    try:
                        result = self._finish(pending, written, keep_data)
                        results[pending.index] = result
                    except BlkError as exc:
                        results[pending.index] = exc
                    in_flight[q.index] -= 1
                    done += 1
                    progressed = True
            if progressed:
                deadline = time.monotonic() + self.frontend.timeout
                continue
            try:
                wait_for_used(drivers, call_fds, deadline)
            except RingError:  # with no error eventfds given, only the deadline raises it
                raise TimeoutError(f"no completion in {self.frontend.timeout} s ({done}/{len(ops)} done)") from None
        return results


def _check_range(sector: int, count: int) -> None:
    """ValueError for a range no request can carry (the device judges one past the end of the disk)."""
    if sector < 0 or sector >= 1 << 64:
        raise ValueError(f"sector {sector} is out of range")
    if count < 1:
        raise ValueError(f"a request needs 1 sector or more, not {count}")
