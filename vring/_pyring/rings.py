"""The views of a queue's shared areas, one class per layout, each field named (pure-Python twin).

Split rings (virtio 1.2, 2.7 "Split Virtqueues"): the descriptor table, the available ring and the used ring.
Packed rings (2.8 "Packed Virtqueues"): the descriptor ring and the driver and device event suppression structures.
Sizes and places come from the layout classes (``vring._layout``); a queue maps its views again whenever guest
memory changes (it compares ``generation``).

The 16-bit fields the other side polls (indices, flags, event fields) are read and written with one native load or
store each, through a 16-bit cast of the area: ``struct.pack_into`` zeroes its destination and then writes it byte
by byte, and a peer on another CPU can catch an index half-written (seen with DPDK). Native means little-endian
here, as for the C twin. Python has no memory-ordering primitives: CPython's memoryview accesses are plain loads and
stores done in program order under the GIL, and x86 (the only host the Cython twin supports besides other
little-endian ones) keeps stores ordered. The queues' comments "release", "acquire" and "full fence" mark where the
Cython twin puts its barriers.
"""

from __future__ import annotations

import ctypes
import struct

from .._features import (
    DESC_SIZE,
    EVENT_FLAG_DESC,
    EVENT_FLAG_DISABLE,
    EVENT_FLAG_ENABLE,
    PACKED_DESC_F_AVAIL,
    PACKED_DESC_F_USED,
    need_event,
)
from .._errors import host_alignment_error
from .._layout import PackedLayout, SplitLayout
from .memory import GuestMemory

LEN_MAX = 0xFFFFFFFF  # a descriptor's le32 len; also the most a whole chain may hold
DESC = struct.Struct("<QIHH")  # struct virtq_desc {le64 addr; le32 len; le16 flags; le16 next;} (2.7.5)
PACKED_DESC = struct.Struct("<QIHH")  # struct pvirtq_desc {le64 addr; le32 len; le16 id; le16 flags;} (2.8)
PACKED_DESC_BODY = struct.Struct("<QIH")  # struct pvirtq_desc without its flags: a head written before it is published
_USED_ELEM = struct.Struct("<II")  # struct virtq_used_elem {le32 id; le32 len;} (2.7.8)
_USED_ELEM_SIZE = _USED_ELEM.size
_USED_LEN_ID = struct.Struct("<IH")  # le32 len; le16 id of a used struct pvirtq_desc (its bytes 8 to 13)
_RING_HEADER = 4  # le16 flags; le16 idx: what precedes ring[] in struct virtq_avail and struct virtq_used
_DESC_WORDS = DESC_SIZE // 2  # a descriptor in 16-bit words
_FLAGS_WORD = 7  # the le16 flags of a struct pvirtq_desc, its last word


def ring_view(mem: GuestMemory, gpa: int, length: int) -> memoryview:
    """``mem.view`` of a ring area, refused (LayoutError) at an odd host address, where the Cython twin could not
    load and store its 16-bit fields whole."""
    view = mem.view(gpa, length)
    if ctypes.addressof(ctypes.c_char.from_buffer(view)) & 1:
        raise host_alignment_error(gpa)
    return view


class SplitRings:
    """Views of a split queue's descriptor table (``desc``), available ring (``avail``) and used ring (``used``).

    Each 16-bit field of the two rings is a one-element view named for it, read and written at ``[0]`` with one
    load or store: ``avail_flags``, ``avail_idx``, ``used_event`` (in the avail ring), ``used_flags``, ``used_idx``,
    ``avail_event`` (in the used ring). ``avail_ring`` is avail->ring[] itself, indexed by slot (``idx % size``),
    and ``used_entry`` / ``set_used_entry`` read and write used->ring[slot]. Views rather than accessor methods: a
    Python call per field access would slow the per-call path by a tenth.
    """

    __slots__ = ("desc", "avail", "used", "generation", "avail_flags", "avail_idx", "avail_ring", "used_event",
                 "used_flags", "used_idx", "avail_event")

    def __init__(self, mem: GuestMemory, layout: SplitLayout) -> None:
        self.desc = ring_view(mem, layout.desc, layout.desc_bytes)
        self.avail = ring_view(mem, layout.avail, layout.avail_bytes)
        self.used = ring_view(mem, layout.used, layout.used_bytes)
        self.generation = mem.generation
        size = layout.size
        # struct virtq_avail {le16 flags; le16 idx; le16 ring[size]; le16 used_event;} (2.7.6): the driver writes
        # it; used_event (EVENT_IDX, 2.7.7) is where the layout says.
        avail16 = self.avail.cast("H")
        used_event = (layout.used_event_addr - layout.avail) // 2
        self.avail_flags = avail16[0:1]  # VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.7)
        self.avail_idx = avail16[1:2]  # where the driver puts the next head (mod 2**16)
        self.avail_ring = avail16[2:2 + size]  # heads of the chains made available
        self.used_event = avail16[used_event:used_event + 1]  # the used index past which the driver wants an interrupt
        # struct virtq_used {le16 flags; le16 idx; struct virtq_used_elem ring[size]; le16 avail_event;} (2.7.8): the
        # device writes it; avail_event (EVENT_IDX, 2.7.10) is where the layout says.
        used16 = self.used.cast("H")
        avail_event = (layout.avail_event_addr - layout.used) // 2
        self.used_flags = used16[0:1]  # VIRTQ_USED_F_NO_NOTIFY (2.7.10)
        self.used_idx = used16[1:2]  # where the device puts the next used element (mod 2**16)
        self.avail_event = used16[avail_event:avail_event + 1]  # the avail index past which the device wants a kick

    def clear(self) -> None:
        """Zero the three areas."""
        for view in (self.desc, self.avail, self.used):
            view[:] = bytes(len(view))

    def used_entry(self, slot: int) -> tuple[int, int]:
        """used->ring[slot]: (id, len) of a used element, read once."""
        return _USED_ELEM.unpack_from(self.used, _RING_HEADER + _USED_ELEM_SIZE * slot)

    def set_used_entry(self, slot: int, head: int, written: int) -> None:
        """used->ring[slot] = {id, len}: plain stores, published by the release of used->idx."""
        _USED_ELEM.pack_into(self.used, _RING_HEADER + _USED_ELEM_SIZE * slot, head, written)


