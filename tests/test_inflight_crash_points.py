"""The packed inflight record (vhost-user.rst, "Inflight I/O tracking"): a chain in flight across the ring's end
given back, and a refused record leaving the one attached in place; both twins.
"""

from __future__ import annotations

import struct

import pytest

from vring import InflightError, QueueState, inflight_region_size
from vring.testing import DATA, make_pair

from test_inflight import Rig, summary


@pytest.mark.parametrize("warm, ndesc", [(3, 2), (1, 3), (2, 3), (3, 3)])
def test_a_packed_chain_in_flight_across_the_ring_end_is_given_back(twin, warm, ndesc):
    """Size 4: ``warm`` one-slot chains completed, then a chain of ``ndesc`` descriptors from slot ``warm`` on
    (past the end for warm + ndesc > 4, its later descriptors in the next lap) popped when the device dies."""
    r = Rig(twin, packed=True, size=4)
    for _ in range(warm):
        r.add(1, segs=1)
        r.dev.push(r.dev.pop().head)
        r.reap()
    r.add(1, segs=ndesc)
    chain = r.dev.pop()
    state = r.dev.state
    assert r.restart() == 1 and r.dev.state == state
    again = r.dev.pop()
    assert summary(again) == summary(chain) and not r.dev.broken
    r.dev.push(again.head, 0)
    assert r.reap() == [warm]  # exactly once
    r.add(1, segs=1)
    r.dev.push(r.dev.pop().head, 0)
    assert r.reap() == [warm + 1]


def test_two_packed_chains_given_back_one_across_the_end(twin):
    """Size 8: six one-slot chains completed, then chains of three (slots 6, 7, 0) and two (1, 2) descriptors."""
    r = Rig(twin, packed=True, size=8)
    for _ in range(6):
        r.add(1, segs=1)
        r.dev.push(r.dev.pop().head)
        r.reap()
    r.add(1, segs=3)
    r.add(1, segs=2)
    held = r.dev.pop_many(2)
    assert r.restart() == 2
    again = r.dev.pop_many(4)
    assert [summary(c) for c in again] == [summary(c) for c in held]
    for chain in reversed(again):
        r.dev.push(chain.head, 0)
    assert r.reap() == [7, 6]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_refused_record_leaves_the_attached_one_recording(twin, packed):
    p = make_pair(twin, size=8, packed=packed)
    good = bytearray(inflight_region_size(8, packed))
    assert p.dev.attach_inflight(good) == 0
    bad = bytearray(inflight_region_size(8, packed))
    struct.pack_into("<HH", bad, 8, 1, 4)  # version 1, desc_num 4: another queue's record
    state = p.dev.state
    with pytest.raises(InflightError, match="desc_num 4 is not the queue size 8"):
        p.dev.attach_inflight(bad)
    assert p.dev.state == state
    p.drv.add([(DATA, 16)], [], token=1)
    p.drv.kick_needed()
    head = p.dev.pop().head
    entry = 32 + 32 * head if packed else 16 + 16 * head
    assert good[entry] == 1  # desc[head].inflight: the good record keeps recording
    dev = type(p.dev)(p.mem, p.layout, p.dev.features)  # and a new device resubmits from it
    dev.restore(QueueState(0, None, 1) if packed else QueueState(0))
    assert dev.attach_inflight(good) == 1 and dev.pop().head == head
