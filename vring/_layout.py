"""Where a split virtqueue's three areas live in guest-physical memory (spec "Split Virtqueues")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ._errors import LayoutError
from ._features import DESC_SIZE, MAX_QUEUE_SIZE, Feature

_U64 = (1 << 64) - 1
EVENT_BYTES = 4  # struct pvirtq_event_suppress


def check_queue_size(size: int) -> None:
    """Queue Size is a power of 2, at most 32768 (spec 2.7 "Split Virtqueues")."""
    if not isinstance(size, int) or size < 1 or size > MAX_QUEUE_SIZE or size & (size - 1):
        raise LayoutError(f"queue size {size!r} is not a power of two between 1 and {MAX_QUEUE_SIZE}", "queue-size")


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _check_areas(areas: tuple[tuple[str, int, int, int], ...]) -> None:
    """(name, guest-physical address, alignment, length) of each area: in range, aligned, not overlapping."""
    for name, addr, align, length in areas:
        if not isinstance(addr, int) or addr < 0 or addr + length - 1 > _U64:
            raise LayoutError(f"{name} address {addr!r} is not a 64-bit guest-physical address", "ring-address")
        if addr % align:
            raise LayoutError(f"{name} at {addr:#x} is not {align}-byte aligned", "ring-alignment")
    spans = sorted((addr, length) for _, addr, _, length in areas)
    for (a0, n0), (a1, _n1) in zip(spans, spans[1:]):
        if a0 + n0 > a1:
            raise LayoutError("the ring areas overlap", "ring-overlap")


@dataclass(frozen=True)
class SplitLayout:
    """Guest-physical addresses of the descriptor table, the avail ring and the used ring of one queue.

    Alignment (spec 2.7.1 "Virtqueue Alignment"): descriptor table 16, available ring 2, used ring 4.
    """

    size: int
    desc: int
    avail: int
    used: int

    def __post_init__(self) -> None:
        check_queue_size(self.size)
        _check_areas((("descriptor table", self.desc, 16, self.desc_bytes), ("avail ring", self.avail, 2,
                      self.avail_bytes), ("used ring", self.used, 4, self.used_bytes)))

    # Sizes from the spec's struct definitions; the trailing u16 is used_event / avail_event (EVENT_IDX).
    @property
    def desc_bytes(self) -> int:
        return DESC_SIZE * self.size

    @staticmethod
    def avail_bytes_for(size: int) -> int:
        return 6 + 2 * size  # flags, idx, ring[size], used_event

    @staticmethod
    def used_bytes_for(size: int) -> int:
        return 6 + 8 * size  # flags, idx, ring[size] of {id, len}, avail_event

    @property
    def avail_bytes(self) -> int:
        return self.avail_bytes_for(self.size)

    @property
    def used_bytes(self) -> int:
        return self.used_bytes_for(self.size)

    @property
    def used_event_addr(self) -> int:
        """Where the avail ring's trailing used_event lives (EVENT_IDX: the driver asks for an interrupt there)."""
        return self.avail + 4 + 2 * self.size

    @property
    def avail_event_addr(self) -> int:
        """Where the used ring's trailing avail_event lives (EVENT_IDX: the device asks for a kick there)."""
        return self.used + 4 + 8 * self.size

    # The spec's generic names of the three areas (2.6 "Virtqueues"), the same for both layouts.
    @property
    def driver_area(self) -> int:
        return self.avail

    @property
    def device_area(self) -> int:
        return self.used

    def areas(self) -> list[tuple[int, int]]:
        """(guest-physical address, length) of the descriptor table, avail ring and used ring."""
        return [(self.desc, self.desc_bytes), (self.avail, self.avail_bytes), (self.used, self.used_bytes)]

    @staticmethod
    def contiguous_bytes(size: int, align: int = 4096) -> int:
        """Bytes a legacy single-area ring of ``size`` entries needs (the legacy interface's vring_size)."""
        check_queue_size(size)
        desc_and_avail = DESC_SIZE * size + SplitLayout.avail_bytes_for(size)
        return _align_up(desc_and_avail, align) + SplitLayout.used_bytes_for(size)

    @classmethod
    def contiguous(cls, size: int, base: int, align: int = 4096) -> "SplitLayout":
        """The legacy layout: descriptor table at ``base``, avail ring right after, used ring at the next ``align``."""
        check_queue_size(size)
        if align < 4 or align & (align - 1):
            raise LayoutError(f"alignment {align} is not a power of two >= 4", "ring-alignment")
        avail = base + DESC_SIZE * size
        used = _align_up(avail + cls.avail_bytes_for(size), align)
        return cls(size, base, avail, used)


