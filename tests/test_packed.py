"""Packed virtqueues (virtio 1.1+, spec 2.8) on both twins: cycles, wrap counters, event suppression, state,
and every malformed ring — the device's checks and the driver's."""

from __future__ import annotations

import numpy as np
import pytest

from vring import Feature, MalformedChain, MalformedUsed, QueueBroken, QueueFull, QueueState

from vring.testing import AVAIL, BASE, DATA, INDIRECT, MEM_SIZE, NEXT, TABLES, USED, WRITE, make_pair

EV, IND = Feature.EVENT_IDX, Feature.INDIRECT_DESC


def packed(twin, size=8, features=0, **kw):
    return make_pair(twin, size=size, features=features, packed=True, **kw)


@pytest.mark.parametrize("features", [0, EV, IND | EV], ids=["plain", "event_idx", "indirect+event_idx"])
@pytest.mark.parametrize("size", [4, 5, 16])
def test_cycles_across_many_laps(twin, size, features):
    p = packed(twin, size, features)
    for i in range(5 * size + 3):
        nseg = 1 + i % 3
        out = [(DATA + 64 * k, 16) for k in range(nseg - 1)]
        head = p.drv.add(out, [(DATA + 0x1000, 64)], token=i)
        p.drv.kick_needed()
        chain = p.dev.pop()
        assert chain.head == head and chain.readable_len == 16 * (nseg - 1) and chain.writable_len == 64
        p.dev.push(chain.head, 7)
        p.dev.notify_needed()
        assert p.drv.pop_used() == [(i, 7)]
    assert p.drv.num_free == size and p.drv.in_flight == 0


def test_descriptor_flags_follow_the_wrap_counter(twin):
    p = packed(twin, 4)
    p.drv.add([(DATA, 8)], [(DATA + 8, 8)])  # slots 0 and 1, lap 1
    assert p.read_packed_desc(0) == (DATA, 8, 0, NEXT | AVAIL)
    assert p.read_packed_desc(1) == (DATA + 8, 8, 0, WRITE | AVAIL)
    chain = p.dev.pop()
    p.dev.push(chain.head, 3)
    assert p.read_packed_desc(0)[1:] == (3, 0, AVAIL | USED | WRITE)  # one used descriptor for the whole chain
    p.drv.pop_used()
    p.drv.add([(DATA, 8)], [(DATA + 8, 8), (DATA + 16, 8)])  # slots 2, 3 (lap 1) and 0 (lap 0)
    assert p.read_packed_desc(2)[3] == NEXT | AVAIL and p.read_packed_desc(3)[3] == NEXT | WRITE | AVAIL
    assert p.read_packed_desc(0)[3] == WRITE | USED  # lap 0: AVAIL clear, USED set
    chain = p.dev.pop()
    assert chain.writable_len == 16
    p.dev.push(chain.head, 0)
    assert p.read_packed_desc(2)[3] == AVAIL | USED
    assert p.drv.pop_used() == [(0, 0)]
    assert p.dev.state == QueueState(1, 1, 0, 0) and p.drv.num_free == 4


def test_out_of_order_completion(twin):
    p = packed(twin, 8)
    heads = [p.drv.add([(DATA, 8)], [(DATA + 8, 8)], token=t) for t in "abc"]
    p.drv.kick_needed()
    chains = p.dev.pop_many(3)
    assert [c.head for c in chains] == heads
    p.dev.push_many([chains[2].head, chains[0].head], [1, 2])
    assert p.drv.pop_used() == [("c", 1), ("a", 2)]
    p.dev.push(chains[1].head, 3)
    assert p.drv.pop_used() == [("b", 3)]
    assert p.drv.num_free == 8


def test_in_order_batch_completion(twin):
    """With IN_ORDER the device may write one used descriptor for several buffers: the driver takes them all."""
    p = packed(twin, 8, Feature.IN_ORDER)
    for t in "abc":
        p.drv.add([(DATA, 8)], [(DATA + 8, 8)], token=t)
    p.drv.kick_needed()
    chains = p.dev.pop_many(3)
    # A device writing only the last buffer's used descriptor, at the first used slot.
    p.write_packed_desc(0, 0, 5, chains[2].head, AVAIL | USED | WRITE)
    assert p.drv.pop_used() == [("a", 0), ("b", 0), ("c", 5)]
    assert p.drv.num_free == 8 and p.drv.in_flight == 0


