"""The front-end's memory table: the regions it shares (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) mapped into the
one ``GuestMemory`` the rings read through, and the translation of the user addresses it names rings by."""

from __future__ import annotations

from dataclasses import dataclass

from .. import GuestMemory
from .._errors import VringError
from .protocol import MEM_REGION, ProtocolError

MAX_MEM_SLOTS = 32  # what GET_MAX_MEM_SLOTS answers: the most regions ADD_MEM_REG may build up


@dataclass(frozen=True)
class MemRegion:
    gpa: int
    size: int
    uva: int  # the front-end's user address of the region (what SET_VRING_ADDR speaks in)
    mmap_offset: int

    @classmethod
    def unpack_from(cls, payload: bytes, offset: int) -> "MemRegion":
        """The VhostUserMemoryRegion at ``offset`` of a message payload."""
        return cls(*MEM_REGION.unpack_from(payload, offset))


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

    def to_gpa(self, uva: int, length: int) -> int | None:
        """The guest-physical address of the ``length`` bytes at user address ``uva``; None if no one region
        holds them all."""
        for region in self.regions:
            if region.uva <= uva and uva + length <= region.uva + region.size:
                return region.gpa + (uva - region.uva)
        return None


def _map(mem: GuestMemory, region: MemRegion, fd: int, others: list[MemRegion]) -> None:
    if region.size == 0 or region.gpa + region.size > 1 << 64 or region.uva + region.size > 1 << 64:
        raise ProtocolError(f"memory region {region.gpa:#x}+{region.size:#x} is empty or wraps")
    for other in others:
        if region.uva < other.uva + other.size and other.uva < region.uva + region.size:
            raise ProtocolError(f"memory region at user address {region.uva:#x} overlaps another")
    try:
        mem.add_region_fd(region.gpa, region.size, fd, region.mmap_offset)
    except (VringError, OSError, ValueError) as exc:
        raise ProtocolError(f"memory region {region.gpa:#x}+{region.size:#x} cannot be mapped: {exc}") from None
