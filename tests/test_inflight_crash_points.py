"""The packed inflight record killed at every store of a push (vhost-user.rst, "Inflight I/O tracking"), a chain
in flight across the ring's end given back, and a refused record leaving the one attached in place; both twins.

A crash point is a prefix of the push's stores, in the spec's order, applied to the bytes before the push (the C
twin's stores run in one C function with no place to stop); on the pure-Python twin the test stops the push for
real before every line of its record writer and ring store and checks it reaches exactly those states.
"""

from __future__ import annotations

import sys
import struct

import pytest

from vring import InflightError, QueueState, inflight_region_size
from vring._inflight import packed_repair_stores
from vring._pyring import inflight as py_inflight
from vring._pyring import rings as py_rings
from vring.testing import BASE, DATA, make_pair

from test_inflight import Crash, Rig, packed_header, summary

# Offsets in a packed queue region (the spec's QueueRegionPacked / DescStatePacked).
FREE_HEAD, OLD_FREE_HEAD, USED_IDX, OLD_USED_IDX, USED_WRAP, OLD_USED_WRAP = 12, 14, 16, 18, 20, 21


def entry_field(i, offset):
    return 32 + 32 * i + offset


def push_stores(r, before, after, used_slot):
    """The stores of a packed push in the spec's order, as (where, offset, length): used() links the chain's last
    entry to the free list, moves free_head, used_idx, used_wrap_counter; the ring gets the used descriptor's len
    and id, then its flags; done() clears the head entry's inflight, then moves old_free_head, old_used_idx,
    old_used_wrap_counter. Only the entries whose bytes change are named (a store of an equal value is none)."""
    (_, reg_before), (_, reg_after) = before, after
    links = [i for i in range(r.size) if reg_before[entry_field(i, 2):entry_field(i, 4)]
             != reg_after[entry_field(i, 2):entry_field(i, 4)]]
    done = [i for i in range(r.size) if reg_before[entry_field(i, 0)] != reg_after[entry_field(i, 0)]]
    desc = r.p.layout.desc - BASE + 16 * used_slot
    return ([("reg", entry_field(i, 2), 2) for i in links]
            + [("reg", FREE_HEAD, 2), ("reg", USED_IDX, 2), ("reg", USED_WRAP, 1)]
            + [("mem", desc + 8, 6), ("mem", desc + 14, 2)]
            + [("reg", entry_field(i, 0), 1) for i in done]
            + [("reg", OLD_FREE_HEAD, 2), ("reg", OLD_USED_IDX, 2), ("reg", OLD_USED_WRAP, 1)])


def apply_prefix(before, after, stores, k):
    mem, reg = bytearray(before[0]), bytearray(before[1])
    for where, at, length in stores[:k]:
        dst, src = (mem, after[0]) if where == "mem" else (reg, after[1])
        dst[at:at + length] = src[at:at + length]
    return bytes(mem), bytes(reg)


def scenario(twin, name):
    """A rig holding chains (in pop order) and the one to push: ``across_the_end``: size 4, a chain of two slots
    completed, then one of three (slots 2, 3, 0) pushed, its used index passing the ring's end, slot 1 keeping
    the completed chain's second descriptor (available in the old lap); ``warmN``: size 4, N one-slot chains
    completed, then two chains of two slots, the second pushed first."""
    r = Rig(twin, packed=True, size=4)
    if name == "across_the_end":
        r.add(1)
        r.dev.push(r.dev.pop().head)
        r.reap()
        r.add(1, segs=3)
        held = [r.dev.pop()]
        return r, held, held[0]
    for _ in range(int(name[4:])):
        r.add(1, segs=1)
        r.dev.push(r.dev.pop().head)
        r.reap()
    r.add(2)
    held = r.dev.pop_many(2)
    return r, held, held[1]


SCENARIOS = ["across_the_end", "warm0", "warm1", "warm2", "warm3"]


