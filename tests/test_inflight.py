"""The inflight record (vhost-user.rst, "Inflight I/O tracking") on both twins: its bytes follow the spec's layout,
and a device killed at any point of a pop or a push leaves a record from which a new device resubmits exactly the
chains popped and not completed, in pop order, none completed twice, at the right ring positions.

How the crash points are reached: the pure-Python twin is stopped there for real (its record writer or ring store
patched to raise); for both twins the same intermediate states are also written by hand, from the bytes before and
after the operation and the order the spec gives the stores (the test checks the two agree on the Python twin),
because the C twin's stores run inside one C function with no place to stop.
"""

from __future__ import annotations

import random
import struct

import pytest

from vring import Feature, InflightError, MalformedChain, PackedLayout, QueueState, inflight_region_size
from vring._pyring import inflight as py_inflight
from vring._pyring import rings as py_rings
from vring._pyring import split_device as py_split_device
from vring.testing import BASE, DATA, make_pair

# The spec's structs, decoded independently of vring's own code.
SPLIT_HEADER = struct.Struct("<QHHHH")  # features, version, desc_num, last_batch_head, used_idx
SPLIT_ENTRY = struct.Struct("<B5xHQ")  # inflight, next, counter
PACKED_HEADER = struct.Struct("<QHHHHHHBB7x")  # ..., free_head, old_free_head, used_idx, old_used_idx, wraps
PACKED_ENTRY = struct.Struct("<BxHHHQHHIQ")  # inflight, next, last, num, counter, id, flags, len, addr
RING_DESC = struct.Struct("<QIHH")


class Crash(Exception):
    """The device process dies here."""


class Rig:
    """A driver, a device keeping its inflight record in ``region``, and the chains in play by token."""

    def __init__(self, twin, packed, size=8, features=0):
        self.twin, self.packed, self.size = twin, packed, size
        self.p = make_pair(twin, size=size, features=features, packed=packed)
        self.region = bytearray(inflight_region_size(size, packed))
        assert self.p.dev.attach_inflight(self.region) == 0
        self.next_token = 0
        self.completed: list[int] = []

    @property
    def dev(self):
        return self.p.dev

    def add(self, n=1, segs=2):
        """``n`` chains of one readable and ``segs - 1`` writable buffers, each with its own token."""
        for _ in range(n):
            k = self.next_token
            self.p.drv.add([(DATA + 64 * (k % 64), 16)], [(DATA + 0x4000 + 256 * (k % 32) + 32 * j, 32)
                                                         for j in range(segs - 1)], token=k)
            self.next_token += 1
        self.p.drv.kick_needed()

    def reap(self):
        got = [token for token, _ in self.p.drv.pop_used()]
        assert not set(got) & set(self.completed), "a request completed twice"
        self.completed += got
        return got

    def used_ring_idx(self):
        return int.from_bytes(self.p.mem.read(self.p.layout.used + 2, 2), "little")

    def restart(self):
        """A new device over the same ring and record, started as vhost-user starts it: SET_VRING_BASE (split:
        the used index, what QEMU sends after a back-end died; packed: the initial state), then the record."""
        old = self.p.dev
        self.p.dev = type(old)(self.p.mem, self.p.layout, old.features)
        self.p.dev.restore(QueueState(0, None, 1) if self.packed else QueueState(self.used_ring_idx()))
        return self.p.dev.attach_inflight(self.region)

    def snapshot(self):
        return bytes(self.p.buf), bytes(self.region)

    def put(self, snap):
        self.p.buf[:], self.region[:] = snap


def summary(chain):
    return chain.head, chain.segments, chain.readable_len, chain.writable_len, chain.indirect


def split_header(region):
    return SPLIT_HEADER.unpack_from(region)


def split_entry(region, i):
    return SPLIT_ENTRY.unpack_from(region, 16 + 16 * i)


def packed_header(region):
    return PACKED_HEADER.unpack_from(region)


def packed_entry(region, i):
    return PACKED_ENTRY.unpack_from(region, 32 + 32 * i)


# -- layout ------------------------------------------------------------------------------------------------------
def test_region_sizes():
    from vring import inflight_region_size as size

    assert [size(n, False) for n in (1, 3, 4, 8, 256)] == [64, 64, 128, 192, 4160]
    assert [size(n, True) for n in (1, 2, 3, 8, 256)] == [64, 128, 128, 320, 8256]