def test_in_order_ids_stay_held_until_handed_back(twin):
    """A buffer id implied by a later used descriptor is free only once its completion was handed back: an add
    between two limited reaps must not reuse it (the new chain's token would come back for the old one)."""
    p = packed(twin, 8, Feature.IN_ORDER)
    heads = [p.drv.add([(DATA, 8)], [(DATA + 8, 8)], token=t) for t in "abc"]  # two slots each: 0..5
    p.drv.kick_needed()
    # One used descriptor, at the first used slot, for all three buffers.
    p.write_packed_desc(0, 0, 5, heads[2], AVAIL | USED | WRITE)
    assert p.drv.pop_used(max_count=1) == [("a", 0)]
    assert p.drv.in_flight == 2  # b and c are reaped from the ring but not yet handed back
    d = p.drv.add([(DATA, 8)], [(DATA + 8, 8)], token="d")  # slots 6 and 7
    assert d not in heads[1:]
    assert p.drv.pop_used() == [("b", 0), ("c", 5)]
    p.write_packed_desc(6, 0, 7, d, AVAIL | USED | WRITE)  # the device returns d at the next used slot
    assert p.drv.pop_used() == [("d", 7)]
    assert p.drv.num_free == 8 and p.drv.in_flight == 0


def test_indirect_chain(twin):
    p = packed(twin, 4, IND)
    head = p.drv.add([(DATA, 16)], [(DATA + 0x1000, 512), (DATA + 0x2000, 1)])
    assert p.read_packed_desc(0) == (TABLES + head * 16 * 16, 48, head, INDIRECT | AVAIL)
    assert p.drv.num_free == 3
    chain = p.dev.pop()
    assert chain.indirect and chain.segments == [(DATA, 16, False), (DATA + 0x1000, 512, True),
                                                 (DATA + 0x2000, 1, True)]


def test_queue_full_and_batches(twin):
    p = packed(twin, 6)
    batch = twin.Batch(4, 8)
    batch.set_chains([(DATA, 8, False), (DATA + 8, 8, True)], 4)
    assert p.drv.add_batch(batch, 4) == 3
    with pytest.raises(QueueFull):
        p.drv.add([(DATA, 8)])
    p.drv.kick_needed()
    got = twin.Batch(4, 8)
    assert p.dev.pop_batch(got) == 3
    got.lens[:3] = 8
    p.dev.push_batch(got)
    done = twin.Batch(4)
    assert p.drv.reap_batch(done) == 3 and done.lens[:3].tolist() == [8, 8, 8]


def test_event_suppression_with_flags(twin):
    p = packed(twin, 8)
    p.drv.add([(DATA, 8)])
    assert p.drv.kick_needed()  # device event ENABLE (zeroed memory)
    p.dev.disable_notifications()
    assert p.device_event == (0, 1)
    p.drv.add([(DATA, 8)])
    assert not p.drv.kick_needed()
    assert p.dev.enable_notifications()  # work arrived meanwhile
    chains = p.dev.pop_many(8)
    p.drv.disable_interrupts()
    p.dev.push(chains[0].head)
    assert not p.dev.notify_needed()
    assert p.drv.enable_interrupts()  # a used descriptor is already there
    p.dev.push(chains[1].head)
    assert p.dev.notify_needed()


def test_event_suppression_with_event_idx(twin):
    p = packed(twin, 4, EV)
    p.drv.add([(DATA, 8)])
    assert p.drv.kick_needed()
    chain = p.dev.pop()
    assert p.device_event == (1 | 1 << 15, 2)  # next descriptor slot 1, lap 1, DESC
    p.drv.add([(DATA, 8)])
    assert p.drv.kick_needed()  # crosses slot 1
    p.dev.disable_notifications()
    p.dev.pop()
    p.drv.add([(DATA, 8)])
    assert not p.drv.kick_needed()
    assert p.dev.enable_notifications()
    assert p.device_event == (2 | 1 << 15, 2)
    p.dev.push(chain.head, 0)
    assert p.dev.notify_needed()  # the first interrupt
    p.drv.pop_used()
    assert p.driver_event == (1 | 1 << 15, 2)  # after a reap, the driver asks to hear of the next one