def crashed_pushes(twin, name):
    """The rig, its chains, the one pushed, the bytes and queue states before and after, the push's stores."""
    r, held, pushed = scenario(twin, name)
    before, old_state, used_slot = r.snapshot(), r.dev.state, r.dev.used_idx
    r.dev.push(pushed.head, 0)
    after, new_state = r.snapshot(), r.dev.state
    stores = push_stores(r, before, after, used_slot)
    assert apply_prefix(before, after, stores, len(stores)) == after  # the stores are every byte the push changed
    return r, held, pushed, before, after, old_state, new_state, stores


def line_crashes(rig_factory, codes):
    """The states a pure-Python push leaves when killed before each line of the functions in ``codes``."""
    states = []
    n = 0
    while True:
        r, pushed = rig_factory()
        count = 0

        def local(frame, event, arg):
            nonlocal count
            if event == "line":
                if count == n:
                    raise Crash(n)
                count += 1
            return local

        sys.settrace(lambda frame, event, arg: local if frame.f_code in codes else None)
        try:
            r.dev.push(pushed.head, 0)
        except Crash:
            states.append(r.snapshot())
            n += 1
            continue
        finally:
            sys.settrace(None)
        states.append(r.snapshot())
        return states


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_crash_at_any_store_of_a_packed_push_neither_loses_nor_repeats_a_chain(twin, name):
    r, held, pushed, before, after, old_state, new_state, stores = crashed_pushes(twin, name)
    published_at = stores.index(next(s for s in stores if s[0] == "mem" and s[2] == 2)) + 1  # the flags' store
    if twin.__name__.endswith("_pyring"):  # the real pushes reach exactly these states
        def rig():
            s, _, p = scenario(twin, name)
            return s, p
        codes = {py_inflight.PackedRecord.used.__code__, py_inflight.PackedRecord.done.__code__,
                 py_rings.PackedRings.put_used.__code__}
        assert set(line_crashes(rig, codes)) == {apply_prefix(before, after, stores, k)
                                                 for k in range(len(stores) + 1)}
    for k in range(len(stores) + 1):
        r, held, pushed, *_ = crashed_pushes(twin, name)  # the same rig again, its driver as before the push
        r.put(apply_prefix(before, after, stores, k))
        published = k >= published_at
        pending = [c for c in held if not published or c.head != pushed.head]
        assert r.restart() == len(pending), f"after {k} stores"
        assert r.dev.state == (new_state if published else old_state), f"after {k} stores"
        again = r.dev.pop_many(8)  # nothing new was made available: only the chains still in flight
        assert [summary(c) for c in again] == [summary(c) for c in pending], f"after {k} stores"
        for chain in again:
            r.dev.push(chain.head, 0)
        r.reap()
        assert sorted(r.completed) == list(range(r.next_token)), f"after {k} stores"  # each exactly once
        r.add(1, segs=1)  # and the ring goes on
        r.dev.push(r.dev.pop().head, 0)
        assert len(r.reap()) == 1, f"after {k} stores"


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_second_crash_during_the_repair_repairs_the_same(twin, name):
    """The repair's own header stores, killed after any of them, leave a record the next attach repairs to the
    same queue."""
    r, held, pushed, before, after, old_state, new_state, stores = crashed_pushes(twin, name)
    for k in range(len(stores) + 1):
        crashed = apply_prefix(before, after, stores, k)
        r = crashed_pushes(twin, name)[0]
        r.put(crashed)
        r.restart()
        repaired, state = bytes(r.region), r.dev.state
        _, _, _, free_head, _, used_idx, _, used_wrap, _ = packed_header(repaired)
        commit = state == new_state
        repair = packed_repair_stores(commit, free_head, used_idx, used_wrap)
        for j in range(len(repair) + 1):
            region = bytearray(crashed[1])
            for at, fmt, value in repair[:j]:
                struct.pack_into(fmt, region, at, value)
            r.put((crashed[0], bytes(region)))
            r.restart()
            assert bytes(r.region) == repaired and r.dev.state == state, f"after {k} stores, {j} of the repair"


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
