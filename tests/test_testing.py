"""vring.testing, the shipped mock driver: its writers put exactly the bytes the spec's ring layouts say where the
spec says (split and packed, both twins), and a device served through hand-made rings behaves."""

from __future__ import annotations

import doctest
import struct

import pytest

import vring
import vring.testing
from vring import Feature, MalformedChain
from vring.testing import (
    AVAIL, BASE, DATA, EVENT_DESC, EVENT_DISABLE, EVENT_ENABLE, NEXT, NO_INTERRUPT, NO_NOTIFY, RING_AREA, TABLES,
    USED, WRITE, make_pair, packed_avail_flags, packed_used_flags,
)

EV = Feature.EVENT_IDX


def at(pair, gpa, n):
    """``n`` bytes of the host buffer behind guest-physical ``gpa`` (read without the twin's GuestMemory)."""
    return bytes(pair.buf[gpa - BASE: gpa - BASE + n])


# -- the bytes, against the spec's struct definitions ---------------------------------------------------------
@pytest.mark.parametrize("size", [1, 4, 16])
def test_split_writers_put_the_spec_layout(twin, size):
    """Spec 2.7: struct virtq_desc {le64 addr; le32 len; le16 flags; le16 next} in the descriptor table; struct
    virtq_avail {le16 flags; le16 idx; le16 ring[size]; le16 used_event}; struct virtq_used {le16 flags; le16 idx;
    struct {le32 id; le32 len} ring[size]; le16 avail_event}. The mock's ring is the legacy contiguous layout with
    alignment 4: the avail ring right after the table, the used ring at the next multiple of 4."""
    p = make_pair(twin, size, EV)
    desc, avail = BASE, BASE + 16 * size
    used = (avail + 6 + 2 * size + 3) & ~3
    assert (p.layout.desc, p.layout.avail, p.layout.used) == (desc, avail, used)

    for i in range(size):
        p.write_desc(i, DATA + 0x100 * i, 0x10 + i, NEXT | WRITE, (i + 1) % size)
        p.write_used(i, 0x1000 + i, 0x2000 + i)
    p.write_desc(3, 0xDEAD0000, 48, WRITE, 7, table=TABLES)
    p.make_available(*(size - 1 - i for i in range(size)))
    p.set_avail_flags(NO_INTERRUPT)
    p.set_used_event(0xBEEF)
    p.set_used_flags(NO_NOTIFY)
    p.set_used_idx(0x1_0005)  # the index is 16 bits: the writer keeps the low ones
    p.set_avail_event(0xCAFE)

    expect_desc = b"".join(struct.pack("<QIHH", DATA + 0x100 * i, 0x10 + i, NEXT | WRITE, (i + 1) % size)
                           for i in range(size))
    expect_avail = struct.pack("<HH", NO_INTERRUPT, size) + struct.pack(f"<{size}H", *range(size - 1, -1, -1))
    expect_avail += struct.pack("<H", 0xBEEF)
    expect_used = struct.pack("<HH", NO_NOTIFY, 5)
    expect_used += b"".join(struct.pack("<II", 0x1000 + i, 0x2000 + i) for i in range(size))
    expect_used += struct.pack("<H", 0xCAFE)
    assert at(p, desc, 16 * size) == expect_desc
    assert at(p, avail, 6 + 2 * size) == expect_avail
    assert at(p, used, 6 + 8 * size) == expect_used
    assert at(p, TABLES + 48, 16) == struct.pack("<QIHH", 0xDEAD0000, 48, WRITE, 7)
    assert p.rings() == expect_desc + expect_avail + expect_used  # the three areas, without the padding

    # The readers read back what the writers wrote.
    assert p.read_desc(size - 1) == (DATA + 0x100 * (size - 1), 0x10 + size - 1, NEXT | WRITE, 0)
    assert p.read_desc(3, table=TABLES) == (0xDEAD0000, 48, WRITE, 7)
    assert p.read_used(size) == (0x1000, 0x2000)  # positions are taken modulo the ring size
    assert (p.avail_flags, p.avail_idx, p.used_event) == (NO_INTERRUPT, size, 0xBEEF)
    assert (p.used_flags, p.used_idx, p.avail_event) == (NO_NOTIFY, 5, 0xCAFE)