def test_state_and_restore_carry_the_wrap_counters(twin):
    p = packed(twin, 4)
    for _ in range(5):
        p.drv.add([(DATA, 8)])
        p.drv.kick_needed()
        p.dev.push(p.dev.pop().head)
        p.drv.pop_used()
    assert p.dev.state == QueueState(1, 1, 0, 0)
    other = twin.PackedDeviceQueue(p.mem, p.layout, p.dev.features)
    other.restore(QueueState(1, None, 0))  # vhost-user: base 1 with the wrap counter 0 in bit 15
    assert other.state == QueueState(1, 1, 0, 0)
    p.drv.add([(DATA, 8)], token="after")
    p.drv.kick_needed()
    other.push(other.pop().head, 0)
    assert p.drv.pop_used() == [("after", 0)]
    with pytest.raises(ValueError):
        other.restore(QueueState(4, None))


# -- the device does not trust the driver ---------------------------------------------------------------------
def expect_chain_error(p, reason):
    with pytest.raises(MalformedChain) as info:
        p.dev.pop()
    assert info.value.reason == reason
    assert p.dev.broken
    with pytest.raises(QueueBroken, match=reason):
        p.dev.pop()
    return info.value


@pytest.mark.parametrize("case,reason", [
    ("id-range", "buffer-id-out-of-range"),
    ("chain-flags", "chain-flags"),
    ("too-long", "chain-too-long"),
    ("indirect-with-next", "indirect-with-next"),
    ("table-unaligned", "indirect-len-unaligned"),
    ("table-outside", "indirect-outside-memory"),
    ("zero", "zero-length"),
    ("order", "readable-after-writable"),
    ("outside", "buffer-outside-memory"),
    ("not-negotiated", "indirect-not-negotiated"),
])
def test_malformed_packed_rings(twin, case, reason):
    p = packed(twin, 4, 0 if case == "not-negotiated" else IND)
    if case == "id-range":
        p.write_packed_desc(0, DATA, 8, 4, AVAIL)
    elif case == "chain-flags":  # the second descriptor was never made available
        p.write_packed_desc(0, DATA, 8, 0, NEXT | AVAIL)
    elif case == "too-long":  # every slot chains on: a loop round the ring
        for pos in range(4):
            p.write_packed_desc(pos, DATA, 8, 0, NEXT | (AVAIL if pos < 4 else USED))
    elif case == "indirect-with-next":
        p.write_packed_desc(0, TABLES, 16, 0, INDIRECT | NEXT | AVAIL)
    elif case == "table-unaligned":
        p.write_packed_desc(0, TABLES, 20, 0, INDIRECT | AVAIL)
    elif case == "table-outside":
        p.write_packed_desc(0, BASE + MEM_SIZE - 16, 32, 0, INDIRECT | AVAIL)
    elif case == "zero":
        p.write_packed_desc(0, DATA, 0, 0, AVAIL)
    elif case == "order":
        p.write_packed_desc(0, DATA, 8, 0, WRITE | NEXT | AVAIL)
        p.write_packed_desc(1, DATA, 8, 0, AVAIL)
    elif case == "outside":
        p.write_packed_desc(0, BASE + MEM_SIZE - 4, 8, 0, AVAIL)
    elif case == "not-negotiated":
        p.write_packed_desc(0, TABLES, 16, 0, INDIRECT | AVAIL)
    expect_chain_error(p, reason)


@pytest.mark.parametrize("entry_flags", [NEXT, INDIRECT, NEXT | INDIRECT | AVAIL | USED],
                         ids=["next", "indirect", "all-reserved"])
def test_packed_indirect_entries_ignore_every_flag_but_write(twin, entry_flags):
    """Spec 2.8 "Indirect Flag: Scatter-Gather Support": WRITE is the only valid flag of a packed indirect table's
    entries; the others, and the buffer id, "are reserved and are ignored by the device"."""
    p = packed(twin, 4, IND)
    p.write_packed_desc(0, TABLES, 48, 2, INDIRECT | AVAIL)
    p.write_packed_desc(0, DATA, 8, 3, entry_flags, table=TABLES)
    p.write_packed_desc(1, DATA + 8, 16, 1, entry_flags, table=TABLES)
    p.write_packed_desc(2, DATA + 0x100, 32, 0, entry_flags | WRITE, table=TABLES)
    chain = p.dev.pop()
    assert chain.head == 2 and chain.indirect
    assert chain.segments == [(DATA, 8, False), (DATA + 8, 16, False), (DATA + 0x100, 32, True)]
    assert not p.dev.broken


