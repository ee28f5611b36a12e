"""The packed inflight record (vhost-user.rst, "Inflight I/O tracking"): a chain in flight across the ring's end
given back; both twins.
"""

from __future__ import annotations

import pytest

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
