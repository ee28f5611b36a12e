"""A mock driver for testing virtio devices (and drivers) built on vring, as rust-vmm's virtio-queue ships
``mock.rs``: a driver and a device queue over one guest memory, and raw writers that put hand-made — also
malicious — descriptors, ring indices and event fields into that memory, bypassing the driver's checks.

Split rings (spec 2.7) and packed rings (spec 2.8), on either twin. A device under test is served through the
pair's ``dev`` queue; the ring bytes it leaves behind are compared with ``rings()`` or read field by field:

>>> from vring.testing import DATA, WRITE, make_pair
>>> pair = make_pair(size=8)
>>> pair.write_desc(0, DATA, 4096, WRITE)  # a chain of one writable buffer, written by hand...
>>> pair.make_available(0)                 # ...and published without the driver's checks
>>> chain = pair.dev.pop()
>>> chain.head, chain.writable_len
(0, 4096)
>>> pair.dev.push(chain.head, 512)
>>> pair.used_idx, pair.read_used(0)
(1, (0, 512))

The guest-physical memory map: the ring at ``BASE`` (``RING_AREA`` bytes), the driver's indirect tables at
``TABLES``, data buffers from ``DATA``; ``MEM_SIZE`` bytes of guest memory in all.
"""

from __future__ import annotations

import struct
import types
from dataclasses import dataclass
from typing import Any

import vring

from ._factory import contiguous_bytes, contiguous_layout, create_device_queue, create_driver_queue
from ._features import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    EVENT_FLAG_DESC,
    EVENT_FLAG_DISABLE,
    EVENT_FLAG_ENABLE,
    PACKED_DESC_F_AVAIL,
    PACKED_DESC_F_USED,
    USED_F_NO_NOTIFY,
    Feature,
)
from ._layout import PackedLayout, RingLayout, SplitLayout

# One descriptor, 16 bytes little-endian: split (addr, len, flags, next), packed (addr, len, id, flags).
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")  # struct virtq_used_elem: id, len
EVENT = struct.Struct("<HH")  # struct pvirtq_event_suppress: off_wrap, flags
U16 = struct.Struct("<H")

# Descriptor flags (both layouts), the packed ring's AVAIL/USED bits, and the event and ring flags.
NEXT, WRITE, INDIRECT = DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT
AVAIL, USED = PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = EVENT_FLAG_ENABLE, EVENT_FLAG_DISABLE, EVENT_FLAG_DESC
NO_INTERRUPT, NO_NOTIFY = AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY

BASE = 0x100000  # guest-physical base of the memory (not 0, so that address bugs show)
MEM_SIZE = 1 << 20
RING_AREA = 0x10000  # bytes reserved at BASE for the ring
TABLES = BASE + 0x20000  # indirect tables (driver side)
DATA = BASE + 0x80000  # data buffers


def packed_avail_flags(wrap: bool) -> int:
    """AVAIL/USED bits of a descriptor the driver makes available in a lap whose wrap counter is ``wrap``
    (spec 2.8.1: AVAIL equal to the wrap counter, USED its inverse). The first lap has ``wrap=True``."""
    return AVAIL if wrap else USED


def packed_used_flags(wrap: bool) -> int:
    """AVAIL/USED bits of a descriptor the device marks used in a lap whose wrap counter is ``wrap`` (both equal
    to the wrap counter)."""
    return AVAIL | USED if wrap else 0