def test_chain_wrapping_with_a_stale_lap_is_refused(twin):
    p = packed(twin, 4)
    for _ in range(3):  # move to slot 3 of lap 1
        p.drv.add([(DATA, 8)])
        p.drv.kick_needed()
        p.dev.push(p.dev.pop().head)
        p.drv.pop_used()
    p.write_packed_desc(3, DATA, 8, 0, NEXT | AVAIL)  # lap 1: available
    # slot 0 still holds lap 1's used descriptor: the chain cannot continue into lap 0 with it
    expect_chain_error(p, "chain-flags")


def test_buffer_id_already_in_flight(twin):
    p = packed(twin, 4)
    p.write_packed_desc(0, DATA, 8, 2, AVAIL)
    p.write_packed_desc(1, DATA, 8, 2, AVAIL)
    assert p.dev.pop().head == 2
    expect_chain_error(p, "buffer-id-in-flight")


# -- the driver does not trust the device ---------------------------------------------------------------------
@pytest.mark.parametrize("case,reason", [("id-range", "used-id-out-of-range"),
                                         ("not-in-flight", "used-id-not-in-flight"),
                                         ("too-long", "used-len-too-large"),
                                         ("nothing-in-flight", "used-wrap")])
def test_malformed_used_descriptors(twin, case, reason):
    p = packed(twin, 4)
    if case != "nothing-in-flight":
        p.drv.add([(DATA, 8)], [(DATA + 8, 8)])
    ident, length = {"id-range": (9, 0), "not-in-flight": (3, 0), "too-long": (0, 9),
                     "nothing-in-flight": (0, 0)}[case]
    p.write_packed_desc(0, 0, length, ident, AVAIL | USED | WRITE)
    with pytest.raises(MalformedUsed) as info:
        p.drv.pop_used()
    assert info.value.reason == reason and p.drv.broken


def test_packed_layout_rules():
    from vring import LayoutError, PackedLayout

    PackedLayout(5, 0x1000, 0x1050, 0x1054)  # any size, 16 / 4 / 4 alignment
    with pytest.raises(LayoutError):
        PackedLayout(0, 0x1000, 0x2000, 0x2004)
    with pytest.raises(LayoutError):
        PackedLayout(40000, 0x1000, 0x2000, 0x2004)
    with pytest.raises(LayoutError):
        PackedLayout(4, 0x1008, 0x2000, 0x2004)
    with pytest.raises(LayoutError):
        PackedLayout(4, 0x1000, 0x2002, 0x2008)
    with pytest.raises(LayoutError):
        PackedLayout(4, 0x1000, 0x1020, 0x2000)  # driver event inside the ring


def test_length_of_a_used_descriptor_without_write_is_ignored(twin):
    """Spec 2.8.4 (DPDK's vhost back-end writes a length on transmit buffers without setting WRITE)."""
    p = packed(twin, 4)
    p.drv.add([(DATA, 100)], token="tx")
    p.write_packed_desc(0, 0, 72, 0, AVAIL | USED)
    assert p.drv.pop_used() == [("tx", 0)]


def test_two_laps_of_numpy_batches_through_add_many(twin):
    p = packed(twin, 7, EV)
    heads = np.zeros(7, np.uint16)
    for _ in range(10):
        n = p.drv.add_many(np.full(14, DATA, np.uint64), np.full(14, 8, np.int64), np.tile([0, 1], 7).astype(bool),
                           2, heads)
        assert n == 3
        p.drv.kick_needed()
        chains = p.dev.pop_many(8)
        p.dev.push_many([c.head for c in chains], [8] * len(chains))
        out_h, out_l = np.zeros(8, np.uint16), np.zeros(8, np.uint32)
        assert p.drv.pop_used_into(out_h, out_l) == 3
