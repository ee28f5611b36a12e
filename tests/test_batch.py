"""Batch objects: many chains per call through preallocated arrays, on both twins."""

from __future__ import annotations

import pytest

from vring import AddressError, Feature, MalformedChain, QueueBroken

from vring.testing import BASE, DATA, NEXT, WRITE, make_pair

BLK = [(DATA, 16, False), (DATA + 0x1000, 4096, True), (DATA + 0x3000, 1, True)]


def test_full_cycle_through_batches(twin):
    p = make_pair(twin, size=16, features=Feature.INDIRECT_DESC | Feature.EVENT_IDX)
    req, got, done = twin.Batch(8, 24), twin.Batch(8, 24), twin.Batch(8)
    req.set_chains(BLK, 8)
    assert p.drv.add_batch(req, 8) == 8 and req.count == 8
    heads = req.heads[:8].tolist()
    assert p.drv.kick_needed()
    assert p.dev.pop_batch(got) == 8 and got.count == 8
    assert got.heads[:8].tolist() == heads
    assert got.nsegs[:8].tolist() == [3] * 8
    assert got.seg_start[:9].tolist() == list(range(0, 27, 3))
    assert got.readable_len[:8].tolist() == [16] * 8 and got.writable_len[:8].tolist() == [4097] * 8
    assert got.segments(5) == BLK
    got.lens[:8] = [4097, 1, 0, 4097, 5, 6, 7, 8]
    p.dev.push_batch(got)
    assert p.dev.notify_needed()
    assert p.drv.reap_batch(done) == 8 and done.count == 8
    assert done.heads[:8].tolist() == heads
    assert done.lens[:8].tolist() == [4097, 1, 0, 4097, 5, 6, 7, 8]
    assert p.drv.num_free == 16


def test_add_batch_stops_when_the_ring_is_full(twin):
    p = make_pair(twin, size=8)
    req = twin.Batch(4, 12)
    req.set_chains(BLK, 4)
    assert p.drv.add_batch(req, 4) == 2  # three descriptors each, direct: 8 // 3 chains
    assert req.count == 2 and p.drv.num_free == 2


def test_add_batch_with_chains_of_different_lengths(twin):
    p = make_pair(twin, size=8)
    req = twin.Batch(3, 8)
    req.nsegs[:3] = [1, 2, 1]
    req.seg_addr[:4] = [DATA, DATA + 16, DATA + 32, DATA + 48]
    req.seg_len[:4] = [1, 2, 3, 4]
    req.seg_writable[:4] = [0, 0, 1, 1]
    assert p.drv.add_batch(req, 3) == 3
    p.drv.kick_needed()
    chains = p.dev.pop_many(3)
    assert [c.segments for c in chains] == [[(DATA, 1, False)], [(DATA + 16, 2, False), (DATA + 32, 3, True)],
                                            [(DATA + 48, 4, True)]]


def test_add_batch_reports_a_bad_segment_and_keeps_the_chains_before_it(twin):
    p = make_pair(twin, size=8)
    req = twin.Batch(3, 3)
    req.set_chains([(DATA, 8, False)], 3)
    req.seg_len[1] = 0
    with pytest.raises(ValueError, match="buffer length 0 is not between 1"):
        p.drv.add_batch(req, 3)
    assert req.count == 1 and p.drv.num_free == 7
    req.seg_len[1] = 8
    req.seg_addr[2] = BASE - 8
    with pytest.raises(AddressError, match="outside guest memory"):
        p.drv.add_batch(req, 3)
    with pytest.raises(ValueError, match="capacity"):
        p.drv.add_batch(req, 4)
    over = twin.Batch(2, 2)
    over.nsegs[:2] = [2, 1]  # the second chain runs past the segment arrays
    over.seg_len[:2] = 8
    over.seg_addr[:2] = DATA
    with pytest.raises(ValueError, match="runs past"):
        p.drv.add_batch(over, 2)


