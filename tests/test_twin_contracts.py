"""Where the twins once differed, one rule for both: values the engine's C types cannot hold, a reap that a
malformed entry stops partway, ring areas at odd host addresses, negative chain lengths."""

from __future__ import annotations

import numpy as np
import pytest

from vring import Feature, LayoutError, MalformedUsed, PackedLayout, SplitLayout

from vring.testing import DATA, make_pair

EV = Feature.EVENT_IDX
HUGE = 1 << 63  # fits no int64
PAST_U64 = 1 << 64  # fits no uint64


def two_good_then_bad(p):
    """Two good used elements, then one returning an id nobody holds: used->idx says three are there."""
    for _ in range(3):
        p.drv.add([(DATA, 8)], [(DATA + 8, 8)])
    p.drv.kick_needed()
    chains = p.dev.pop_many(3)
    p.dev.push_many([chains[0].head, chains[1].head], [1, 2])
    p.write_used(2, 15, 0)
    p.set_used_idx(3)
    return [chains[0].head, chains[1].head]


def test_a_batch_reap_stopped_partway_reports_its_count_and_writes_nothing_more(twin):
    p = make_pair(twin, 8, EV)
    good = two_good_then_bad(p)
    batch = twin.Batch(8)
    with pytest.raises(MalformedUsed, match="used-id-out-of-range"):
        p.drv.reap_batch(batch)
    assert batch.count == 2 and batch.heads[:2].tolist() == good and batch.lens[:2].tolist() == [1, 2]
    assert p.used_event == 0  # the broken queue did not ask for an interrupt past what it reaped


def test_an_array_reap_stopped_partway_writes_nothing_more(twin):
    p = make_pair(twin, 8, EV)
    good = two_good_then_bad(p)
    heads, lens = np.zeros(8, np.uint16), np.zeros(8, np.uint32)
    with pytest.raises(MalformedUsed, match="used-id-out-of-range"):
        p.drv.pop_used_into(heads, lens)
    assert heads[:2].tolist() == good and lens[:2].tolist() == [1, 2]
    assert p.used_event == 0


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("segs,error,text", [
    ([(DATA, 8), (-1, 8)], "AddressError", "buffer -0x1 (+8) is outside guest memory"),
    ([(DATA, 8), (PAST_U64, 8)], "AddressError", f"buffer {PAST_U64:#x} (+8) is outside guest memory"),
    ([(DATA, 8), (DATA, HUGE)], "ValueError", f"buffer length {HUGE} is not between 1 and 2**32 - 1"),
    # Read before any check of the chain: the zero length of the first buffer is not reached.
    ([(DATA, 0), (-1, 8)], "AddressError", "buffer -0x1 (+8) is outside guest memory"),
    # ... nor the chain's length (longer than the queue).
    ([(DATA, 8)] * 9 + [(DATA, -HUGE - 1)], "ValueError", f"buffer length {-HUGE - 1} is not between"),
])
def test_add_refuses_values_no_descriptor_holds_first_and_writes_nothing(twin, packed, segs, error, text):
    p = make_pair(twin, 8, packed=packed)
    before = bytes(p.buf)
    with pytest.raises(Exception) as info:
        p.drv.add(segs)
    assert type(info.value).__name__ == error and str(info.value).startswith(text)
    assert bytes(p.buf) == before and p.drv.num_free == 8


@pytest.mark.parametrize("heads,lens,text", [
    ([HUGE], [0], f"heads[0] = {HUGE} does not fit int64"),
    ([0, 0], [0, -HUGE - 1], f"lens[1] = {-HUGE - 1} does not fit int64"),
    (np.array([HUGE], np.uint64), [0], f"heads[0] = {HUGE} does not fit int64"),  # a cast would wrap it
])
def test_push_many_refuses_values_no_int64_holds(twin, heads, lens, text):
    p = make_pair(twin, 8)
    p.drv.add([(DATA, 8)])
    p.drv.kick_needed()
    p.dev.pop()
    with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
        p.dev.push_many(heads, lens)
    assert p.dev.state.used_idx == 0


@pytest.mark.parametrize("addrs,lens,chain_segs,text", [
    ([DATA, -1], [8, 8], 1, "addrs[1] = -1 does not fit uint64"),
    ([DATA, PAST_U64], [8, 8], 1, f"addrs[1] = {PAST_U64} does not fit uint64"),
    ([DATA, DATA], [8, HUGE], 1, f"lens[1] = {HUGE} does not fit int64"),
    ([DATA, DATA], [8, 8], [HUGE, 2 - HUGE], f"chain_segs[0] = {HUGE} does not fit int64"),
    ([DATA, DATA], [8, 8], [3, -1], "chain_segs does not add up to the number of segments"),
    ([DATA, DATA], [8, 8], [-1, 3], "chain_segs does not add up to the number of segments"),
])
def test_add_many_refuses_bad_arrays_before_adding(twin, addrs, lens, chain_segs, text):
    p = make_pair(twin, 8)
    before = bytes(p.buf)
    with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        p.drv.add_many(addrs, lens, [0, 0], chain_segs)
    assert bytes(p.buf) == before and p.drv.num_free == 8


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_ring_areas_at_an_odd_host_address_are_refused(twin, packed):
    mem = twin.GuestMemory()
    buf = bytearray(0x10001)
    mem.add_region(0, memoryview(buf)[1:])  # even guest-physical addresses, odd host ones
    if packed:
        layout, queues = PackedLayout(8, 0x1000, 0x1080, 0x1084), (twin.PackedDriverQueue, twin.PackedDeviceQueue)
    else:
        layout, queues = SplitLayout(8, 0x1000, 0x1080, 0x1100), (twin.DriverQueue, twin.DeviceQueue)
    for queue in queues:
        with pytest.raises(LayoutError, match="odd host address") as info:
            queue(mem, layout)
        assert info.value.reason == "host-alignment"
