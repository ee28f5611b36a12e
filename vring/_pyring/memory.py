"""Guest memory: guest-physical address ranges mapped to host buffers (pure-Python twin)."""

from __future__ import annotations

from typing import Any, NamedTuple

from .._buffers import as_byte_view, map_fd
from .._errors import AddressError, caller_error

_U64 = (1 << 64) - 1


class Region(NamedTuple):
    gpa: int
    size: int
    view: memoryview  # writable, C-contiguous, format "B"
    owner: Any  # what keeps the memory alive (the caller's buffer, or the mmap we made)


class GuestMemory:
    """Guest-physical memory made of regions, each a host buffer; every translation is bounds-checked.

    A range that crosses from one region into another adjacent in guest-physical address is legal and comes back
    as one view per piece (``views``); ``view`` wants a range inside one region.

    Regions may be added and removed while a queue's call runs in another thread: the region list is immutable
    once published and a change replaces it whole, so every lookup sees the regions before or after a change,
    and a removed region's memory lives on while a view of it (a chain's, a queue's ring) is held. (The Cython
    twin's batches work on the regions as they were when the batch started.)
    """

    def __init__(self) -> None:
        self._regions: list[Region] = []  # sorted by gpa, never overlapping
        self.generation = 0  # bumped on every change, so queues know to translate their ring addresses again

    # -- regions -------------------------------------------------------------------------------------------
    def add_region(self, gpa: int, buffer: Any) -> None:
        """Make ``buffer`` (bytearray, mmap, numpy array, ...) the guest memory at ``gpa``."""
        view = as_byte_view(buffer)
        self._insert(gpa, view, buffer)

    def add_region_fd(self, gpa: int, size: int, fd: int, offset: int = 0) -> None:
        """Map ``size`` bytes of ``fd`` from ``offset`` (shared, read-write) as the guest memory at ``gpa``."""
        if size <= 0:
            raise caller_error("region-size", size=size)
        mapping, view = map_fd(fd, size, offset)
        try:
            self._insert(gpa, view, mapping)
        except BaseException:
            view.release()
            mapping.close()
            raise

    def remove_region(self, gpa: int) -> None:
        """Forget the region that starts at ``gpa`` (views already handed out keep its memory alive)."""
        for i, region in enumerate(self._regions):
            if region.gpa == gpa:
                self._regions = self._regions[:i] + self._regions[i + 1 :]
                self.generation += 1
                return
        raise caller_error("no-region", gpa=gpa)

    def _insert(self, gpa: int, view: memoryview, owner: Any) -> None:
        size = view.nbytes
        if not isinstance(gpa, int) or gpa < 0 or size == 0 or gpa + size - 1 > _U64:
            raise caller_error("region-range", gpa=gpa, size=size)
        for region in self._regions:
            if gpa < region.gpa + region.size and region.gpa < gpa + size:
                raise caller_error("region-overlap", gpa=gpa, size=size, other=region.gpa, other_size=region.size)
        self._regions = sorted([*self._regions, Region(gpa, size, view, owner)])
        self.generation += 1

    @property
    def regions(self) -> list[tuple[int, int]]:
        """(guest-physical address, size) of every region, in address order."""
        return [(r.gpa, r.size) for r in self._regions]

    # -- translation ---------------------------------------------------------------------------------------
    def _find(self, gpa: int) -> Region | None:
        for region in self._regions:
            if region.gpa <= gpa < region.gpa + region.size:
                return region
        return None

    def pieces(self, gpa: int, length: int) -> list[tuple[Region, int, int]]:
        """(region, offset in region, length) pieces covering [gpa, gpa + length), or AddressError."""
        if length < 0 or gpa < 0 or gpa + length - 1 > _U64:
            raise caller_error("range", gpa=gpa, length=length)
        out = []
        while length > 0:
            region = self._find(gpa)
            if region is None:
                raise caller_error("outside-memory", gpa=gpa)
            offset = gpa - region.gpa
            piece = min(length, region.size - offset)
            out.append((region, offset, piece))
            gpa += piece
            length -= piece
        return out

    def contains(self, gpa: int, length: int) -> bool:
        """Whether [gpa, gpa + length) lies in guest memory (adjacent regions allowed)."""
        try:
            self.pieces(gpa, length)
        except AddressError:
            return False
        return True

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy, writable view of [gpa, gpa + length), which must lie inside one region."""
        pieces = self.pieces(gpa, length)
        if len(pieces) > 1:
            raise caller_error("spans-regions", gpa=gpa, length=length, count=len(pieces))
        if not pieces:
            return memoryview(b"")
        region, offset, piece = pieces[0]
        return region.view[offset : offset + piece]

    def views(self, gpa: int, length: int) -> list[memoryview]:
        """Zero-copy views of [gpa, gpa + length), one per region the range crosses."""
        return [region.view[offset : offset + piece] for region, offset, piece in self.pieces(gpa, length)]

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(bytes(v) for v in self.views(gpa, length))

    def write(self, gpa: int, data: Any) -> None:
        src = memoryview(data).cast("B")
        done = 0
        for view in self.views(gpa, src.nbytes):
            view[:] = src[done : done + view.nbytes]
            done += view.nbytes