def test_split_record_follows_the_spec_layout(twin):
    r = Rig(twin, packed=False, size=8)
    assert split_header(r.region) == (0, 1, 8, 0, 0)
    r.add(3)
    chains = r.dev.pop_many(3)
    heads = [c.head for c in chains]
    assert [split_entry(r.region, h) for h in heads] == [(1, 0, 0), (1, 0, 1), (1, 0, 2)]
    r.dev.push_many([heads[2], heads[0]], [4, 0])  # one batch, out of order
    assert split_header(r.region) == (0, 1, 8, heads[0], 2)  # last_batch_head: the batch's last head
    assert split_entry(r.region, heads[0]) == (0, heads[2], 0)  # the list: heads[0] -> heads[2] -> (old head 0)
    assert split_entry(r.region, heads[2]) == (0, 0, 2)
    assert split_entry(r.region, heads[1]) == (1, 0, 1)
    r.dev.push(heads[1], 1)
    assert split_header(r.region) == (0, 1, 8, heads[1], 3)
    assert split_entry(r.region, heads[1]) == (0, heads[0], 1)
    assert r.reap() == [2, 0, 1]


def test_packed_record_follows_the_spec_layout(twin):
    r = Rig(twin, packed=True, size=8)
    assert packed_header(r.region) == (0, 1, 8, 0, 0, 0, 0, 1, 1)
    assert [packed_entry(r.region, i)[1] for i in range(8)] == list(range(1, 9))  # the free list: i -> i + 1
    r.add(2)  # two chains of two descriptors: slots 0-1 (id 0) and 2-3 (id 1)
    ring = [RING_DESC.unpack(r.p.mem.read(r.p.layout.desc + 16 * i, 16)) for i in range(4)]
    chains = r.dev.pop_many(2)
    assert [c.head for c in chains] == [0, 1]
    for i, (addr, length, buffer_id, flags) in enumerate(ring):  # each entry holds a copy of its descriptor
        assert packed_entry(r.region, i)[5:] == (buffer_id, flags, length, addr)
    assert packed_entry(r.region, 0)[:5] == (1, 1, 1, 2, 0)  # inflight, next, last, num, counter
    assert packed_entry(r.region, 2)[:5] == (1, 3, 3, 2, 1)
    assert packed_header(r.region) == (0, 1, 8, 4, 4, 0, 0, 1, 1)
    r.dev.push(1, 5)  # out of order: its entries (2, 3) go back to the head of the free list
    assert packed_header(r.region) == (0, 1, 8, 2, 2, 2, 2, 1, 1)
    assert packed_entry(r.region, 3)[1] == 4 and packed_entry(r.region, 2)[0] == 0
    assert r.reap() == [1]


