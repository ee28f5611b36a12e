"""Split virtqueue behaviour, driver and device side, on both twins."""

from __future__ import annotations

import numpy as np
import pytest

import vring
from vring import AddressError, Feature, QueueFull, QueueState

from vring.testing import BASE, DATA, DESC, INDIRECT, NEXT, TABLES, WRITE, make_pair

EV = Feature.EVENT_IDX
IND = Feature.INDIRECT_DESC


@pytest.fixture(params=["split", "packed"])
def ring(request: pytest.FixtureRequest) -> str:
    """The layout, for the tests that hold for both (the rest of this file is about split rings' memory)."""
    return request.param


def cycle(p, out, in_, written=0, reply=b""):
    head = p.drv.add(out, in_)
    p.drv.kick_needed()
    chain = p.dev.pop()
    assert chain is not None and chain.head == head
    if reply:
        chain.write(reply)
    p.dev.push(chain.head, written)
    return chain, p.drv.pop_used()


def test_blk_shaped_request_round_trip(twin, ring):
    p = make_pair(twin, packed=ring == "packed", features=IND | EV)
    p.mem.write(DATA, b"H" * 16)
    head = p.drv.add([(DATA, 16)], [(DATA + 0x1000, 4096), (DATA + 0x3000, 1)], token="req")
    assert p.drv.kick_needed()
    chain = p.dev.pop()
    assert chain.head == head and chain.indirect
    assert chain.readable_len == 16 and chain.writable_len == 4097
    assert [bytes(v) for v in chain.readable] == [b"H" * 16]
    assert [v.nbytes for v in chain.writable] == [4096, 1]
    assert chain.segments == [(DATA, 16, False), (DATA + 0x1000, 4096, True), (DATA + 0x3000, 1, True)]
    assert chain.write(b"d" * 4096 + b"\0") == 4097
    p.dev.push(chain.head, 4097)
    assert p.dev.notify_needed()
    assert p.drv.pop_used() == [("req", 4097)]
    assert p.mem.read(DATA + 0x1000, 4096) == b"d" * 4096
    assert p.drv.num_free == 16 and p.drv.in_flight == 0


def test_views_are_zero_copy(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    chain, _ = cycle(p, [(DATA, 8)], [(DATA + 64, 8)])
    p.mem.write(DATA, b"ABCDEFGH")
    assert bytes(chain.readable[0]) == b"ABCDEFGH"  # the view sees guest memory, not a copy
    chain.writable[0][:] = b"12345678"
    assert p.buf[DATA - BASE + 64: DATA - BASE + 72] == b"12345678"


def test_direct_chain_descriptors_in_the_table(twin):
    p = make_pair(twin)  # INDIRECT_DESC not negotiated: a direct chain even with an indirect area
    head = p.drv.add([(DATA, 16), (DATA + 16, 32)], [(DATA + 64, 1)])
    descs = [DESC.unpack(p.mem.read(p.layout.desc + 16 * i, 16)) for i in range(3)]
    assert head == 0
    assert descs == [(DATA, 16, NEXT, 1), (DATA + 16, 32, NEXT, 2), (DATA + 64, 1, WRITE, 0)]
    assert p.drv.num_free == 13


def test_indirect_table_in_the_area_given(twin):
    p = make_pair(twin, features=IND)
    head = p.drv.add([(DATA, 16)], [(DATA + 64, 4)])
    table = TABLES + head * 16 * 16
    assert DESC.unpack(p.mem.read(p.layout.desc + 16 * head, 16)) == (table, 32, INDIRECT, 0)
    assert DESC.unpack(p.mem.read(table, 16)) == (DATA, 16, NEXT, 1)
    assert DESC.unpack(p.mem.read(table + 16, 16)) == (DATA + 64, 4, WRITE, 0)
    assert p.drv.num_free == 15
    single = p.drv.add([(DATA, 16)])  # one buffer: no indirect table
    assert DESC.unpack(p.mem.read(p.layout.desc + 16 * single, 16))[2] == 0


def test_indirect_threshold_and_max_are_configurable(twin):
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(1 << 20))
    layout = vring.SplitLayout(8, BASE, BASE + 128, BASE + 256)
    drv = twin.DriverQueue(mem, layout, IND, indirect_area=TABLES, indirect_max=4, indirect_threshold=3)
    drv.add([(DATA, 1), (DATA, 1)])  # 2 < threshold: direct
    assert drv.num_free == 6
    drv.add([(DATA, 1)] * 3)  # indirect
    assert drv.num_free == 5
    drv.add([(DATA, 1)] * 5)  # more than indirect_max: direct
    assert drv.num_free == 0


