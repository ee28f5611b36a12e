"""The hostile front-end's guest memory: one memfd shared as two regions with a hole of unmapped guest-physical
addresses between them, read and written directly (rings included) with no driver's checks in the way.

Guest-physical addresses start at 4 GiB, apart from the front-end's own user addresses, so that a back-end that
mixes the two up fails visibly. Stores to the shared mapping are plain ``mmap`` writes: the rings rely on the
host keeping stores in program order (x86), as the back-ends under test run on the same host.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

from ..vhost_user.protocol import MEM_REGION, MEM_TABLE_HEAD

REGION_BYTES = 1 << 20
HOLE_BYTES = 1 << 20
GPA_BASE = 0x1_0000_0000
RING_GPA = GPA_BASE  # the ring's areas, at the start of region 0
TABLES_GPA = GPA_BASE + 0x8000  # indirect tables
BUFFERS_GPA = GPA_BASE + 0x10000  # request headers, data and status bytes from here on


@dataclass(frozen=True)
class Region:
    gpa: int
    size: int
    uva: int
    mmap_offset: int

    def pack(self) -> bytes:
        return MEM_REGION.pack(self.gpa, self.size, self.uva, self.mmap_offset)


class Guest:
    """Two regions of ``REGION_BYTES`` from one memfd: region 0 at ``GPA_BASE``, region 1 after a hole of
    ``HOLE_BYTES``. Their user addresses are contiguous: only guest-physical addresses have the hole."""

    def __init__(self) -> None:
        self.memfd = os.memfd_create("vring-conform", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, 2 * REGION_BYTES)
        self.map = mmap.mmap(self.memfd, 2 * REGION_BYTES)
        anchor = ctypes.c_char.from_buffer(self.map)  # only for the address: dropped so the map can close
        self.uva = ctypes.addressof(anchor)
        del anchor
        self.regions = [Region(GPA_BASE, REGION_BYTES, self.uva, 0),
                        Region(GPA_BASE + REGION_BYTES + HOLE_BYTES, REGION_BYTES, self.uva + REGION_BYTES,
                               REGION_BYTES)]
        self._next = BUFFERS_GPA

    def close(self) -> None:
        self.map.close()
        os.close(self.memfd)

    def table(self, regions: list[Region] | None = None) -> bytes:
        """A SET_MEM_TABLE payload (this guest's regions unless others are given)."""
        regions = self.regions if regions is None else regions
        return MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)

    def _offset(self, gpa: int, length: int) -> int:
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.gpa + region.size:
                return region.mmap_offset + gpa - region.gpa
        raise ValueError(f"{gpa:#x}+{length} is not inside one region")

    def uva_of(self, gpa: int) -> int:
        return self.uva + self._offset(gpa, 1)

    def write(self, gpa: int, data: bytes) -> None:
        offset = self._offset(gpa, len(data))
        self.map[offset:offset + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        offset = self._offset(gpa, length)
        return self.map[offset:offset + length]

    def alloc(self, length: int, align: int = 16) -> int:
        """Fresh bytes of region 0 for a buffer: never handed out twice in one session."""
        gpa = (self._next + align - 1) & ~(align - 1)
        if gpa + length > GPA_BASE + REGION_BYTES:
            raise MemoryError("the hostile front-end ran out of buffer space")
        self._next = gpa + length
        return gpa

    @property
    def region0_end(self) -> int:
        return self.regions[0].gpa + self.regions[0].size

    @property
    def region1(self) -> Region:
        return self.regions[1]