@dataclass
class Pair:
    """A driver queue ``drv`` and a device queue ``dev`` of one ring in ``mem`` (whose host buffer is ``buf``,
    guest-physical ``BASE`` onwards), and raw access to that ring as a malicious driver or device would write it.

    Split-ring writers refuse a packed ring and the reverse (a ``TypeError``): the two layouts give the same
    bytes different meanings."""

    twin: types.ModuleType
    mem: Any
    buf: bytearray
    layout: RingLayout
    drv: Any
    dev: Any

    @property
    def packed(self) -> bool:
        return isinstance(self.layout, PackedLayout)

    def u16(self, gpa: int) -> int:
        """The little-endian 16-bit field at ``gpa``."""
        return U16.unpack(self.mem.read(gpa, 2))[0]

    def _set_u16(self, gpa: int, value: int) -> None:
        self.mem.write(gpa, U16.pack(value & 0xFFFF))

    def rings(self) -> bytes:
        """The ring's three areas, byte for byte (descriptors, then the driver area, then the device area)."""
        return b"".join(self.mem.read(gpa, n) for gpa, n in self.layout.areas())

    # -- split rings (spec 2.7) -------------------------------------------------------------------------------
    @property
    def _split(self) -> SplitLayout:
        if not isinstance(self.layout, SplitLayout):
            raise TypeError("a split-ring field on a packed ring")
        return self.layout

    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                   table: int | None = None) -> None:
        """Descriptor ``index`` of the descriptor table, or of the indirect table at guest-physical ``table``."""
        self.mem.write((self._split.desc if table is None else table) + DESC_SIZE * index,
                       DESC.pack(addr, length, flags, nxt))

    def read_desc(self, index: int, table: int | None = None) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor ``index`` (of the indirect table at ``table`` if given)."""
        gpa = (self._split.desc if table is None else table) + DESC_SIZE * index
        return DESC.unpack(self.mem.read(gpa, DESC_SIZE))

    def make_available(self, *heads: int) -> None:
        """Put ``heads`` into the avail ring after its index and publish the new index."""
        layout = self._split
        idx = self.avail_idx
        for head in heads:
            self._set_u16(layout.avail + 4 + 2 * (idx % layout.size), head)
            idx = (idx + 1) & 0xFFFF
        self.set_avail_idx(idx)

    @property
    def avail_flags(self) -> int:
        return self.u16(self._split.avail)

    def set_avail_flags(self, flags: int) -> None:
        """avail->flags: ``NO_INTERRUPT`` asks the device not to interrupt (when EVENT_IDX is not negotiated)."""
        self._set_u16(self._split.avail, flags)

    @property
    def avail_idx(self) -> int:
        return self.u16(self._split.avail + 2)

    def set_avail_idx(self, idx: int) -> None:
        self._set_u16(self._split.avail + 2, idx)

    @property
    def used_event(self) -> int:
        return self.u16(self._split.used_event_addr)

    def set_used_event(self, idx: int) -> None:
        """The avail ring's trailing used_event (EVENT_IDX): interrupt once the used index passes ``idx``."""
        self._set_u16(self._split.used_event_addr, idx)

    def write_used(self, position: int, ident: int, length: int) -> None:
        """Used ring element ``position`` (modulo the ring size): head ``ident``, ``length`` bytes written."""
        layout = self._split
        self.mem.write(layout.used + 4 + USED_ELEM.size * (position % layout.size), USED_ELEM.pack(ident, length))

    def read_used(self, position: int) -> tuple[int, int]:
        """(id, len) of used ring element ``position`` (modulo the ring size)."""
        layout = self._split
        return USED_ELEM.unpack(self.mem.read(layout.used + 4 + USED_ELEM.size * (position % layout.size),
                                              USED_ELEM.size))

    @property
    def used_flags(self) -> int:
        return self.u16(self._split.used)

    def set_used_flags(self, flags: int) -> None:
        """used->flags: ``NO_NOTIFY`` asks the driver not to kick (when EVENT_IDX is not negotiated)."""
        self._set_u16(self._split.used, flags)

    @property
    def used_idx(self) -> int:
        return self.u16(self._split.used + 2)

    def set_used_idx(self, idx: int) -> None:
        self._set_u16(self._split.used + 2, idx)

    @property
    def avail_event(self) -> int:
        return self.u16(self._split.avail_event_addr)

    def set_avail_event(self, idx: int) -> None:
        """The used ring's trailing avail_event (EVENT_IDX): kick once the avail index passes ``idx``."""
        self._set_u16(self._split.avail_event_addr, idx)

    # -- packed rings (spec 2.8) ------------------------------------------------------------------------------
    @property
    def _packed(self) -> PackedLayout:
        if not isinstance(self.layout, PackedLayout):
            raise TypeError("a packed-ring field on a split ring")
        return self.layout

    def write_packed_desc(self, slot: int, addr: int, length: int, buffer_id: int, flags: int,
                          table: int | None = None) -> None:
        """Descriptor ``slot`` of the descriptor ring, or of the indirect table at ``table``. ``flags`` carries
        the AVAIL/USED bits as well (see ``packed_avail_flags``): writing them is what hands the slot over."""
        self.mem.write((self._packed.desc if table is None else table) + DESC_SIZE * slot,
                       DESC.pack(addr, length, buffer_id, flags))

    def read_packed_desc(self, slot: int, table: int | None = None) -> tuple[int, int, int, int]:
        """(addr, len, id, flags) of descriptor ``slot`` (of the indirect table at ``table`` if given)."""
        gpa = (self._packed.desc if table is None else table) + DESC_SIZE * slot
        return DESC.unpack(self.mem.read(gpa, DESC_SIZE))

    @property
    def driver_event(self) -> tuple[int, int]:
        """(off_wrap, flags) of the driver event suppression structure (the driver's say on interrupts)."""
        return EVENT.unpack(self.mem.read(self._packed.driver_event, EVENT.size))

    def set_driver_event(self, off_wrap: int, flags: int) -> None:
        """``flags`` is ``EVENT_ENABLE``, ``EVENT_DISABLE`` or ``EVENT_DESC``; with ``EVENT_DESC`` (EVENT_IDX),
        ``off_wrap`` = slot | wrap counter << 15 names the used descriptor to interrupt for."""
        self.mem.write(self._packed.driver_event, EVENT.pack(off_wrap, flags))

    @property
    def device_event(self) -> tuple[int, int]:
        """(off_wrap, flags) of the device event suppression structure (the device's say on kicks)."""
        return EVENT.unpack(self.mem.read(self._packed.device_event, EVENT.size))

    def set_device_event(self, off_wrap: int, flags: int) -> None:
        """As ``set_driver_event``, for the kicks: ``off_wrap`` names the available descriptor to kick for."""
        self.mem.write(self._packed.device_event, EVENT.pack(off_wrap, flags))


