"""virtio-blk (spec 5.2 "Block Device"): the wire format, a request parsed from a chain, and a file-backed device.

A request is a chain: a 16-byte header {le32 type; le32 reserved; le64 sector} the device reads, data (read or
written by the device, by type), and a status byte the device writes last. ``Request.parse`` finds these in a chain
without any I/O; ``BlkDevice`` serves it, moving data between the image and guest memory with ``os.preadv`` /
``os.pwritev`` straight into the chain's memoryviews: no Python-level copy (with ``cache="none"`` through an
aligned bounce buffer, as O_DIRECT needs). Served by vhost-user workers on the C core, the device hands whole
rings to a C executor instead (``make_worker``, ``blk_executor``): the same rules, io_uring or a thread pool. The
driver side (``BlkClient``) has its own package and takes the wire format from here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Sequence

from .._chainio import gather, scatter
from ..device import Chain, ConfigError, VirtioDevice
from . import blk_executor
from .image import SECTOR, Image

log = logging.getLogger("vring.blk")

DEVICE_ID = 2
MAX_QUEUES = 64  # request queues a device offers at most

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
DEVICE_WRITES_DATA = (T_IN, T_GET_ID)  # data is the writable part before the status byte
DEVICE_READS_DATA = (T_OUT, T_DISCARD, T_WRITE_ZEROES)  # data is the readable part after the header
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


class RequestError(ValueError):
    """A chain that cannot be a virtio-blk request."""


class NoStatusByte(RequestError):
    """The chain has no device-writable byte: there is nowhere to put a status."""

    def __init__(self) -> None:
        super().__init__("the request has no device-writable status byte")


class ShortHeader(RequestError):
    """The device-readable part is shorter than the request header; the status byte can still answer."""

    def __init__(self, length: int, status: memoryview) -> None:
        super().__init__(f"the request header is {length} bytes, not {HEADER.size}")
        self.length = length
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """One virtio-blk request, found in a chain (as rust-vmm's virtio-blk ``Request::parse``).

    ``data`` holds the views the request moves data through, ``data_len`` bytes: the device-writable ones before
    the status byte for reads and get-id, the device-readable ones after the header for writes, discards and
    write-zeroes, none for flush and unknown types. ``status`` is the one-byte view the device answers in.
    """

    request_type: int
    sector: int
    data: list[memoryview]
    data_len: int
    status: memoryview

    @classmethod
    def parse(cls, chain: Chain) -> Request:
        """The request ``chain`` carries: its status byte is the chain's last writable byte (it may end a data
        buffer), its header the first 16 readable bytes (they may straddle buffers or start one). NoStatusByte or
        ShortHeader if there is no such byte or header; the type is not checked here (the device answers an
        unknown one UNSUPP)."""
        if chain.writable_len < 1:
            raise NoStatusByte()
        status, writable_data = _split_last_byte(chain.writable)
        if chain.readable_len < HEADER.size:
            raise ShortHeader(chain.readable_len, status)
        header, readable_data = _split_first(chain.readable, HEADER.size)
        request_type, _reserved, sector = HEADER.unpack(header)
        if request_type in DEVICE_WRITES_DATA:
            return cls(request_type, sector, writable_data, chain.writable_len - 1, status)
        if request_type in DEVICE_READS_DATA:
            return cls(request_type, sector, readable_data, chain.readable_len - HEADER.size, status)
        return cls(request_type, sector, [], 0, status)


class BlkDevice(VirtioDevice):
    """A virtio-blk device over a raw image file or a block device.

    ``image`` is a path (the device opens and locks it, and closes it in ``close``) or an ``Image`` a server
    opened once and shares between the devices of its connections (it stays open: its owner closes it). A
    read-only image makes a read-only device.

    ``aio`` is how the C executor does I/O (``blk_executor.AIO_MODES``; None: io_uring where it works, else a
    thread pool): ``self.aio`` is the mode chosen and ``self.aio_note`` why it is not the one asked for, if so.
    ``cache="none"`` reads and writes the image with O_DIRECT (through a second descriptor the device owns).
    """

    device_id = DEVICE_ID
    max_queue_size = 1024
    queues_per_thread = 1  # how many of its queues a vhost-user worker thread serves (vring.vhost_user.worker)

    def __init__(self, image: str | Image, *, read_only: bool = False, num_queues: int = 1,
                 serial: str | None = None, logical_block_size: int = SECTOR, aio: str | None = None,
                 cache: str = "writeback") -> None:
        super().__init__()
        if num_queues < 1 or num_queues > MAX_QUEUES:
            raise ValueError(f"num_queues must be between 1 and {MAX_QUEUES}")
        if cache not in blk_executor.CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(blk_executor.CACHE_MODES)}, not {cache!r}")
        self.aio, self.aio_note = blk_executor.choose_aio(aio)
        self.owns_image = not isinstance(image, Image)
        self.image = Image(image, read_only=read_only) if isinstance(image, str) else image
        self.path = self.image.path
        self.read_only = read_only or self.image.read_only
        self.num_queues = num_queues
        self.fd = self.image.fd
        self.is_block_device = self.image.is_block_device
        self.size = self.image.size
        self.capacity = self.image.capacity  # in 512-byte sectors, whatever the logical block size
        self.serial = (serial if serial is not None else os.path.basename(self.path))[:ID_BYTES].encode()
        self.logical_block_size = logical_block_size
        self.direct_fd = (blk_executor.open_direct(self.fd, self.path, self.read_only) if cache == "none"
                          else -1)
        self.writeback = 1
        self.device_features = (F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE
                                | F_DISCARD | F_WRITE_ZEROES | (F_RO if self.read_only else 0)
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
        """Close the image if this device opened it; a shared one is its owner's to close."""
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        if self.owns_image:
            self.image.close()
        self.fd = -1

    def make_worker(self, rings: Sequence[tuple[int, Any, int, int]], stop_fd: int) -> Any:
        """The C executor for a vhost-user worker's rings (vring.vhost_user.worker), or None for the generic
        worker: for queues of the pure-Python engine, and for a subclass that serves requests its own way (it
        overrides ``handle`` or ``_serve``, which the C loop would bypass)."""
        cls = type(self)
        if cls.handle is not BlkDevice.handle or cls._serve is not BlkDevice._serve:
            return None
        return blk_executor.make_executor(self, rings, stop_fd)

    def config_write_hook(self, offset: int, data: bytes) -> None:
        # Only the writeback byte may change (CONFIG_WCE); anything else is refused.
        if offset == CONFIG_WRITEBACK_OFFSET and len(data) == 1:
            self.writeback = data[0] & 1
            self.config[CONFIG_WRITEBACK_OFFSET] = self.writeback
            return
        raise ConfigError(f"virtio-blk config is read-only at offset {offset} (+{len(data)})")

    # -- requests ------------------------------------------------------------------------------------------
    def handle(self, queue: int, chain: Chain) -> int:
        """Serve one request; every error becomes a status byte, never an exception or a stopped device."""
        try:
            request = Request.parse(chain)
        except NoStatusByte:
            self.tell_no_status(queue, chain.head)
            return 0
        except ShortHeader as exc:
            self.tell_short_header(queue, chain.head, exc.length)
            exc.status[0] = S_IOERR
            return 1
        status, written = self._serve(request)
        request.status[0] = status
        return written + 1

    def _serve(self, request: Request) -> tuple[int, int]:
        """(status, bytes written into the request's data)."""
        rtype, sector, data, length = request.request_type, request.sector, request.data, request.data_len
        try:
            if rtype == T_IN:
                if not self._range_ok(sector, length):
                    return S_IOERR, 0
                return S_OK, self._preadv(data, sector * SECTOR, length)
            if rtype == T_OUT:
                if self.read_only or not self._range_ok(sector, length):
                    return S_IOERR, 0
                self._pwritev(data, sector * SECTOR, length)
                if not self.writeback:
                    os.fdatasync(self.fd)
                return S_OK, 0
            if rtype == T_FLUSH:
                if not self.read_only:
                    os.fdatasync(self.fd)
                return S_OK, 0
            if rtype == T_GET_ID:
                if length < 1:
                    return S_IOERR, 0
                ident = self.serial[:min(length, ID_BYTES)]
                ident = ident + bytes(min(length, ID_BYTES) - len(ident))  # NUL-padded, as the spec says
                return S_OK, scatter(data, ident)
            if rtype in (T_DISCARD, T_WRITE_ZEROES):
                if self.read_only:
                    return S_IOERR, 0
                return self._discard_or_zero(rtype, b"".join(bytes(v) for v in data)), 0
            return S_UNSUPP, 0
        except OSError as exc:
            self.tell_io_error(exc)
            return S_IOERR, 0

    # -- what an answer does not tell the driver: one log line each, whoever served the request (the C executor
    # calls these too, through blk_executor) --------------------------------------------------------------
    def tell_no_status(self, queue: int, head: int) -> None:
        log.warning("queue %d: request %d has no status byte; completed without an answer", queue, head)

    def tell_short_header(self, queue: int, head: int, length: int) -> None:
        log.warning("queue %d: request %d header is %d bytes, not %d", queue, head, length, HEADER.size)

    def tell_io_error(self, exc: OSError) -> None:
        log.warning("I/O error on %s: %s", self.path, exc)

    def _range_ok(self, sector: int, length: int) -> bool:
        if length % SECTOR:
            return False
        return sector * SECTOR + length <= self.size and sector <= self.capacity

    def _preadv(self, views: list[memoryview], offset: int, length: int) -> int:
        if self.direct_fd >= 0 and length:
            bounce = memoryview(_aligned(length))[:length]  # freed with its last view, on return
            _read_full(self.direct_fd, [bounce], offset, length)
            return scatter(views, bounce)
        return _read_full(self.fd, views, offset, length)

    def _pwritev(self, views: list[memoryview], offset: int, length: int) -> None:
        if self.direct_fd >= 0 and length:
            bounce = memoryview(_aligned(length))[:length]
            bounce[:] = gather(views)
            _write_full(self.direct_fd, [bounce], offset, length)
            return
        _write_full(self.fd, views, offset, length)

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
            if n == 0:  # no progress: an error, never a loop
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            offset += n
            length -= n


def _aligned(length: int) -> mmap.mmap:
    """A page-aligned buffer of at least ``length`` bytes (what O_DIRECT needs whatever the guest's buffers)."""
    return mmap.mmap(-1, -(-length // mmap.PAGESIZE) * mmap.PAGESIZE)


def _read_full(fd: int, views: list[memoryview], offset: int, length: int) -> int:
    done = 0
    while done < length:
        n = os.preadv(fd, _skip(views, done), offset + done)
        if n == 0:
            raise OSError(errno.EIO, "unexpected end of image")
        done += n
    return done


def _write_full(fd: int, views: list[memoryview], offset: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.pwritev(fd, _skip(views, done), offset + done)
        if n == 0:  # no progress: an error, never a loop
            raise OSError(errno.EIO, "unexpected end of image")
        done += n


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
