"""virtio-blk (spec 5.2 "Block Device"), file-backed, and its driver-side model.

A request is a chain: a 16-byte header {le32 type; le32 reserved; le64 sector} the device reads, data (read or
written by the device, by type), and a status byte the device writes last. Data moves between the image and guest
memory with ``os.preadv`` / ``os.pwritev`` straight into the chain's memoryviews: no Python-level copy.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import struct
from typing import Any

from .._chainio import scatter
from ..device import ConfigError, VirtioDevice

log = logging.getLogger("vring.blk")

DEVICE_ID = 2
SECTOR = 512

# Feature bits (5.2.3).
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_GEOMETRY = 1 << 4
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_TOPOLOGY = 1 << 10
F_CONFIG_WCE = 1 << 11
F_MQ = 1 << 12
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

FEATURE_NAMES = {F_SIZE_MAX: "SIZE_MAX", F_SEG_MAX: "SEG_MAX", F_GEOMETRY: "GEOMETRY", F_RO: "RO",
                 F_BLK_SIZE: "BLK_SIZE", F_FLUSH: "FLUSH", F_TOPOLOGY: "TOPOLOGY", F_CONFIG_WCE: "CONFIG_WCE",
                 F_MQ: "MQ", F_DISCARD: "DISCARD", F_WRITE_ZEROES: "WRITE_ZEROES"}

# Request types and status values (5.2.6).
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
STATUS_NAMES = {S_OK: "OK", S_IOERR: "IOERR", S_UNSUPP: "UNSUPP"}
ID_BYTES = 20

HEADER = struct.Struct("<IIQ")  # struct virtio_blk_req header: type, reserved, sector
DISCARD_SEG = struct.Struct("<QII")  # struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags
WZ_UNMAP = 1
# struct virtio_blk_config, the fields up to write_zeroes_may_unmap (60 bytes with the padding after it).
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
CONFIG_WRITEBACK_OFFSET = 32

SIZE_MAX = 1 << 20  # largest single data segment we advertise
SEG_MAX = 126  # data segments per request (queue size 128 minus header and status, as QEMU does)
MAX_DISCARD_SECTORS = 1 << 22
MAX_DISCARD_SEG = 32
ZERO_CHUNK = bytes(1 << 16)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _fallocate = None


class BlkDevice(VirtioDevice):
    """A virtio-blk device over a raw image file or a block device."""

    device_id = DEVICE_ID
    max_queue_size = 1024

    def __init__(self, path: str, *, read_only: bool = False, num_queues: int = 1, serial: str | None = None,
                 logical_block_size: int = SECTOR) -> None:
        super().__init__()
        if num_queues < 1 or num_queues > 64:
            raise ValueError("num_queues must be between 1 and 64")
        self.path = path
        self.read_only = read_only
        self.num_queues = num_queues
        self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        st = os.fstat(self.fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.size = os.lseek(self.fd, 0, os.SEEK_END) if self.is_block_device else st.st_size
        self.capacity = self.size // SECTOR  # in 512-byte sectors, whatever the logical block size
        self.serial = (serial if serial is not None else os.path.basename(path))[:ID_BYTES].encode()
        self.writeback = 1
        self.device_features = (F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE
                                | F_DISCARD | F_WRITE_ZEROES | (F_RO if read_only else 0)
                                | (F_MQ if num_queues > 1 else 0))
        self.config = bytearray(CONFIG.pack(
            self.capacity, SIZE_MAX, SEG_MAX,
            0, 0, 0,  # geometry (not offered)
            logical_block_size,
            0, 0, 1, 1,  # topology: physical_block_exp, alignment_offset, min_io_size, opt_io_size
            self.writeback, 0, num_queues,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # discard: max sectors, max segments, alignment
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # write zeroes: max sectors, max segments, may unmap
        ))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def config_write_hook(self, offset: int, data: bytes) -> None:
        # Only the writeback byte may change (CONFIG_WCE); anything else is refused.
        if offset == CONFIG_WRITEBACK_OFFSET and len(data) == 1:
            self.writeback = data[0] & 1
            self.config[CONFIG_WRITEBACK_OFFSET] = self.writeback
            return
        raise ConfigError(f"virtio-blk config is read-only at offset {offset} (+{len(data)})")

    # -- requests ------------------------------------------------------------------------------------------
    def handle(self, queue: int, chain: Any) -> int:
        """Serve one request; every error becomes a status byte, never an exception or a stopped device."""
        writable = chain.writable
        if chain.writable_len < 1:
            log.warning("queue %d: request %d has no status byte; completed without an answer", queue, chain.head)
            return 0
        status_view, data_in = _split_last_byte(writable)
        if chain.readable_len < HEADER.size:
            log.warning("queue %d: request %d header is %d bytes, not %d", queue, chain.head, chain.readable_len,
                        HEADER.size)
            status_view[0] = S_IOERR
            return 1
        readable = chain.readable
        header, data_out = _split_first(readable, HEADER.size)
        rtype, _reserved, sector = HEADER.unpack(header)
        status, written = self._serve(rtype, sector, data_out, data_in, chain.readable_len - HEADER.size,
                                      chain.writable_len - 1)
        status_view[0] = status
        return written + 1

    def _serve(self, rtype: int, sector: int, data_out: list[memoryview], data_in: list[memoryview],
               out_len: int, in_len: int) -> tuple[int, int]:
        """(status, bytes written into data_in)."""
        try:
            if rtype == T_IN:
                if not self._range_ok(sector, in_len):
                    return S_IOERR, 0
                return S_OK, self._preadv(data_in, sector * SECTOR, in_len)
            if rtype == T_OUT:
                if self.read_only or not self._range_ok(sector, out_len):
                    return S_IOERR, 0
                self._pwritev(data_out, sector * SECTOR, out_len)
                if not self.writeback:
                    os.fdatasync(self.fd)
                return S_OK, 0
            if rtype == T_FLUSH:
                if not self.read_only:
                    os.fdatasync(self.fd)
                return S_OK, 0
            if rtype == T_GET_ID:
                if in_len < 1:
                    return S_IOERR, 0
                ident = self.serial[:min(in_len, ID_BYTES)]
                ident = ident + bytes(min(in_len, ID_BYTES) - len(ident))  # NUL-padded, as the spec says
                return S_OK, scatter(data_in, ident)
            if rtype in (T_DISCARD, T_WRITE_ZEROES):
                if self.read_only:
                    return S_IOERR, 0
                return self._discard_or_zero(rtype, b"".join(bytes(v) for v in data_out)), 0
            return S_UNSUPP, 0
        except OSError as exc:
            log.warning("I/O error on %s: %s", self.path, exc)
            return S_IOERR, 0

    def _range_ok(self, sector: int, length: int) -> bool:
        if length % SECTOR:
            return False
        return sector * SECTOR + length <= self.size and sector <= self.capacity

    def _preadv(self, views: list[memoryview], offset: int, length: int) -> int:
        done = 0
        while done < length:
            n = os.preadv(self.fd, _skip(views, done), offset + done)
            if n == 0:
                raise OSError(errno.EIO, "unexpected end of image")
            done += n
        return done

    def _pwritev(self, views: list[memoryview], offset: int, length: int) -> None:
        done = 0
        while done < length:
            done += os.pwritev(self.fd, _skip(views, done), offset + done)

    def _discard_or_zero(self, rtype: int, payload: bytes) -> int:
        if not payload or len(payload) % DISCARD_SEG.size or len(payload) // DISCARD_SEG.size > MAX_DISCARD_SEG:
            return S_IOERR
        for sector, count, flags in DISCARD_SEG.iter_unpack(payload):
            if count > MAX_DISCARD_SECTORS or not self._range_ok(sector, count * SECTOR):
                return S_IOERR
            if rtype == T_DISCARD and flags:
                return S_UNSUPP  # the unmap flag is reserved for discard
            if rtype == T_WRITE_ZEROES and flags & ~WZ_UNMAP:
                return S_UNSUPP
        for sector, count, flags in DISCARD_SEG.iter_unpack(payload):
            if rtype == T_DISCARD:
                self._punch(sector * SECTOR, count * SECTOR)  # best effort: discarded data is undefined
            else:
                self._zero(sector * SECTOR, count * SECTOR)
        return S_OK

    def _punch(self, offset: int, length: int) -> bool:
        if self.is_block_device or _fallocate is None or length == 0:
            return False
        return _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0

    def _zero(self, offset: int, length: int) -> None:
        if self._punch(offset, length):  # a hole reads back as zeros
            return
        while length:
            n = os.pwrite(self.fd, ZERO_CHUNK[:min(length, len(ZERO_CHUNK))], offset)
            offset += n
            length -= n


def _split_last_byte(views: list[memoryview]) -> tuple[memoryview, list[memoryview]]:
    """(the last byte, every byte before it) of a list of views."""
    last = views[-1]
    before = views[:-1]
    if last.nbytes > 1:
        before = before + [last[:-1]]
    return last[-1:], before


def _split_first(views: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """(the first n bytes as bytes, the views of everything after them)."""
    head = b""
    rest: list[memoryview] = []
    for view in views:
        if len(head) < n:
            take = min(n - len(head), view.nbytes)
            head += bytes(view[:take])
            if take < view.nbytes:
                rest.append(view[take:])
        else:
            rest.append(view)
    return head, rest


def _skip(views: list[memoryview], n: int) -> list[memoryview]:
    """The views after the first n bytes (for resuming a short preadv/pwritev)."""
    out = []
    for view in views:
        if n >= view.nbytes:
            n -= view.nbytes
            continue
        out.append(view[n:] if n else view)
        n = 0
    return out



# ---------------------------------------------------------------------------------------------------------------
# Driver side: BlkClient, a virtio-blk driver model on a vhost-user front-end
# ---------------------------------------------------------------------------------------------------------------
class BlkError(Exception):
    """A request completed with a status other than OK."""

    def __init__(self, op: str, status: int) -> None:
        super().__init__(f"{op} failed with VIRTIO_BLK_S_{STATUS_NAMES.get(status, str(status))}")
        self.status = status


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


OP_NAMES = {T_IN: "read", T_OUT: "write", T_FLUSH: "flush", T_GET_ID: "get_id", T_DISCARD: "discard",
            T_WRITE_ZEROES: "write_zeroes"}


class _Pending:
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
    """virtio-blk requests through any vhost-user-blk back-end: synchronous calls, and ``run`` for batches that
    keep up to ``depth`` requests in flight on every queue."""

    FEATURES = (F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE | F_MQ | F_DISCARD
                | F_WRITE_ZEROES | F_RO)

    def __init__(self, frontend: Any, *, queues: int = 1, queue_size: int = 128, event_idx: bool = True,
                 indirect: bool = True, packed: bool = False) -> None:
        from .._features import Feature

        self.frontend = frontend
        wanted = (self.FEATURES | (Feature.EVENT_IDX if event_idx else 0) | (Feature.INDIRECT_DESC if indirect else 0)
                  | (Feature.RING_PACKED if packed else 0))
        self.features = frontend.negotiate(wanted)
        available = frontend.queue_num()
        if queues > available:
            raise ValueError(f"{queues} queues asked for, the back-end has {available}")
        self.config = BlkConfig(frontend.get_config(CONFIG.size))
        self.read_only = bool(self.features & F_RO)
        self.queues = frontend.setup_queues(queues, queue_size)
        self.mem = frontend.mem

    @property
    def capacity(self) -> int:
        return self.config.capacity

    # -- one request ---------------------------------------------------------------------------------------
    def _submit(self, q: Any, pending: _Pending, out_data: bytes = b"", in_len: int = 0) -> None:
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
        data = self._one(T_IN, sector, in_len=count * SECTOR)
        assert data is not None
        return data

    def write(self, sector: int, data: bytes) -> None:
        if len(data) % SECTOR:
            raise ValueError("data must be a multiple of 512 bytes")
        self._one(T_OUT, sector, out_data=data)

    def flush(self) -> None:
        self._one(T_FLUSH)

    def get_id(self) -> bytes:
        data = self._one(T_GET_ID, in_len=ID_BYTES)
        return (data or b"").rstrip(b"\0")

    def discard(self, sector: int, count: int) -> None:
        self._one(T_DISCARD, out_data=DISCARD_SEG.pack(sector, count, 0))

    def write_zeroes(self, sector: int, count: int, unmap: bool = False) -> None:
        self._one(T_WRITE_ZEROES, out_data=DISCARD_SEG.pack(sector, count, WZ_UNMAP if unmap else 0))

    # -- many requests -------------------------------------------------------------------------------------
    def run(self, ops: list[tuple[str, int, Any]], depth: int = 32, latencies: list[float] | None = None,
            keep_data: bool = True) -> list[Any]:
        """Execute ``ops`` — ("read", sector, count), ("write", sector, data), ("flush", 0, None) — spread over
        the queues with up to ``depth`` in flight on each. Returns the results in order (bytes for reads unless
        ``keep_data`` is false, None otherwise, or the BlkError of a failed request); ``latencies`` receives each
        request's submit-to-completion time in seconds."""
        import select as _select
        import time as _time

        started: dict[int, float] = {}
        results: list[Any] = [None] * len(ops)
        next_op = 0
        in_flight = {q.index: 0 for q in self.queues}
        done = 0
        deadline = _time.monotonic() + self.frontend.timeout
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
                        started[next_op] = _time.perf_counter()
                    in_flight[q.index] += 1
                    next_op += 1
                self.frontend.kick(q)
            progressed = False
            for q in self.queues:
                for pending, written in q.driver.pop_used():
                    if latencies is not None:
                        latencies.append(_time.perf_counter() - started.pop(pending.index))
                    try:
                        result = self._finish(pending, written, keep_data)
                        results[pending.index] = result
                    except BlkError as exc:
                        results[pending.index] = exc
                    in_flight[q.index] -= 1
                    done += 1
                    progressed = True
            if progressed:
                deadline = _time.monotonic() + self.frontend.timeout
                continue
            if any(q.driver.enable_interrupts() for q in self.queues):
                continue
            left = deadline - _time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no completion in {self.frontend.timeout} s ({done}/{len(ops)} done)")
            ready, _, _ = _select.select([q.call for q in self.queues], [], [], left)
            for fd in ready:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
        return results