def test_queue_full_and_recovery(twin, ring):
    p = make_pair(twin, packed=ring == "packed", size=4)
    for _ in range(4):
        p.drv.add([(DATA, 8)])
    with pytest.raises(QueueFull):
        p.drv.add([(DATA, 8)])
    with pytest.raises(QueueFull):
        p.drv.add([(DATA, 8), (DATA, 8)])
    assert not p.drv.broken  # QueueFull is back-pressure, not an error of the ring
    p.drv.kick_needed()
    for chain in p.dev.pop_many(10):
        p.dev.push(chain.head)
    assert len(p.drv.pop_used()) == 4
    p.drv.add([(DATA, 8)] * 4)


def test_driver_refuses_bad_buffers(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    with pytest.raises(ValueError, match="at least one buffer"):
        p.drv.add([], [])
    with pytest.raises(ValueError, match="not between 1 and 2\\*\\*32 - 1"):
        p.drv.add([(DATA, 0)])
    with pytest.raises(ValueError, match="not between 1 and 2\\*\\*32 - 1"):
        p.drv.add([(DATA, 1 << 32)])
    with pytest.raises(AddressError, match="outside guest memory"):
        p.drv.add([(BASE + (1 << 20) - 4, 8)])
    with pytest.raises(AddressError):
        p.drv.add([(-1, 8)])
    with pytest.raises(ValueError, match="longer than the queue size"):
        p.drv.add([(DATA, 1)] * 17)
    assert p.drv.num_free == 16 and not p.drv.broken


def test_token_defaults_to_head_and_get_used(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    h0 = p.drv.add([(DATA, 8)])
    p.drv.add([(DATA, 8)], token=("x", 1))
    p.drv.kick_needed()
    for chain in p.dev.pop_many(2):
        p.dev.push(chain.head, 0)
    assert p.drv.get_used() == (h0, 0)
    assert p.drv.get_used() == (("x", 1), 0)
    assert p.drv.get_used() is None


def test_free_list_reuses_returned_descriptors(twin):
    p = make_pair(twin, size=4)
    heads = [p.drv.add([(DATA, 1)] * 2), p.drv.add([(DATA, 1)] * 2)]
    assert heads == [0, 2]
    p.drv.kick_needed()
    second = p.dev.pop_many(2)[1]
    p.dev.push(second.head, 0)  # out of order completion
    assert p.drv.pop_used() == [(2, 0)]
    assert p.drv.add([(DATA, 1)] * 2) == 2


def test_wraparound_of_16_bit_indices(twin):
    p = make_pair(twin, size=8)
    for i in range(70000 // 8):
        p.drv.add_many(np.full(8, DATA, np.uint64), np.full(8, 4, np.int64), np.zeros(8, bool), 1)
        p.drv.kick_needed()
        chains = p.dev.pop_many(8)
        assert len(chains) == 8
        p.dev.push_many([c.head for c in chains], [0] * 8)
        assert len(p.drv.pop_used()) == 8
    n = (70000 // 8) * 8
    assert p.dev.state == QueueState(n & 0xFFFF, n & 0xFFFF)
    assert p.drv.last_used_idx == n & 0xFFFF and p.drv.avail_idx == n & 0xFFFF
    assert p.u16(p.layout.avail + 2) == n & 0xFFFF and p.u16(p.layout.used + 2) == n & 0xFFFF


# -- notification suppression ---------------------------------------------------------------------------------
def test_flags_suppression_both_ways(twin):
    p = make_pair(twin)
    p.drv.add([(DATA, 1)])
    assert p.drv.kick_needed()
    assert not p.drv.kick_needed()  # nothing new
    p.dev.disable_notifications()
    assert p.used_flags == 1
    p.drv.add([(DATA, 1)])
    assert not p.drv.kick_needed()
    assert p.dev.enable_notifications()  # work arrived while disabled: handle it before sleeping
    assert p.used_flags == 0
    chains = p.dev.pop_many(4)
    assert not p.dev.enable_notifications()
    p.drv.disable_interrupts()
    assert p.avail_flags == 1
    p.dev.push(chains[0].head)
    assert not p.dev.notify_needed()
    assert p.drv.enable_interrupts()  # a used buffer is already there
    p.dev.push(chains[1].head)
    assert p.dev.notify_needed()
    assert not p.dev.notify_needed()  # nothing pushed since


def test_event_idx_kicks_only_when_avail_event_is_crossed(twin):
    p = make_pair(twin, features=EV)
    p.drv.add([(DATA, 1)])
    assert p.drv.kick_needed()  # avail_event 0: crossing 0 -> 1
    p.drv.add([(DATA, 1)])
    assert not p.drv.kick_needed()  # the device has not asked again
    p.dev.pop_many(2)
    assert p.avail_event == 2  # after a pop, the device asks to hear of the next one
    p.drv.add([(DATA, 1)])
    p.drv.add([(DATA, 1)])
    assert p.drv.kick_needed()  # 2 -> 4 crosses 2
    p.dev.disable_notifications()
    p.dev.pop_many(2)
    assert p.avail_event == 2  # polling: avail_event stays put
    p.drv.add([(DATA, 1)])
    assert not p.drv.kick_needed()
    assert p.dev.enable_notifications()
    assert p.avail_event == 4


def test_event_idx_interrupts_follow_used_event(twin):
    p = make_pair(twin, features=EV)
    for _ in range(4):
        p.drv.add([(DATA, 1)])
    p.drv.kick_needed()
    chains = p.dev.pop_many(4)
    p.dev.push(chains[0].head)
    assert p.dev.notify_needed()  # first signal after start
    p.dev.push(chains[1].head)
    assert not p.dev.notify_needed()  # used_event 0 was crossed already
    assert len(p.drv.pop_used()) == 2
    assert p.used_event == 2
    p.dev.push(chains[2].head)
    assert p.dev.notify_needed()  # 2 -> 3 crosses used_event 2
    p.drv.disable_interrupts()
    p.drv.pop_used()
    p.dev.push(chains[3].head)
    assert not p.dev.notify_needed()
    assert p.drv.enable_interrupts()  # the used buffer is already there: no wake-up lost
    assert p.used_event == 3


# -- device side state ----------------------------------------------------------------------------------------
def test_state_and_restore(twin):
    p = make_pair(twin)
    for _ in range(3):
        p.drv.add([(DATA, 1)])
    p.drv.kick_needed()
    chains = p.dev.pop_many(2)
    for c in chains:
        p.dev.push(c.head)
    saved = p.dev.state
    assert saved == QueueState(2, 2)
    other = twin.DeviceQueue(p.mem, p.layout, p.dev.features)
    other.restore(QueueState(saved.last_avail_idx))  # used index read from the ring, as vhost-user does
    assert other.state == saved
    chain = other.pop()
    assert chain.head == 2
    other.push(chain.head)
    assert [t for t, _ in p.drv.pop_used()] == [0, 1, 2]


def test_push_checks_what_the_device_returns(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    chain, _ = cycle(p, [(DATA, 1)], [(DATA, 8)], written=8)
    with pytest.raises(ValueError, match="not a chain the device holds"):
        p.dev.push(chain.head, 0)  # already returned
    with pytest.raises(ValueError, match="not a chain the device holds"):
        p.dev.push(99, 0)
    p.drv.add([(DATA, 1)], [(DATA, 8)])
    p.drv.kick_needed()
    chain = p.dev.pop()
    with pytest.raises(ValueError, match="exceeds the chain's 8 writable bytes"):
        p.dev.push(chain.head, 9)
    with pytest.raises(ValueError, match="pushed twice"):
        p.dev.push_many([chain.head, chain.head], [1, 1])
    if ring == "split":
        assert p.u16(p.layout.used + 2) == 1  # nothing was published by the failed calls
    p.dev.push_many([chain.head], [8])
    assert p.drv.pop_used() == [(chain.head, 8)]
    assert not p.dev.broken  # the device's own mistakes are ValueErrors, not a broken ring


def test_chain_write_bounds(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    chain, _ = cycle(p, [(DATA, 1)], [(DATA + 16, 4), (DATA + 32, 4)])
    with pytest.raises(ValueError):
        chain.write(b"123456789")
    assert chain.write(b"abcdef", offset=2) == 6
    assert p.mem.read(DATA + 16, 4) == b"\0\0ab" and p.mem.read(DATA + 32, 4) == b"cdef"


def test_chain_across_two_adjacent_regions(twin):
    mem = twin.GuestMemory()
    low, high = bytearray(0x10000), bytearray(0x10000)
    mem.add_region(0x40000, low)
    mem.add_region(0x50000, high)
    layout = vring.SplitLayout.contiguous(8, 0x40000, 4096)
    drv = twin.DriverQueue(mem, layout)
    dev = twin.DeviceQueue(mem, layout)
    high[:4] = b"WXYZ"
    low[-4:] = b"ABCD"
    drv.add([(0x50000 - 4, 8)])
    drv.kick_needed()
    chain = dev.pop()
    assert [bytes(v) for v in chain.readable] == [b"ABCD", b"WXYZ"]
    assert chain.segments == [(0x50000 - 4, 4, False), (0x50000, 4, False)]
    assert chain.read() == b"ABCDWXYZ"


def test_memory_change_rebinds_the_rings(twin, ring):
    """Queues translate their ring addresses again when guest memory changes (vhost-user SET_MEM_TABLE)."""
    p = make_pair(twin, packed=ring == "packed")
    extra = bytearray(4096)
    p.mem.add_region(0x10000000, extra)
    extra[:3] = b"new"
    p.drv.add([(0x10000000, 3)])
    p.drv.kick_needed()
    assert p.dev.pop().read() == b"new"
    p.mem.remove_region(0x10000000)
    p.drv.add([(DATA, 1)])
    p.drv.kick_needed()
    assert p.dev.pop().head == 1
    p.mem.remove_region(BASE)
    with pytest.raises(AddressError):
        p.dev.pop()  # the ring itself left guest memory


# -- batches --------------------------------------------------------------------------------------------------
def test_batch_add_pop_push_reap_with_numpy(twin, ring):
    p = make_pair(twin, packed=ring == "packed", size=32, features=IND | EV)
    n = 40
    addrs = np.empty(3 * n, np.uint64)
    lens = np.empty(3 * n, np.int64)
    writable = np.zeros(3 * n, bool)
    for k in range(n):
        addrs[3 * k: 3 * k + 3] = (DATA, DATA + 0x1000 + 512 * k, DATA + 0x20)
        lens[3 * k: 3 * k + 3] = (16, 512, 1)
        writable[3 * k + 1: 3 * k + 3] = True
    heads = np.zeros(n, np.uint16)
    added = p.drv.add_many(addrs, lens, writable, 3, heads)
    assert added == 32  # the ring holds 32 (indirect: one descriptor each)
    assert sorted(heads[:32].tolist()) == list(range(32))
    assert p.drv.kick_needed()
    chains = p.dev.pop_many(64)
    assert [c.head for c in chains] == heads[:32].tolist()
    assert all(c.writable_len == 513 for c in chains)
    p.dev.push_many(np.array([c.head for c in chains]), np.full(32, 513))
    if ring == "split":
        assert p.u16(p.layout.used + 2) == 32
    out_h = np.zeros(64, np.uint16)
    out_l = np.zeros(64, np.uint32)
    assert p.drv.pop_used_into(out_h, out_l) == 32
    assert out_h[:32].tolist() == heads[:32].tolist() and set(out_l[:32].tolist()) == {513}
    # variable chain lengths, plain lists instead of arrays
    heads2 = [0] * 2
    assert p.drv.add_many([DATA, DATA, DATA], [1, 1, 1], [0, 0, 1], [1, 2], heads2) == 2
    assert p.drv.kick_needed()
    assert [c.writable_len for c in p.dev.pop_many(8)] == [0, 1]


def test_batch_add_validates_shapes(twin, ring):
    p = make_pair(twin, packed=ring == "packed")
    with pytest.raises(ValueError):
        p.drv.add_many([DATA], [1, 2], [0], 1)
    with pytest.raises(ValueError):
        p.drv.add_many([DATA] * 3, [1] * 3, [0] * 3, 2)
    with pytest.raises(ValueError):
        p.drv.add_many([DATA] * 3, [1] * 3, [0] * 3, [1, 1])
    with pytest.raises(ValueError, match="not between 1"):
        p.drv.add_many([DATA] * 2, [1, 0], [0, 0], 1)
    assert p.drv.num_free == 15  # the first chain went in before the bad one


def test_reset_of_both_sides(twin, ring):
    p = make_pair(twin, packed=ring == "packed", features=EV)
    p.drv.add([(DATA, 1)])
    p.drv.kick_needed()
    p.dev.pop()
    p.drv.reset()
    p.dev.reset()
    assert p.rings() == bytes(len(p.rings()))
    assert p.drv.num_free == 16 and p.dev.state == QueueState(0, 0)
    cycle(p, [(DATA, 1)], [])