def test_pop_batch_leaves_a_chain_that_does_not_fit_for_the_next_call(twin):
    p = make_pair(twin, size=16)
    for _ in range(3):
        p.drv.add([(DATA, 8)], [(DATA + 8, 8), (DATA + 16, 8)])
    p.drv.kick_needed()
    small = twin.Batch(8, 7)
    assert p.dev.pop_batch(small) == 2  # 2 x 3 segments fit in 7, the third chain waits
    assert p.dev.avail_pending() == 1
    assert p.dev.pop_batch(small) == 1
    tiny = twin.Batch(1, 2)
    p.drv.add([(DATA, 8)], [(DATA + 8, 8), (DATA + 16, 8)])
    p.drv.kick_needed()
    with pytest.raises(ValueError, match="does not fit"):
        p.dev.pop_batch(tiny)
    assert p.dev.avail_pending() == 1 and not p.dev.broken


def test_pop_batch_on_a_malformed_ring_keeps_what_it_popped(twin):
    p = make_pair(twin, size=16)
    p.write_desc(0, DATA, 8)
    p.write_desc(1, DATA, 8, WRITE | NEXT, 2)
    p.write_desc(2, DATA, 8, 0)  # readable after writable
    p.make_available(0, 1)
    batch = twin.Batch(4)
    with pytest.raises(MalformedChain, match="readable-after-writable"):
        p.dev.pop_batch(batch)
    assert batch.count == 1 and batch.heads[0] == 0
    with pytest.raises(QueueBroken):
        p.dev.push_batch(batch)


def test_push_batch_checks_every_entry_before_publishing(twin):
    p = make_pair(twin, size=16)
    for _ in range(2):
        p.drv.add([(DATA, 8)], [(DATA + 8, 8)])
    p.drv.kick_needed()
    batch = twin.Batch(4)
    assert p.dev.pop_batch(batch) == 2
    batch.lens[:2] = [8, 9]
    with pytest.raises(ValueError, match="exceeds the chain's 8 writable bytes"):
        p.dev.push_batch(batch)
    assert p.u16(p.layout.used + 2) == 0
    batch.lens[1] = 8
    with pytest.raises(ValueError, match="capacity"):
        p.dev.push_batch(batch, 5)
    p.dev.push_batch(batch, 1)
    p.dev.push_batch(batch, 0)
    assert p.u16(p.layout.used + 2) == 1
    batch.heads[0] = batch.heads[1]
    p.dev.push_batch(batch, 1)
    assert p.drv.pop_used() == [(0, 8), (2, 8)]  # two chains of two descriptors: heads 0 and 2


def test_reap_batch_forgets_tokens(twin):
    p = make_pair(twin)
    h = p.drv.add([(DATA, 8)], token="x")
    p.drv.kick_needed()
    p.dev.push(p.dev.pop().head, 0)
    done = twin.Batch(4)
    assert p.drv.reap_batch(done) == 1 and done.heads[0] == h
    p.drv.add([(DATA, 8)])  # the same head again, without a token
    p.drv.kick_needed()
    p.dev.push(p.dev.pop().head, 0)
    assert p.drv.get_used() == (h, 0)


def test_batch_arguments(twin):
    with pytest.raises(ValueError):
        twin.Batch(0)
    with pytest.raises(ValueError):
        twin.Batch(4, 0)
    batch = twin.Batch(4)
    assert batch.capacity == 4 and batch.max_segments == 16 and batch.count == 0
    with pytest.raises(IndexError):
        batch.segments(0)
    with pytest.raises(ValueError):
        batch.set_chains(BLK, 6)


@pytest.mark.parametrize("segment, error", [
    ((-1, 8, False), r"addresses\[0\] = -1 does not fit uint64"),
    ((1 << 64, 8, False), r"addresses\[0\] = 18446744073709551616 does not fit uint64"),
    ((0x1000, 1 << 32, True), r"lengths\[0\] = 4294967296 does not fit uint32"),
    ((0x1000, -8, True), r"lengths\[0\] = -8 does not fit uint32"),
])
def test_set_chains_refuses_what_the_arrays_cannot_hold(twin, segment, error):
    batch = twin.Batch(4, 8)
    with pytest.raises(ValueError, match=error):
        batch.set_chains([segment], 2)
    assert not batch.nsegs.any()  # nothing was written