# -- crashes between operations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("features", [0, Feature.INDIRECT_DESC], ids=["direct", "indirect"])
def test_a_crash_between_pop_and_push_resubmits_what_was_in_flight(twin, packed, features):
    """Random rounds of adds, pops and out-of-order pushes across many ring wraps, a crash every few rounds."""
    rng = random.Random(12)
    r = Rig(twin, packed, size=8, features=features)
    held = []  # chains the device holds, in pop order
    crashes = resubmitted = 0
    for round_ in range(120):
        per_chain = 1 if features else 2  # descriptors (split) or slots (packed): indirect chains take one
        r.add(rng.randint(0, min(3, r.p.drv.num_free // per_chain)))
        held += r.dev.pop_many(rng.randint(0, 4))
        for chain in rng.sample(held, rng.randint(0, len(held))):
            r.dev.push(chain.head, rng.randint(0, chain.writable_len))
            held.remove(chain)
        r.reap()
        if round_ % 7 == 6:
            before = r.dev.state
            assert r.restart() == len(held)
            assert r.dev.state == before and r.dev.inflight_pending == len(held)
            again = r.dev.pop_many(len(held))
            assert [summary(c) for c in again] == [summary(c) for c in held]
            assert r.dev.state == before  # a resubmitted chain does not move last_avail
            held = again
            crashes += 1
            resubmitted += len(held)
    for chain in held + r.dev.pop_many(8):
        r.dev.push(chain.head, 0)
    r.reap()
    assert sorted(r.completed) == list(range(r.next_token)) and crashes == 17 and resubmitted > 10


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_the_resubmitted_chains_come_first_then_new_ones(twin, packed):
    r = Rig(twin, packed)
    r.add(3)
    first = r.dev.pop_many(2)
    r.dev.push(first[0].head)
    assert r.restart() == 1
    assert r.dev.avail_pending() >= 2 and r.dev.enable_notifications()
    chains = r.dev.pop_many(5)
    assert [c.head for c in chains][:1] == [first[1].head] and len(chains) == 2
    assert r.dev.inflight_pending == 0
    for c in chains:
        r.dev.push(c.head)
    assert sorted(r.reap()) == [0, 1, 2]
    # A second crash before a resubmitted chain completes resubmits it again, with its first counter.
    r.add(2)
    a, b = r.dev.pop_many(2)
    assert r.restart() == 2
    assert [c.head for c in r.dev.pop_many(2)] == [a.head, b.head]
    assert r.restart() == 2
    assert [c.head for c in r.dev.pop_many(2)] == [a.head, b.head]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_batch_calls_keep_the_record_and_resubmit_first(twin, packed):
    """pop_batch / push_batch (GIL-free loops on the C twin at this size) keep the record as the per-call
    methods do."""
    r = Rig(twin, packed, size=128)
    r.add(100, segs=1)
    batch = r.twin.Batch(64, 256)
    assert r.dev.pop_batch(batch) == 64
    heads = batch.heads[:64].tolist()
    batch.lens[:64] = 0
    batch.heads[:32] = batch.heads[32:64].copy()  # complete the later half
    r.dev.push_batch(batch, 32)
    assert r.restart() == 32
    again = r.twin.Batch(64, 256)
    assert r.dev.pop_batch(again) == 64  # the 32 given back, then 32 new ones
    assert again.heads[:32].tolist() == heads[:32]
    again.lens[:64] = 0
    r.dev.push_batch(again, 64)
    assert sorted(r.reap()) == sorted(range(96))


# -- crashes inside a push ----------------------------------------------------------------------------------------
SPLIT_POINTS = ["before publication", "after publication", "after inflight=0"]
PACKED_POINTS = ["before the used descriptor", "after the used descriptor", "after inflight=0"]


def hand_made(r, before, after, point, batch_entries, used_slot):
    """The ring and the record at ``point`` of a push, written from the bytes before and after it in the order
    the spec gives the stores. Split: the list of the last batch and the used elements, used->idx, inflight = 0
    for the batch, the record's used_idx. Packed: the chain's entries back on the free list and the record's
    used_idx, the used descriptor, inflight = 0, the old_* fields."""
    (mem_before, reg_before), (mem_after, reg_after) = before, after
    mem, reg = bytearray(mem_after), bytearray(reg_after)
    if not r.packed:
        reg[14:16] = reg_before[14:16]  # the record's used_idx not yet moved
        if point != "after inflight=0":
            for entry in batch_entries:
                reg[16 + 16 * entry] = 1
        if point == "before publication":
            at = r.p.layout.used + 2 - BASE
            mem[at:at + 2] = mem_before[at:at + 2]  # used->idx
        return bytes(mem), bytes(reg)
    reg[14:16], reg[18:20], reg[21] = reg_before[14:16], reg_before[18:20], reg_before[21]  # old_* not yet moved
    if point != "after inflight=0":
        for entry in batch_entries:
            reg[32 + 32 * entry] = 1
    if point == "before the used descriptor":
        at = r.p.layout.desc + 16 * used_slot - BASE
        mem[at:at + 16] = mem_before[at:at + 16]
    return bytes(mem), bytes(reg)


# Where the pure-Python twin is stopped for real: (class, method) that raises Crash when called.
HOOKS = {
    "before publication": (py_split_device.DeviceQueue, "_publish_used"),
    "after publication": (py_inflight.SplitRecord, "published"),
    "before the used descriptor": (py_rings.PackedRings, "put_used"),
    "after the used descriptor": (py_inflight.PackedRecord, "done"),
}


def scenario(twin, packed, warm, features):
    """A rig ``warm`` cycles on (so that the push below crosses the end of the ring for some ``warm``) holding
    chains A, B (split: and C; B pushed already); returns it and the push to crash in: (heads, lens)."""
    r = Rig(twin, packed, size=8, features=features)
    for _ in range(warm):
        r.add(1)
        r.dev.push(r.dev.pop().head)
        r.reap()
    if packed:
        r.add(2)  # two chains of two slots each
        a, b = r.dev.pop_many(2)
        return r, [a, b], ([b.head], [3])  # B first: out of order
    r.add(3)
    a, b, c = r.dev.pop_many(3)
    r.dev.push(b.head, 1)
    assert r.reap() == [warm + 1]
    return r, [a, c], ([c.head, a.head], [2, 0])


def chain_entries(region, size, buffer_ids):
    """Packed: the head entries of the record's chains in flight with these buffer ids."""
    out = []
    for i in range(size):
        flag, _, last, *_ = packed_entry(region, i)
        if flag and packed_entry(region, last)[5] in buffer_ids:
            out.append(i)
    return out


@pytest.mark.parametrize("features", [0, Feature.INDIRECT_DESC], ids=["direct", "indirect"])
@pytest.mark.parametrize("warm", [0, 1, 3, 5, 7])
@pytest.mark.parametrize("point", SPLIT_POINTS + PACKED_POINTS)
def test_a_crash_inside_a_push_neither_loses_nor_repeats_a_chain(twin, point, warm, features):
    packed = point in PACKED_POINTS
    r, held, (heads, lens) = scenario(twin, packed, warm, features)
    old_state = r.dev.state
    before = r.snapshot()
    used_slot = r.dev.used_idx
    batch_entries = chain_entries(before[1], r.size, heads) if packed else heads
    r.dev.push_many(heads, lens)
    new_state = r.dev.state
    after = r.snapshot()
    state = hand_made(r, before, after, point, batch_entries, used_slot)
    if point in HOOKS and twin.__name__.endswith("_pyring"):  # the real thing agrees with the hand-made state
        s, _, _ = scenario(twin, packed, warm, features)
        cls, name = HOOKS[point]

        def crash(*args, **kwargs):
            raise Crash(point)

        original = getattr(cls, name)
        setattr(cls, name, crash)
        try:
            with pytest.raises(Crash):
                s.dev.push_many(heads, lens)
        finally:
            setattr(cls, name, original)
        assert s.snapshot() == state
    r.put(state)
    published = point not in ("before publication", "before the used descriptor")
    pending = [c for c in held if not published or c.head not in heads]
    assert r.restart() == len(pending)
    assert r.dev.state == (new_state if published else old_state)
    again = r.dev.pop_many(8)
    assert [summary(c) for c in again] == [summary(c) for c in pending]  # in pop order, nothing new
    for chain in again:
        r.dev.push(chain.head, 0)
    r.reap()
    assert sorted(r.completed) == list(range(r.next_token))  # each exactly once (reap refuses a repeat)
    r.add(2)  # and the ring goes on
    for chain in r.dev.pop_many(2):
        r.dev.push(chain.head, 0)
    assert len(r.reap()) == 2


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_crash_in_the_middle_of_a_pop_pops_the_chain_again(twin, packed):
    """Packed: killed while a chain's entries are being written (free_head moved, old_free_head not yet): the
    entries go back to the free list and the chain is popped again from the ring. Split: killed before inflight=1
    (only the counter written): likewise."""
    r = Rig(twin, packed)
    r.add(2)
    first = r.dev.pop()
    before = r.snapshot()
    second = r.dev.pop()
    mem, reg = r.snapshot()
    reg = bytearray(reg)
    if packed:
        reg[14:16] = before[1][14:16]  # old_free_head not yet past the chain
    else:
        reg[16 + 16 * second.head] = 0  # inflight not yet set
    r.put((mem, bytes(reg)))
    assert r.restart() == 1
    chains = r.dev.pop_many(3)
    assert [summary(c) for c in chains] == [summary(first), summary(second)]


# -- hostile records ----------------------------------------------------------------------------------------------
def put16(region, at, value):
    struct.pack_into("<H", region, at, value)


def a_record(twin, packed):
    """A rig whose record has chains in flight and a completed push behind it."""
    r = Rig(twin, packed, size=8)
    r.add(3)
    chains = r.dev.pop_many(3)
    r.dev.push(chains[1].head, 0)
    return r


SPLIT_SPOILS = {
    "version": lambda reg: put16(reg, 8, 2),
    "desc_num": lambda reg: put16(reg, 10, 4),
    "last_batch_head": lambda reg: put16(reg, 12, 8),
    "desc[3].inflight": lambda reg: reg.__setitem__(16 + 16 * 3, 2),
    "desc[5].next": lambda reg: put16(reg, 16 + 16 * 5 + 6, 9),
    "used_idx": lambda reg: put16(reg, 14, 0xFFF0),  # far behind the used ring's idx
    "desc[4].counter 0 is also desc[0]'s": lambda reg: struct.pack_into("<Q", reg, 16 + 16 * 4 + 8, 0),
    "inflight entries": lambda reg: [reg.__setitem__(16 + 16 * i, 1) or struct.pack_into("<Q", reg, 24 + 16 * i,
                                                                                        10 + i) for i in (1, 3, 5)],
}
PACKED_SPOILS = {
    "version": lambda reg: put16(reg, 8, 0x100),
    "desc_num": lambda reg: put16(reg, 10, 16),
    "free_head": lambda reg: put16(reg, 12, 9),
    "old_free_head": lambda reg: put16(reg, 14, 9),
    "used_idx": lambda reg: put16(reg, 16, 8),
    "old_used_idx": lambda reg: put16(reg, 18, 8),
    "used_wrap_counter": lambda reg: reg.__setitem__(20, 2),
    "old_used_wrap_counter": lambda reg: reg.__setitem__(21, 7),
    "desc[6].inflight": lambda reg: reg.__setitem__(32 + 32 * 6, 3),
    "desc[7].next": lambda reg: put16(reg, 32 + 32 * 7 + 2, 10),
    "free list": lambda reg: put16(reg, 32 + 32 * 7 + 2, 6),  # 2 -> 3 -> 6 -> 7 -> 6: a loop
    "desc[0].num": lambda reg: put16(reg, 32 + 6, 0),
    "desc[4].last": lambda reg: put16(reg, 32 + 32 * 4 + 4, 4),
    "desc[5].id": lambda reg: put16(reg, 32 + 32 * 5 + 16, 8),
    # chain 0 (entries 0-1) takes the id of the chain at entries 4-5:
    "desc[5].id 2 is also desc[0]'s chain's": lambda reg: put16(reg, 32 + 32 * 1 + 16, 2),
    "desc[0].flags": lambda reg: put16(reg, 32 + 18, 0x80),  # no NEXT on a chain of two
    "desc[4].counter 0 is also desc[0]'s": lambda reg: struct.pack_into("<Q", reg, 32 + 32 * 4 + 8, 0),
    "desc[6] entry is neither on the free list": lambda reg: put16(reg, 32 + 32 * 3 + 2, 8),  # the list ends early
}


@pytest.mark.parametrize("packed, field", [(False, f) for f in SPLIT_SPOILS] + [(True, f) for f in PACKED_SPOILS])
def test_a_hostile_record_is_refused_naming_the_field_and_changes_nothing(twin, packed, field):
    r = a_record(twin, packed)
    good = bytes(r.region)
    (SPLIT_SPOILS if not packed else PACKED_SPOILS)[field](r.region)
    spoiled = bytes(r.region)
    old = r.dev
    r.p.dev = fresh = type(old)(r.p.mem, r.p.layout, old.features)
    fresh.restore(QueueState(0, None, 1) if packed else QueueState(r.used_ring_idx()))
    state = fresh.state
    with pytest.raises(InflightError) as info:
        fresh.attach_inflight(r.region)
    assert info.value.reason == "inflight-record" and isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("inflight record: ") and field in message and "\n" not in message
    assert bytes(r.region) == spoiled and fresh.state == state and not fresh.broken
    assert fresh.inflight_pending == 0
    r.region[:] = good  # the queue is as it was: the good record still attaches
    assert fresh.attach_inflight(r.region) == 2


def test_a_record_of_another_kind_or_size_is_refused(twin):
    r = a_record(twin, packed=False)
    other = make_pair(twin, size=4)
    with pytest.raises(InflightError, match="desc_num 8 is not the queue size 4"):
        other.dev.attach_inflight(r.region[:inflight_region_size(4, False)])


def test_a_resubmitted_chain_that_fails_a_check_breaks_the_queue(twin):
    r = Rig(twin, packed=False)
    r.add(1)
    chain = r.dev.pop()
    RING_DESC.pack_into(r.p.buf, r.p.layout.desc - BASE + 16 * chain.head, DATA, 0, 1, chain.head + 1)
    assert r.restart() == 1
    with pytest.raises(MalformedChain, match="zero-length"):
        r.dev.pop()
    assert r.dev.broken


def test_a_packed_copy_that_fails_a_check_breaks_the_queue(twin):
    r = Rig(twin, packed=True)
    r.add(1)
    r.dev.pop()
    struct.pack_into("<Q", r.region, 32 + 24, 1 << 60)  # desc[0].addr: outside guest memory
    assert r.restart() == 1
    with pytest.raises(MalformedChain, match="buffer-outside-memory"):
        r.dev.pop()
    assert r.dev.broken


# -- attaching ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_attach_refuses_what_cannot_hold_a_record(twin, packed):
    p = make_pair(twin, size=8, packed=packed)
    need = inflight_region_size(8, packed)
    with pytest.raises(ValueError, match=f"inflight region of {need - 1} bytes is smaller than the {need} bytes"):
        p.dev.attach_inflight(bytearray(need - 1))
    with pytest.raises(TypeError, match="writable"):
        p.dev.attach_inflight(bytes(need))
    with pytest.raises(ValueError, match="8-byte aligned"):
        p.dev.attach_inflight(memoryview(bytearray(need + 8))[1:])
    p.drv.add([(DATA, 8)])
    p.drv.kick_needed()
    p.dev.pop()
    with pytest.raises(ValueError, match="holds no chains; this one holds 1"):
        p.dev.attach_inflight(bytearray(need))


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_detach_and_reset_stop_the_record(twin, packed):
    r = Rig(twin, packed)
    r.add(1)
    r.dev.push(r.dev.pop().head)
    r.dev.detach_inflight()
    kept = bytes(r.region)
    r.add(1)
    r.dev.push(r.dev.pop().head)
    assert bytes(r.region) == kept
    assert r.dev.attach_inflight(r.region) == 0  # the record says nothing is in flight
    r.dev.reset()
    r.dev.restore(QueueState(0, None, 1) if packed else QueueState(r.used_ring_idx()))
    kept = bytes(r.region)
    r.add(1)
    r.dev.pop()
    assert bytes(r.region) == kept and r.dev.inflight_pending == 0


def test_packed_layout_is_what_the_region_size_assumes():
    assert PackedLayout.contiguous(8, 0).size == 8 and PACKED_HEADER.size == 29 and PACKED_ENTRY.size == 32
    assert SPLIT_HEADER.size == 16 and SPLIT_ENTRY.size == 16


def test_the_region_is_held_while_attached(twin):
    p = make_pair(twin, size=8)
    region = bytearray(inflight_region_size(8, False))
    p.dev.attach_inflight(region)
    with pytest.raises(BufferError):
        region.extend(b"x")  # the queue writes into it: it cannot move
    p.dev.detach_inflight()
    region.extend(b"x")


def test_a_driver_reusing_slots_the_device_holds_breaks_the_packed_queue(twin):
    """Slots in flight would outgrow the record's free list: the driver broke PACKED / The Virtqueue Descriptor
    Table ("A driver MUST NOT change a descriptor unless it observes the VIRTQ_DESC_F_USED bit ...")."""
    from vring.testing import packed_avail_flags

    r = Rig(twin, packed=True, size=4)
    r.add(2)  # two chains of two slots: the whole ring
    r.dev.pop_many(2)
    r.p.write_packed_desc(0, DATA, 16, 2, packed_avail_flags(False))  # slot 0 again, next lap, a fresh id
    with pytest.raises(MalformedChain, match=r"slots-in-flight.*takes 1 slots but only 0 are not held"):
        r.dev.pop()
    assert r.dev.broken