@dataclass(frozen=True)
class PackedLayout:
    """Guest-physical addresses of a packed virtqueue (spec 2.8): the descriptor ring and the two event
    suppression structures. Alignment: descriptor ring 16, event structures 4; up to 32768 entries, any number."""

    size: int
    desc: int
    driver_event: int  # struct pvirtq_event_suppress the driver writes (interrupt suppression)
    device_event: int  # struct pvirtq_event_suppress the device writes (kick suppression)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 1 <= self.size <= MAX_QUEUE_SIZE:
            raise LayoutError(f"packed queue size {self.size!r} is not between 1 and {MAX_QUEUE_SIZE}", "queue-size")
        _check_areas((("descriptor ring", self.desc, 16, self.desc_bytes), ("driver event area",
                      self.driver_event, 4, EVENT_BYTES), ("device event area", self.device_event, 4, EVENT_BYTES)))

    @property
    def desc_bytes(self) -> int:
        return DESC_SIZE * self.size

    # Each event area is a struct pvirtq_event_suppress: le16 off_wrap (desc_event_off | wrap << 15), le16 flags.
    driver_event_bytes = EVENT_BYTES
    device_event_bytes = EVENT_BYTES

    @property
    def driver_area(self) -> int:
        return self.driver_event

    @property
    def device_area(self) -> int:
        return self.device_event

    def areas(self) -> list[tuple[int, int]]:
        """(guest-physical address, length) of the descriptor ring, driver and device event areas."""
        return [(self.desc, self.desc_bytes), (self.driver_event, EVENT_BYTES), (self.device_event, EVENT_BYTES)]

    @staticmethod
    def contiguous_bytes(size: int) -> int:
        return DESC_SIZE * size + 2 * EVENT_BYTES

    @classmethod
    def contiguous(cls, size: int, base: int) -> "PackedLayout":
        """Descriptor ring at ``base``, then the driver and the device event structures."""
        return cls(size, base, base + DESC_SIZE * size, base + DESC_SIZE * size + EVENT_BYTES)


RingLayout = Union[SplitLayout, PackedLayout]


def ring_layout(features: int, size: int, desc: int, driver_area: int, device_area: int) -> RingLayout:
    """The layout the negotiated ``features`` call for (RING_PACKED or not), from the spec's three areas:
    descriptor area, driver area (avail ring / driver event suppression), device area (used ring / device event
    suppression)."""
    cls = PackedLayout if features & Feature.RING_PACKED else SplitLayout
    return cls(size, desc, driver_area, device_area)


def area_bytes(features: int, size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor, driver and device areas of a ring of ``size`` under ``features``."""
    if features & Feature.RING_PACKED:
        return DESC_SIZE * size, EVENT_BYTES, EVENT_BYTES
    return DESC_SIZE * size, SplitLayout.avail_bytes_for(size), SplitLayout.used_bytes_for(size)


# vhost-user's "Inflight I/O tracking": one region per queue in the shared inflight buffer, a header and one entry
# per descriptor (QueueRegionSplit: 16 + 16 per entry; QueueRegionPacked: 32 + 32 per entry), each region rounded
# up to 64 bytes as libvhost-user and DPDK lay the buffer out.
INFLIGHT_REGION_ALIGN = 64


def inflight_region_size(queue_size: int, packed: bool) -> int:
    """Bytes of one queue's region of the inflight buffer: split ``align_up(16 + 16*size, 64)``, packed
    ``align_up(32 + 32*size, 64)``."""
    entry = 32 if packed else 16
    return _align_up(entry + entry * queue_size, INFLIGHT_REGION_ALIGN)