class EventSuppression:
    """struct pvirtq_event_suppress {le16 off_wrap; le16 flags;} (2.8.10, 2.8.14): ``off_wrap`` is a descriptor
    ring position with the wrap counter of its lap in bit 15; ``flags`` is ENABLE, DISABLE or DESC (EVENT_IDX)."""

    __slots__ = ("view", "_words")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self._words = view.cast("H")

    def read(self) -> tuple[int, int]:
        """(off_wrap, flags)."""
        return self._words[0], self._words[1]

    def write(self, off_wrap: int, flags: int) -> None:
        """The offset first, then the flags that use it."""
        self._words[0] = off_wrap
        self._words[1] = flags

    def arm(self, event_idx: bool, pos: int, wrap: int) -> None:
        """Ask the other side to notify: at slot ``pos`` of lap ``wrap`` with EVENT_IDX, else on every change."""
        if event_idx:
            self.write(pos | wrap << 15, EVENT_FLAG_DESC)
        else:
            self.write(0, EVENT_FLAG_ENABLE)

    def disable(self) -> None:
        self.write(0, EVENT_FLAG_DISABLE)


class PackedRings:
    """Views of a packed queue's descriptor ring (``desc``) and of its two event suppression structures:
    ``driver_event`` (the driver writes it: interrupt suppression) and ``device_event`` (the device writes it:
    kick suppression). ``desc_flags[pos]`` is desc[pos].flags, one 16-bit load or store: the field whose AVAIL and
    USED bits publish a descriptor (2.8.1)."""

    __slots__ = ("desc", "driver_event", "device_event", "generation", "desc_flags")

    def __init__(self, mem: GuestMemory, layout: PackedLayout) -> None:
        self.desc = ring_view(mem, layout.desc, layout.desc_bytes)
        self.driver_event = EventSuppression(ring_view(mem, layout.driver_event, layout.driver_event_bytes))
        self.device_event = EventSuppression(ring_view(mem, layout.device_event, layout.device_event_bytes))
        self.generation = mem.generation
        self.desc_flags = self.desc.cast("H")[_FLAGS_WORD::_DESC_WORDS]  # every descriptor's last 16-bit word

    def clear(self) -> None:
        """Zero the three areas."""
        for view in (self.desc, self.driver_event.view, self.device_event.view):
            view[:] = bytes(len(view))

    def put_used(self, pos: int, buffer_id: int, written: int, flags: int) -> None:
        """Mark desc[pos] used: its id and len first (plain stores), then its flags (release)."""
        _USED_LEN_ID.pack_into(self.desc, DESC_SIZE * pos + 8, written, buffer_id)
        self.desc_flags[pos] = flags


# The packed ring's wrap counters (2.8.1): the driver marks a descriptor available by setting AVAIL to its wrap
# counter and USED to the inverse; the device marks it used by setting both to *its* wrap counter.
def avail_bits(wrap: int) -> int:
    """AVAIL = wrap, USED = !wrap: how the driver marks a descriptor available in the lap ``wrap``."""
    return PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED


def is_avail(flags: int, wrap: int) -> bool:
    return bool(flags & PACKED_DESC_F_AVAIL) == bool(wrap) and bool(flags & PACKED_DESC_F_USED) != bool(wrap)


def is_used(flags: int, wrap: int) -> bool:
    return bool(flags & PACKED_DESC_F_AVAIL) == bool(wrap) and bool(flags & PACKED_DESC_F_USED) == bool(wrap)


def advance(pos: int, wrap: int, n: int, size: int) -> tuple[int, int]:
    """(position, wrap counter) ``n`` slots on: the counter flips each time the ring's end is passed."""
    pos += n
    return (pos - size, wrap ^ 1) if pos >= size else (pos, wrap)


def event_wants(event: tuple[int, int], event_idx: bool, size: int, wrap: int, new: int, old: int) -> bool:
    """Does the other side's event suppression structure ask to hear that the index moved from old to new?

    ``new``/``old`` are ring positions in the current lap, ``old`` possibly "negative" (mod 2**16) when the
    index wrapped; an event offset from the previous lap is moved back by the ring size to compare (as Linux).
    """
    off_wrap, flags = event
    if flags == EVENT_FLAG_DISABLE:
        return False
    if flags != EVENT_FLAG_DESC or not event_idx:
        return True  # ENABLE, or a value the spec reserves: notify rather than risk a lost wake-up
    off = off_wrap & 0x7FFF
    if off_wrap >> 15 != wrap:
        off -= size
    return need_event(off & 0xFFFF, new & 0xFFFF, old & 0xFFFF)