def make_pair(twin: types.ModuleType | None = None, size: int = 16, features: int = 0, *, packed: bool = False,
              indirect: bool = True, indirect_max: int = 16, max_indirect: int | None = None) -> Pair:
    """A driver and a device queue of ``size`` entries at ``BASE`` on a fresh, zeroed guest memory.

    ``twin`` is ``vring._cring`` or ``vring._pyring`` (default: the twin vring loaded). VERSION_1 is always
    negotiated; ``packed=True`` (or RING_PACKED in ``features``) makes a packed ring. ``indirect`` gives the
    driver its indirect tables at ``TABLES`` (``indirect_max`` entries each; used only where INDIRECT_DESC is in
    ``features``); ``max_indirect`` caps the device's indirect tables (default: the engine's).

    >>> from vring import Feature
    >>> pair = make_pair(size=4, features=Feature.EVENT_IDX, packed=True)
    >>> pair.drv.add([(DATA, 8)]), pair.dev.pop().readable_len
    (0, 8)
    """
    impl: Any = vring if twin is None else twin
    features = int(features) | Feature.VERSION_1 | (Feature.RING_PACKED if packed else 0)
    if contiguous_bytes(features, size, 4) > RING_AREA:
        raise ValueError(f"a ring of {size} entries does not fit in the {RING_AREA:#x} bytes at BASE")
    mem = impl.GuestMemory()
    buf = bytearray(MEM_SIZE)
    mem.add_region(BASE, buf)
    layout = contiguous_layout(features, size, BASE, align=4)  # used ring right after the avail ring
    drv = create_driver_queue(mem, layout, features, twin=impl, indirect_area=TABLES if indirect else None,
                              indirect_max=indirect_max)
    options = {} if max_indirect is None else {"max_indirect": max_indirect}
    dev = create_device_queue(mem, layout, features, twin=impl, **options)
    return Pair(impl, mem, buf, layout, drv, dev)