def test_make_available_appends_after_the_index_and_wraps(twin):
    p = make_pair(twin, 4)
    p.set_avail_idx(0xFFFE)
    p.make_available(1, 2, 3)
    assert p.avail_idx == 1
    assert struct.unpack("<4H", at(p, p.layout.avail + 4, 8)) == (3, 0, 1, 2)  # slots 0xFFFE % 4, 0xFFFF % 4, 0


@pytest.mark.parametrize("size", [1, 5, 16])
def test_packed_writers_put_the_spec_layout(twin, size):
    """Spec 2.8: struct pvirtq_desc {le64 addr; le32 len; le16 id; le16 flags} in the descriptor ring, then the
    driver's and the device's struct pvirtq_event_suppress {le16 off_wrap; le16 flags}."""
    p = make_pair(twin, size, EV, packed=True)
    desc, driver_event, device_event = BASE, BASE + 16 * size, BASE + 16 * size + 4
    assert (p.layout.desc, p.layout.driver_event, p.layout.device_event) == (desc, driver_event, device_event)

    for slot in range(size):
        p.write_packed_desc(slot, DATA + 0x100 * slot, 0x10 + slot, 0x20 + slot, NEXT | AVAIL)
    p.write_packed_desc(2, 0xDEAD0000, 48, 9, WRITE, table=TABLES)
    p.set_driver_event(3 | 1 << 15, EVENT_DESC)
    p.set_device_event(2, EVENT_DISABLE)

    expect_desc = b"".join(struct.pack("<QIHH", DATA + 0x100 * s, 0x10 + s, 0x20 + s, NEXT | AVAIL)
                           for s in range(size))
    assert at(p, desc, 16 * size) == expect_desc
    assert at(p, driver_event, 4) == struct.pack("<HH", 3 | 1 << 15, EVENT_DESC)
    assert at(p, device_event, 4) == struct.pack("<HH", 2, EVENT_DISABLE)
    assert at(p, TABLES + 32, 16) == struct.pack("<QIHH", 0xDEAD0000, 48, 9, WRITE)
    assert p.rings() == expect_desc + at(p, driver_event, 8)

    assert p.read_packed_desc(size - 1) == (DATA + 0x100 * (size - 1), 0x10 + size - 1, 0x20 + size - 1,
                                            NEXT | AVAIL)
    assert p.read_packed_desc(2, table=TABLES) == (0xDEAD0000, 48, 9, WRITE)
    assert p.driver_event == (3 | 1 << 15, EVENT_DESC) and p.device_event == (2, EVENT_DISABLE)


def test_wrap_counter_flags():
    """Spec 2.8.1: available when AVAIL equals the driver's wrap counter and USED does not; used when both do."""
    assert (packed_avail_flags(True), packed_avail_flags(False)) == (AVAIL, USED)
    assert (packed_used_flags(True), packed_used_flags(False)) == (AVAIL | USED, 0)


def test_writers_refuse_the_other_layout(twin):
    split, packed = make_pair(twin, 4), make_pair(twin, 4, packed=True)
    with pytest.raises(TypeError):
        packed.write_desc(0, DATA, 8)
    with pytest.raises(TypeError):
        packed.make_available(0)
    with pytest.raises(TypeError):
        packed.used_event
    with pytest.raises(TypeError):
        split.write_packed_desc(0, DATA, 8, 0, AVAIL)
    with pytest.raises(TypeError):
        split.set_device_event(0, EVENT_ENABLE)


# -- the pair and its queues ----------------------------------------------------------------------------------
def test_make_pair_builds_the_queues_the_features_call_for(twin):
    split = make_pair(twin, 8, EV)
    assert type(split.drv) is twin.DriverQueue and type(split.dev) is twin.DeviceQueue
    assert split.dev.features == Feature.VERSION_1 | EV and not split.packed
    for packed in (make_pair(twin, 8, packed=True), make_pair(twin, 8, Feature.RING_PACKED)):
        assert type(packed.drv) is twin.PackedDriverQueue and type(packed.dev) is twin.PackedDeviceQueue
        assert packed.dev.features == Feature.VERSION_1 | Feature.RING_PACKED and packed.packed
    assert make_pair(twin, 8, indirect=False).drv.indirect_area is None
    assert make_pair(twin, 8, Feature.INDIRECT_DESC).drv.indirect_area == TABLES
    assert make_pair(twin, 8, max_indirect=4).dev.max_indirect == 4
    assert make_pair(twin).rings() == bytes(len(make_pair(twin).rings()))  # fresh memory is zeroed


