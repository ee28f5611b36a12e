"""Rings written by hand into the guest memory: well-formed chains where the front-end wants an answer, and any
descriptor, index, flag or event field a hostile driver cares to write. Nothing here checks what it writes.

Both kinds share ``add`` (a chain of (address, length, flags) buffers, made available at once; returns its id),
``used`` (the next used element, or None) and ``layout`` (what SET_VRING_ADDR names).
"""

from __future__ import annotations

import struct

from .._factory import contiguous_layout
from .._features import DESC_F_NEXT, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, Feature
from .._layout import PackedLayout, SplitLayout
from .guest import RING_GPA, Guest

DESC = struct.Struct("<QIHH")  # split: addr, len, flags, next; packed: addr, len, id, flags
USED_ELEM = struct.Struct("<II")  # id, len
U16 = struct.Struct("<H")
EVENT = struct.Struct("<HH")  # off_wrap, flags

Buffer = tuple[int, int, int]  # guest-physical address, length, descriptor flags (NEXT is added where chained)


class SplitRing:
    """A split ring (spec 2.7) of ``size`` at ``RING_GPA``; chains take consecutive descriptor slots."""

    def __init__(self, guest: Guest, size: int, features: int) -> None:
        self.guest = guest
        self.size = size
        layout = contiguous_layout(features & ~Feature.RING_PACKED, size, RING_GPA)
        assert isinstance(layout, SplitLayout)
        self.layout: SplitLayout = layout
        self.next_desc = 0
        self.avail_idx = 0
        self.used_idx = 0

    def write_desc(self, slot: int, addr: int, length: int, flags: int, nxt: int = 0, table: int | None = None) -> None:
        base = self.layout.desc if table is None else table
        self.guest.write(base + DESC.size * slot, DESC.pack(addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        """Put ``head`` in the avail ring and move the avail index past it."""
        self.guest.write(self.layout.avail + 4 + 2 * (self.avail_idx % self.size), U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.guest.write(self.layout.avail + 2, U16.pack(idx & 0xFFFF))

    def set_used_event(self, idx: int) -> None:
        self.guest.write(self.layout.used_event_addr, U16.pack(idx & 0xFFFF))

    def take_slots(self, count: int) -> list[int]:
        slots = [(self.next_desc + i) % self.size for i in range(count)]
        self.next_desc = (self.next_desc + count) % self.size
        return slots

    def add(self, buffers: list[Buffer]) -> int:
        slots = self.take_slots(len(buffers))
        for i, (addr, length, flags) in enumerate(buffers):
            last = i == len(buffers) - 1
            self.write_desc(slots[i], addr, length, flags | (0 if last else DESC_F_NEXT), 0 if last else slots[i + 1])
        self.publish(slots[0])
        return slots[0]

    def used(self) -> tuple[int, int] | None:
        (idx,) = U16.unpack(self.guest.read(self.layout.used + 2, 2))
        if idx == self.used_idx:
            return None
        elem = USED_ELEM.unpack(self.guest.read(self.layout.used + 4 + USED_ELEM.size * (self.used_idx % self.size),
                                                USED_ELEM.size))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        return elem


class PackedRing:
    """A packed ring (spec 2.8) of ``size`` at ``RING_GPA``; chains take consecutive slots, ids are the head slot."""

    def __init__(self, guest: Guest, size: int, features: int) -> None:
        self.guest = guest
        self.size = size
        layout = contiguous_layout(features | Feature.RING_PACKED, size, RING_GPA)
        assert isinstance(layout, PackedLayout)
        self.layout: PackedLayout = layout
        self.next_slot = 0
        self.wrap = True  # the driver's wrap counter: 1 on the first lap
        self.used_slot = 0
        self.used_wrap = True
        self.chain_length: dict[int, int] = {}  # buffer id -> descriptors its chain took

    def avail_flags(self, wrap: bool | None = None) -> int:
        """The AVAIL/USED bits that make a descriptor available in the lap of ``wrap`` (default: this lap)."""
        wrap = self.wrap if wrap is None else wrap
        return PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED

    def write_desc(self, slot: int, addr: int, length: int, buffer_id: int, flags: int,
                   table: int | None = None) -> None:
        base = self.layout.desc if table is None else table
        self.guest.write(base + DESC.size * slot, DESC.pack(addr, length, buffer_id, flags))

    def take_slots(self, count: int) -> list[tuple[int, bool]]:
        """The next ``count`` (slot, wrap counter) pairs."""
        taken = []
        for _ in range(count):
            taken.append((self.next_slot, self.wrap))
            self.next_slot += 1
            if self.next_slot == self.size:
                self.next_slot, self.wrap = 0, not self.wrap
        return taken

    def add(self, buffers: list[Buffer], buffer_id: int | None = None) -> int:
        taken = self.take_slots(len(buffers))
        ident = taken[0][0] if buffer_id is None else buffer_id
        # The head's flags go last: writing them is what hands the whole chain over.
        for i in reversed(range(len(buffers))):
            addr, length, flags = buffers[i]
            slot, wrap = taken[i]
            nxt = 0 if i == len(buffers) - 1 else DESC_F_NEXT
            self.write_desc(slot, addr, length, ident, flags | nxt | self.avail_flags(wrap))
        self.chain_length[ident] = len(buffers)
        return ident

    def set_driver_event(self, off_wrap: int, flags: int) -> None:
        self.guest.write(self.layout.driver_event, EVENT.pack(off_wrap, flags))

    def used(self) -> tuple[int, int] | None:
        _addr, length, ident, flags = DESC.unpack(self.guest.read(self.layout.desc + DESC.size * self.used_slot,
                                                                  DESC.size))
        avail, used = bool(flags & PACKED_DESC_F_AVAIL), bool(flags & PACKED_DESC_F_USED)
        if not (avail == used == self.used_wrap):
            return None
        self.used_slot += self.chain_length.pop(ident, 1)
        if self.used_slot >= self.size:
            self.used_slot -= self.size
            self.used_wrap = not self.used_wrap
        return ident, length


Ring = SplitRing | PackedRing


def make_ring(guest: Guest, size: int, features: int) -> Ring:
    return PackedRing(guest, size, features) if features & Feature.RING_PACKED else SplitRing(guest, size, features)
