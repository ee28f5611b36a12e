"""The front-end's memory table: the regions it shares (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) mapped into the
one ``GuestMemory`` the rings read through, and the translation of the user addresses it names rings by."""

from __future__ import annotations

from dataclasses import dataclass

from .. import GuestMemory
from .._errors import VringError
from .protocol import MEM_REGION, ProtocolError

MAX_MEM_SLOTS = 32  # what GET_MAX_MEM_SLOTS answers: the most regions ADD_MEM_REG may build up
MAX_FILE_OFFSET = (1 << 63) - 1  # off_t: no mapping reaches past it (nor is any size larger)


@dataclass(frozen=True)
class MemRegion:
    gpa: int
    size: int
    uva: int  # the front-end's user address of the region (what SET_VRING_ADDR speaks in)
    mmap_offset: int

    @classmethod
    def unpack_from(cls, payload: bytes, offset: int, where: str) -> "MemRegion":
        """The VhostUserMemoryRegion at ``offset`` of a message payload, range-checked; ``where`` names it in
        the ProtocolError of a bad field (e.g. "SET_MEM_TABLE: region 2")."""
        gpa, size, uva, mmap_offset = MEM_REGION.unpack_from(payload, offset)
        if size == 0:
            raise ProtocolError(f"{where} memory_size is 0")
        if size > MAX_FILE_OFFSET:
            raise ProtocolError(f"{where} memory_size {size:#x} is over the largest file size {MAX_FILE_OFFSET:#x}")
        if mmap_offset > MAX_FILE_OFFSET:
            raise ProtocolError(f"{where} mmap_offset {mmap_offset:#x} is over the largest file offset "
                                f"{MAX_FILE_OFFSET:#x}")
        if mmap_offset + size > MAX_FILE_OFFSET:
            raise ProtocolError(f"{where} mmap_offset {mmap_offset:#x} + memory_size {size:#x} is past the largest "
                                f"file offset {MAX_FILE_OFFSET:#x}")
        for field, start in (("guest_phys_addr", gpa), ("userspace_addr", uva)):
            if start + size > 1 << 64:
                raise ProtocolError(f"{where} {field} {start:#x} + memory_size {size:#x} wraps past 2^64")
        return cls(gpa, size, uva, mmap_offset)


class MemoryTable:
    """The regions of one connection. ``mem`` stays the same object for the connection's life, so the rings built
    over it see a new table without being rebuilt."""

    def __init__(self) -> None:
        self.mem = GuestMemory()
        self.regions: list[MemRegion] = []

    def replace(self, regions: list[MemRegion], fds: list[int]) -> None:
        """SET_MEM_TABLE: map every region from its fd, then swap them in for the old ones (all or nothing)."""
        new = GuestMemory()
        for i, (region, fd) in enumerate(zip(regions, fds)):
            _map(new, region, fd, regions[:i])
        for gpa, _size in self.mem.regions:
            self.mem.remove_region(gpa)
        for region in regions:
            self.mem.add_region(region.gpa, new.view(region.gpa, region.size))
        self.regions = regions

    def add(self, region: MemRegion, fd: int) -> None:
        """ADD_MEM_REG: map one more region from its fd."""
        if len(self.regions) >= MAX_MEM_SLOTS:
            raise ProtocolError(f"ADD_MEM_REG: all {MAX_MEM_SLOTS} memory slots are in use")
        _map(self.mem, region, fd, self.regions)
        self.regions.append(region)

    def remove(self, gpa: int, size: int, uva: int) -> None:
        """REM_MEM_REG: unmap the region with these guest-physical and user addresses and size."""
        for i, region in enumerate(self.regions):
            if (region.gpa, region.size, region.uva) == (gpa, size, uva):
                self.mem.remove_region(gpa)
                del self.regions[i]
                return
        raise ProtocolError(f"REM_MEM_REG: no region {gpa:#x}+{size:#x} at user address {uva:#x}")

    def close(self) -> None:
        """The connection is over: drop every region now rather than at the next garbage collection, so that each
        mapping goes as soon as no ring views it."""
        for gpa, _size in self.mem.regions:
            self.mem.remove_region(gpa)
        self.regions = []

    def to_gpa(self, uva: int, length: int) -> int | None:
        """The guest-physical address of the ``length`` bytes at user address ``uva``; None if no one region
        holds them all."""
        for region in self.regions:
            if region.uva <= uva and uva + length <= region.uva + region.size:
                return region.gpa + (uva - region.uva)
        return None


def _map(mem: GuestMemory, region: MemRegion, fd: int, others: list[MemRegion]) -> None:
    for other in others:
        if region.uva < other.uva + other.size and other.uva < region.uva + region.size:
            raise ProtocolError(f"memory region at user address {region.uva:#x} overlaps another")
    try:
        mem.add_region_fd(region.gpa, region.size, fd, region.mmap_offset)
    except (VringError, OSError, ValueError) as exc:
        raise ProtocolError(f"memory region {region.gpa:#x}+{region.size:#x} cannot be mapped: {exc}") from None
