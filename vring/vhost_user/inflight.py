"""The inflight buffer of a vhost-user device (vhost-user.rst, "Inflight I/O tracking"): shared memory in which
the back-end records the chains it popped and has not completed, so that a back-end restarted after a crash
resubmits them instead of losing them.

The back-end creates it on GET_INFLIGHT_FD (a memfd, zeroed, sealed against shrinking, one region per queue); the
front-end keeps it across back-ends and hands it to each new one with SET_INFLIGHT_FD, which maps it once the
description is checked against the fd. A queue's region is laid out, kept and repaired by the engine
(``attach_inflight``); this module only makes, checks, maps and slices the buffer.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
from dataclasses import dataclass

from .. import inflight_region_size
from .._features import MAX_QUEUE_SIZE
from .memory_table import MAX_FILE_OFFSET
from .protocol import INFLIGHT, ProtocolError

REGION_HEADER = struct.Struct("<QHH")  # features, version, desc_num: the start of either layout's region header
ENTRY_BYTES = {False: 16, True: 32}  # DescStateSplit, DescStatePacked; the region header is one entry long too


@dataclass(frozen=True)
class InflightDescription:
    """The payload of GET_INFLIGHT_FD and SET_INFLIGHT_FD."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int

    def pack(self) -> bytes:
        return INFLIGHT.pack(self.mmap_size, self.mmap_offset, self.num_queues, self.queue_size)

    @classmethod
    def unpack(cls, payload: bytes, where: str, max_queues: int, *, mapping: bool) -> "InflightDescription":
        """The description in ``payload``, range-checked (a ProtocolError naming the field and the request
        ``where``). ``mapping``: the description names a buffer to map (SET_INFLIGHT_FD), so its size and offset
        count; GET_INFLIGHT_FD asks for one and only its queue count and size do."""
        if len(payload) != INFLIGHT.size:
            raise ProtocolError(f"{where}: payload of {len(payload)} bytes, expected {INFLIGHT.size}")
        size, offset, num_queues, queue_size = INFLIGHT.unpack(payload)
        if not 1 <= num_queues <= max_queues:
            raise ProtocolError(f"{where}: num_queues {num_queues} is not from 1 to the device's {max_queues}")
        if not 1 <= queue_size <= MAX_QUEUE_SIZE or queue_size & (queue_size - 1):
            raise ProtocolError(f"{where}: queue_size {queue_size} is not a power of two up to {MAX_QUEUE_SIZE}")
        if mapping:
            if size == 0:
                raise ProtocolError(f"{where}: mmap_size is 0")
            for name, value in (("mmap_size", size), ("mmap_offset", offset), ("mmap_offset + mmap_size",
                                                                                offset + size)):
                if value > MAX_FILE_OFFSET:
                    raise ProtocolError(f"{where}: {name} {value:#x} is past the largest file offset "
                                        f"{MAX_FILE_OFFSET:#x}")
            if offset % mmap.ALLOCATIONGRANULARITY:
                raise ProtocolError(f"{where}: mmap_offset {offset:#x} is not a multiple of the page size "
                                    f"{mmap.ALLOCATIONGRANULARITY:#x}")
        return cls(size, offset, num_queues, queue_size)


class InflightBuffer:
    """One inflight buffer mapped into this process, and the queue regions sliced from it."""

    def __init__(self, mapping: mmap.mmap, description: InflightDescription) -> None:
        self.map: mmap.mmap | None = mapping
        self.description = description

    @classmethod
    def create(cls, num_queues: int, queue_size: int, packed: bool) -> tuple["InflightBuffer", int]:
        """A new buffer for ``num_queues`` regions of ``queue_size`` entries, and the memfd it lives in (the
        caller sends it to the front-end and closes it; the mapping keeps the memory)."""
        size = num_queues * inflight_region_size(queue_size, packed)
        fd = os.memfd_create("vring-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)  # zeroed: version 0, a record each queue initialises when it attaches
            # The front-end cannot shrink it under our mapping (an access past the end would be SIGBUS).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(mapping, InflightDescription(size, 0, num_queues, queue_size)), fd

    @classmethod
    def open(cls, fd: int, description: InflightDescription, where: str) -> "InflightBuffer":
        """Map the buffer a front-end handed over in ``fd`` (the caller keeps and closes the fd). It must be a
        file holding the whole description, and sealed (or sealable) against shrinking."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ProtocolError(f"{where}: the fd is not a memfd or regular file (mode {info.st_mode:#o})")
        end = description.mmap_offset + description.mmap_size
        if end > info.st_size:
            raise ProtocolError(f"{where}: mmap_offset {description.mmap_offset:#x} + mmap_size "
                                f"{description.mmap_size:#x} is past the end of the {info.st_size:#x}-byte fd")
        _seal_against_shrinking(fd, where)
        try:
            mapping = mmap.mmap(fd, description.mmap_size, offset=description.mmap_offset)
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"{where}: the buffer cannot be mapped: {exc}") from None
        return cls(mapping, description)

    def check_fits(self, packed: bool, where: str) -> None:
        """ProtocolError unless every queue's region of ``packed`` layout fits in the buffer."""
        d = self.description
        needed = d.num_queues * inflight_region_size(d.queue_size, packed)
        if d.mmap_size < needed:
            raise ProtocolError(f"{where}: mmap_size {d.mmap_size:#x} is less than the {needed:#x} bytes of "
                                f"{d.num_queues} {'packed' if packed else 'split'} regions of {d.queue_size} "
                                "entries")

    def region(self, index: int, packed: bool, where: str) -> memoryview | None:
        """Queue ``index``'s region (None if the buffer has none for it); a ProtocolError naming ``where`` if the
        buffer is too small for regions of this layout. The view keeps the mapping alive."""
        d = self.description
        if self.map is None or index >= d.num_queues:
            return None
        size = inflight_region_size(d.queue_size, packed)
        self.check_fits(packed, f"{where}: queue {index}")
        return memoryview(self.map)[index * size:(index + 1) * size]

    def close(self) -> None:
        """Drop our mapping: unmapped now, or once the last queue that views a region lets it go."""
        mapping, self.map = self.map, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # a region is still viewed: the mapping goes with the last view


def _seal_against_shrinking(fd: int, where: str) -> None:
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as exc:
        raise ProtocolError(f"{where}: the fd cannot be sealed against shrinking ({exc.strerror}): the front-end "
                            "could truncate the buffer under the back-end's mapping") from None


def recorded_in_flight(region: bytes | memoryview, queue_size: int, packed: bool) -> int:
    """How many chains a queue's region records as in flight: its entries with the inflight flag set (0 for a
    region not initialised yet). A back-end killed between publishing a batch and clearing its flags leaves that
    batch counted here; the next back-end's recovery repairs it."""
    entry = ENTRY_BYTES[packed]
    if len(region) < inflight_region_size(queue_size, packed):
        raise ValueError(f"a region of {len(region)} bytes is too small for {queue_size} entries")
    _features, version, _desc_num = REGION_HEADER.unpack_from(region)
    if version == 0:
        return 0
    return sum(1 for i in range(queue_size) if region[entry * (i + 1)] == 1)
