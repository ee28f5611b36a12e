"""Test helpers: a driver and a device on one guest memory, and raw writers for hand-made (malicious) rings."""

from __future__ import annotations

import struct
import types
from dataclasses import dataclass
from typing import Any

from vring import Feature, PackedLayout, SplitLayout

DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = 1, 2, 4

BASE = 0x100000  # guest-physical base of the memory (not 0, so that address bugs show)
MEM_SIZE = 1 << 20
RING_AREA = 0x10000  # bytes reserved at BASE for the ring
TABLES = BASE + 0x20000  # indirect tables (driver side)
DATA = BASE + 0x80000  # data buffers


@dataclass
class Pair:
    twin: types.ModuleType
    mem: Any
    buf: bytearray
    layout: SplitLayout
    drv: Any
    dev: Any

    # -- raw access to the rings, as a malicious driver or device would write them --------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None):
        gpa = (self.layout.desc if table is None else table) + 16 * index
        self.mem.write(gpa, DESC.pack(addr, length, flags, nxt))

    def make_available(self, *heads: int) -> None:
        """Put heads into the avail ring and publish the index, bypassing the driver's checks."""
        idx = struct.unpack_from("<H", self.mem.read(self.layout.avail + 2, 2))[0]
        for head in heads:
            self.mem.write(self.layout.avail + 4 + 2 * (idx % self.layout.size), struct.pack("<H", head))
            idx = (idx + 1) & 0xFFFF
        self.mem.write(self.layout.avail + 2, struct.pack("<H", idx))

    def set_avail_idx(self, idx: int) -> None:
        self.mem.write(self.layout.avail + 2, struct.pack("<H", idx & 0xFFFF))

    def write_used(self, position: int, ident: int, length: int) -> None:
        self.mem.write(self.layout.used + 4 + 8 * (position % self.layout.size), struct.pack("<II", ident, length))

    def set_used_idx(self, idx: int) -> None:
        self.mem.write(self.layout.used + 2, struct.pack("<H", idx & 0xFFFF))

    def u16(self, gpa: int) -> int:
        return struct.unpack("<H", self.mem.read(gpa, 2))[0]

    @property
    def avail_flags(self) -> int:
        return self.u16(self.layout.avail)

    @property
    def used_event(self) -> int:
        return self.u16(self.layout.avail + 4 + 2 * self.layout.size)

    @property
    def used_flags(self) -> int:
        return self.u16(self.layout.used)

    @property
    def avail_event(self) -> int:
        return self.u16(self.layout.used + 4 + 8 * self.layout.size)

    def rings(self) -> bytes:
        """The three ring areas, byte for byte (what the differential test compares)."""
        return b"".join(self.mem.read(gpa, n) for gpa, n in self.layout.areas())


def make_pair(twin: types.ModuleType, size: int = 16, features: int = 0, *, indirect: bool = True,
              indirect_max: int = 16, max_indirect: int | None = None, packed: bool = False) -> Pair:
    mem = twin.GuestMemory()
    buf = bytearray(MEM_SIZE)
    mem.add_region(BASE, buf)
    features = int(features) | Feature.VERSION_1
    if packed:
        layout = PackedLayout.contiguous(size, BASE)
        driver_cls, device_cls = twin.PackedDriverQueue, twin.PackedDeviceQueue
        features |= Feature.RING_PACKED
    else:
        layout = SplitLayout(size, BASE, BASE + 16 * size, BASE + 16 * size + ((6 + 2 * size + 3) & ~3))
        driver_cls, device_cls = twin.DriverQueue, twin.DeviceQueue
    drv = driver_cls(mem, layout, features, indirect_area=TABLES if indirect else None, indirect_max=indirect_max)
    kwargs = {} if max_indirect is None else {"max_indirect": max_indirect}
    dev = device_cls(mem, layout, features, **kwargs)
    return Pair(twin, mem, buf, layout, drv, dev)