def test_make_pair_defaults_to_the_twin_vring_loaded():
    p = make_pair()
    assert p.twin is vring and type(p.dev) is vring.DeviceQueue and type(p.mem) is vring.GuestMemory


def test_a_ring_too_large_for_the_ring_area_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        make_pair(size=RING_AREA // 16)


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(vring.testing).failed == 0


# -- a device served through hand-made rings ------------------------------------------------------------------
def test_split_device_pops_what_was_made_available(twin):
    p = make_pair(twin, 4, EV)
    p.mem.write(DATA, b"request!")
    p.write_desc(2, DATA, 8, NEXT, 0)
    p.write_desc(0, DATA + 0x1000, 64, WRITE)
    p.write_desc(1, DATA + 0x2000, 4)
    p.make_available(2, 1)
    first, second = p.dev.pop_many(4)
    assert (first.head, first.read(), first.writable_len) == (2, b"request!", 64)
    assert (second.head, second.readable_len, second.writable_len) == (1, 4, 0)
    assert p.dev.pop() is None
    first.write(b"reply")
    p.dev.push(first.head, 5)
    assert (p.used_idx, p.read_used(0)) == (1, (2, 5))
    assert at(p, DATA + 0x1000, 5) == b"reply"
    assert p.avail_event == 2  # EVENT_IDX: the device asks for a kick once the next chain is made available
    p.set_used_event(0)  # the driver asked for an interrupt after the first used chain: it was crossed
    assert p.dev.notify_needed()
    p.dev.push(second.head, 0)
    assert not p.dev.notify_needed()  # used_event 0 was crossed already


def test_split_device_interrupts_follow_avail_flags(twin):
    p = make_pair(twin, 4)
    p.write_desc(0, DATA, 8)
    p.write_desc(1, DATA, 8)
    p.make_available(0, 1)
    p.set_avail_flags(NO_INTERRUPT)
    p.dev.push(p.dev.pop().head)
    assert not p.dev.notify_needed()
    p.set_avail_flags(0)
    p.dev.push(p.dev.pop().head)
    assert p.dev.notify_needed()


def test_split_device_refuses_a_malicious_head(twin):
    p = make_pair(twin, 4)
    p.make_available(4)  # one past the descriptor table
    with pytest.raises(MalformedChain) as info:
        p.dev.pop()
    assert info.value.reason == "head-out-of-range" and p.dev.broken


def test_packed_device_pops_what_was_made_available_across_laps(twin):
    p = make_pair(twin, 2, packed=True)
    p.mem.write(DATA, b"ping")
    for lap in range(3):  # slots 0, 1 of lap 0 (wrap counter 1), of lap 1 (0), of lap 2 (1)
        wrap = lap % 2 == 0
        p.write_packed_desc(1, DATA + 0x1000, 16, 1, WRITE | packed_avail_flags(wrap))
        p.write_packed_desc(0, DATA, 4, 1, NEXT | packed_avail_flags(wrap))  # the head last, as a driver does
        chain = p.dev.pop()
        assert (chain.head, chain.read(), chain.writable_len) == (1, b"ping", 16)
        assert p.dev.pop() is None
        p.dev.push(chain.head, 3)
        assert p.read_packed_desc(0)[1:] == (3, 1, WRITE | packed_used_flags(wrap))


def test_packed_device_interrupts_follow_the_driver_event(twin):
    p = make_pair(twin, 4, packed=True)
    for slot in range(2):
        p.write_packed_desc(slot, DATA, 8, slot, AVAIL)
    p.set_driver_event(0, EVENT_DISABLE)
    p.dev.push(p.dev.pop().head)
    assert not p.dev.notify_needed()
    p.set_driver_event(0, EVENT_ENABLE)
    p.dev.push(p.dev.pop().head)
    assert p.dev.notify_needed()
