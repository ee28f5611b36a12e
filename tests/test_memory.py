"""GuestMemory and SplitLayout: bounds-checked translation, regions of every kind, the spec's layout rules."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from vring import AddressError, LayoutError, SplitLayout


def test_regions_of_every_buffer_kind(twin):
    mem = twin.GuestMemory()
    ba = bytearray(b"a" * 4096)
    arr = np.full(512, 0x62626262_62626262, dtype=np.uint64)  # 4096 bytes of b"b", not a byte array
    mm = mmap.mmap(-1, 4096)
    mm[:] = b"c" * 4096
    mem.add_region(0x1000, ba)
    mem.add_region(0x2000, arr)
    mem.add_region(0x8000, mm)
    assert mem.regions == [(0x1000, 4096), (0x2000, 4096), (0x8000, 4096)]
    assert mem.read(0x1FFE, 4) == b"aabb"  # adjacent regions read across
    with pytest.raises(AddressError):
        mem.views(0x2FFF, 2)  # 0x3000 is a hole
    mem.write(0x8000, b"XY")
    assert mm[:2] == b"XY"
    view = mem.view(0x2000, 8)
    view[:] = b"\0" * 8
    assert arr[0] == 0  # zero-copy into the numpy array


def test_views_split_at_region_boundaries(twin):
    mem = twin.GuestMemory()
    mem.add_region(0x1000, bytearray(b"L" * 0x1000))
    mem.add_region(0x2000, bytearray(b"H" * 0x1000))
    assert [bytes(v) for v in mem.views(0x1FFE, 4)] == [b"LL", b"HH"]
    with pytest.raises(AddressError, match="spans 2 regions"):
        mem.view(0x1FFE, 4)
    assert mem.contains(0x1000, 0x2000) and not mem.contains(0x1000, 0x2001)


@pytest.mark.parametrize("gpa,length", [(0x0, 1), (0xFFF, 2), (0x2000, 1), (0x1FFF, 2), ((1 << 64) - 1, 2),
                                        (0x1000, -1), (-1, 1)])
def test_out_of_memory_ranges_are_address_errors(twin, gpa, length):
    mem = twin.GuestMemory()
    mem.add_region(0x1000, bytearray(0x1000))
    with pytest.raises(AddressError):
        mem.views(gpa, length)
    with pytest.raises(AddressError):
        mem.read(gpa, length)
    assert not mem.contains(gpa, length)


def test_region_at_the_top_of_the_address_space(twin):
    mem = twin.GuestMemory()
    mem.add_region((1 << 64) - 4096, bytearray(4096))
    mem.write((1 << 64) - 4, b"top!")
    assert mem.read((1 << 64) - 4, 4) == b"top!"
    with pytest.raises(AddressError):
        mem.read((1 << 64) - 4, 5)  # would wrap to 0
    with pytest.raises(AddressError):
        mem.add_region((1 << 64) - 10, bytearray(20))


def test_overlap_readonly_and_empty_regions_are_refused(twin):
    mem = twin.GuestMemory()
    mem.add_region(0x1000, bytearray(0x1000))
    with pytest.raises(AddressError, match="overlaps"):
        mem.add_region(0x1800, bytearray(0x1000))
    with pytest.raises(AddressError, match="overlaps"):
        mem.add_region(0x0, bytearray(0x3000))
    with pytest.raises(TypeError):
        mem.add_region(0x4000, b"read-only bytes")
    with pytest.raises(AddressError):
        mem.add_region(0x4000, bytearray())
    mem.add_region(0x2000, bytearray(0x1000))  # adjacent is fine
    assert len(mem.regions) == 2


def test_fd_region_maps_shared_memory(twin):
    fd = os.memfd_create("vring-test")
    try:
        os.ftruncate(fd, 3 * 4096)
        mem = twin.GuestMemory()
        mem.add_region_fd(0x40000000, 4096, fd, 4096)  # the mmap offset of vhost-user's memory regions
        mem.write(0x40000000, b"shared")
        assert os.pread(fd, 6, 4096) == b"shared"
        with pytest.raises(AddressError):
            mem.read(0x40000000 + 4096, 1)
    finally:
        os.close(fd)


def test_remove_region_bumps_generation_and_keeps_views_alive(twin):
    mem = twin.GuestMemory()
    mem.add_region(0x1000, bytearray(b"z" * 16))
    view = mem.view(0x1000, 4)
    gen = mem.generation
    mem.remove_region(0x1000)
    assert mem.generation != gen and mem.regions == []
    assert bytes(view) == b"zzzz"
    with pytest.raises(AddressError):
        mem.remove_region(0x1000)


# -- layout ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 3, 100, 65536, 32768 * 2, -8])
def test_queue_size_is_a_power_of_two_up_to_32768(size):
    with pytest.raises(LayoutError, match="power of two"):
        SplitLayout(size, 0, 0x10000, 0x20000)


def test_layout_alignment_rules():
    SplitLayout(8, 0x1000, 0x1082, 0x10C4)  # 16, 2, 4: the spec's minimums are enough
    with pytest.raises(LayoutError, match="16-byte"):
        SplitLayout(8, 0x1008, 0x2000, 0x3000)
    with pytest.raises(LayoutError, match="2-byte"):
        SplitLayout(8, 0x1000, 0x2001, 0x3000)
    with pytest.raises(LayoutError, match="4-byte"):
        SplitLayout(8, 0x1000, 0x2000, 0x3002)
    with pytest.raises(LayoutError, match="overlap"):
        SplitLayout(8, 0x1000, 0x1040, 0x3000)
    with pytest.raises(LayoutError):
        SplitLayout(8, (1 << 64) - 16, 0x2000, 0x3000)


def test_legacy_contiguous_layout():
    layout = SplitLayout.contiguous(256, 0x10000, 4096)
    assert layout.desc == 0x10000
    assert layout.avail == 0x10000 + 16 * 256
    assert layout.used == 0x10000 + 0x2000  # 4096 + 518 bytes rounded up to the next 4096
    assert SplitLayout.contiguous_bytes(256, 4096) == 0x2000 + 6 + 8 * 256
    assert layout.used + layout.used_bytes == 0x10000 + SplitLayout.contiguous_bytes(256, 4096)
    assert SplitLayout.contiguous(128, 0, 64).used == 2048 + 320  # 2048 + 262 rounded up to 64


def test_queue_on_memory_that_cannot_hold_it(twin):
    mem = twin.GuestMemory()
    mem.add_region(0x1000, bytearray(0x1000))
    with pytest.raises(AddressError):
        twin.DeviceQueue(mem, SplitLayout.contiguous(256, 0x1000))
    with pytest.raises(AddressError):
        twin.DriverQueue(mem, SplitLayout.contiguous(8, 0x1000), indirect_area=0x1800)
