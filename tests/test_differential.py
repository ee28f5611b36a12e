"""The two twins, driven by the same random operations, must leave every byte of guest memory identical and
return the same values and raise the same errors — including when the other side writes garbage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vring import Feature, PackedLayout, QueueState, inflight_region_size

from conftest import twin_module
from vring.testing import AVAIL, BASE, DATA, MEM_SIZE, USED, WRITE, make_pair

SEG = st.tuples(st.integers(0, 0x7000), st.integers(1, 0x900))  # (offset into the data area, length)
# Values a hostile or careless caller passes: outside guest memory, outside 64 bits, lengths no descriptor holds.
ADDR = st.one_of(st.integers(0, 0x7000).map(lambda o: DATA + o),
                 st.sampled_from([-1, -(1 << 63) - 1, 0, (1 << 63), (1 << 64) - 1, 1 << 64, 1 << 70]))
LENGTH = st.one_of(st.integers(1, 0x900), st.sampled_from([0, -1, 1 << 32, (1 << 63) - 1, 1 << 63, -(1 << 63) - 1]))
WILD_INT = st.one_of(st.integers(-2, 20), st.sampled_from([1 << 32, (1 << 63) - 1, 1 << 63, -(1 << 63) - 1]))
OPS = st.one_of(
    st.tuples(st.just("add"), st.lists(SEG, max_size=3), st.lists(SEG, max_size=3), st.booleans()),
    st.tuples(st.just("add_many"), st.integers(1, 8), st.integers(1, 3), st.integers(0, 7)),
    st.tuples(st.just("kick")),
    st.tuples(st.just("pop"), st.integers(1, 8)),
    st.tuples(st.just("push"), st.integers(0, 64), st.floats(0, 1)),
    st.tuples(st.just("push_many"), st.integers(1, 8)),
    st.tuples(st.just("notify")),
    st.tuples(st.just("reap"), st.sampled_from(["pop_used", "get_used", "into"])),
    st.tuples(st.just("interrupts"), st.booleans()),
    st.tuples(st.just("notifications"), st.booleans()),
    st.tuples(st.just("scribble"), st.sampled_from(["desc", "avail", "used", "table"]), st.integers(0, 4095),
              st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("reset"), st.sampled_from(["driver", "device"])),
    st.tuples(st.just("bulk"), st.integers(1, 3000)),
    st.tuples(st.just("add_batch"), st.integers(0, 6), st.lists(SEG, min_size=1, max_size=3), st.integers(0, 7)),
    st.tuples(st.just("pop_batch"), st.integers(1, 6), st.integers(1, 12)),
    st.tuples(st.just("push_batch"), st.integers(0, 6), st.floats(0, 1)),
    st.tuples(st.just("reap_batch"), st.integers(1, 6)),
    st.tuples(st.just("add_wild"), st.lists(st.tuples(ADDR, LENGTH), max_size=3),
              st.lists(st.tuples(ADDR, LENGTH), max_size=3)),
    st.tuples(st.just("add_many_wild"), st.lists(st.tuples(ADDR, LENGTH, st.booleans()), max_size=6),
              st.one_of(st.integers(-1, 3), st.lists(WILD_INT, max_size=4))),
    st.tuples(st.just("push_many_wild"), st.lists(st.tuples(WILD_INT, WILD_INT), max_size=4)),
    st.tuples(st.just("bad_used"), st.integers(0, 3), st.sampled_from(["id", "len"])),
    # The device dies and a new one takes the ring over from its inflight record (after a scribble on it, maybe).
    st.tuples(st.just("crash"), st.one_of(st.none(), st.tuples(st.integers(0, 1100), st.binary(min_size=1,
                                                                                               max_size=4)))),
)
FEATURES = st.sampled_from([0, Feature.EVENT_IDX, Feature.INDIRECT_DESC, Feature.EVENT_IDX | Feature.INDIRECT_DESC])


def chain_summary(chain):
    return (chain.head, chain.readable_len, chain.writable_len, chain.indirect, chain.segments, chain.read())


class Side:
    """One twin's driver and device, plus the chains its device holds."""

    def __init__(self, name, size, features, packed=False):
        self.p = make_pair(twin_module(name), size=size, features=features, packed=packed)
        self.held = []  # (head, writable_len) the device has popped and not pushed
        self.region = bytearray(inflight_region_size(size, packed))  # the device keeps its inflight record here
        assert self.p.dev.attach_inflight(self.region) == 0

    def run(self, op):
        """Apply one operation; returns its observable result or ("error", type, message)."""
        try:
            return self._run(op)
        except Exception as exc:  # compared across twins: the same type and wording, or the test fails
            return ("error", type(exc).__name__, str(exc))

    def _run(self, op):
        p, kind = self.p, op[0]
        if kind == "add":
            _, outs, ins, tokened = op
            token = ("t", len(outs), len(ins)) if tokened else None
            return p.drv.add([(DATA + o, n) for o, n in outs], [(DATA + o, n) for o, n in ins], token)
        if kind == "add_many":
            _, chains, segs, mask = op
            n = chains * segs
            addrs = DATA + np.arange(n, dtype=np.uint64) * 64
            writable = np.array([(mask >> (i % segs)) & 1 for i in range(n)], bool)
            heads = np.zeros(chains, np.uint16)
            done = p.drv.add_many(addrs, np.full(n, 48, np.int64), writable, segs, heads)
            return done, heads[:done].tolist()
        if kind == "kick":
            return p.drv.kick_needed()
        if kind == "pop":
            chains = p.dev.pop_many(op[1])
            self.held += [(c.head, c.writable_len) for c in chains]
            return [chain_summary(c) for c in chains]
        if kind == "push":
            if not self.held:
                return p.dev.push(op[1], 0)  # not held: a ValueError on both twins
            head, wlen = self.held.pop(op[1] % len(self.held))
            return p.dev.push(head, int(wlen * op[2]))
        if kind == "push_many":
            batch, self.held = self.held[: op[1]], self.held[op[1]:]
            return p.dev.push_many([h for h, _ in batch], [w for _, w in batch])
        if kind == "notify":
            return p.dev.notify_needed()
        if kind == "reap":
            if op[1] == "pop_used":
                return p.drv.pop_used()
            if op[1] == "get_used":
                return p.drv.get_used()
            heads, lens = np.zeros(5, np.uint16), np.zeros(5, np.uint32)
            try:
                n = p.drv.pop_used_into(heads, lens)
            except Exception as exc:  # stopped partway: the entries before the bad one are in the arrays
                return ("error", type(exc).__name__, str(exc), heads.tolist(), lens.tolist())
            return n, heads.tolist(), lens.tolist()
        if kind == "interrupts":
            return p.drv.enable_interrupts() if op[1] else p.drv.disable_interrupts()
        if kind == "notifications":
            return p.dev.enable_notifications() if op[1] else p.dev.disable_notifications()
        if kind == "scribble":
            _, area, offset, data = op
            base, length = {"desc": p.layout.areas()[0], "avail": p.layout.areas()[1],
                            "used": p.layout.areas()[2], "table": (DATA - 0x60000, 0x1000)}[area]
            offset %= max(1, length - len(data))
            p.mem.write(base + offset, data)
            return None
        if kind == "reset":
            if op[1] == "driver":
                p.drv.reset()
            else:
                p.dev.reset()
            self.held = []
            return None
        if kind == "bulk":
            return self.bulk(op[1])
        if kind == "crash":
            return self.crash(op[1])
        if kind == "add_batch":
            _, count, segs, mask = op
            batch = p.twin.Batch(6, 18)
            batch.set_chains([(DATA + o, n, bool(mask >> i & 1)) for i, (o, n) in enumerate(segs)], 6)
            try:
                return p.drv.add_batch(batch, count), batch.heads[:batch.count].tolist()
            finally:
                self.last_count = batch.count
        if kind == "pop_batch":
            batch = self.popped = p.twin.Batch(op[1], op[2])
            try:
                n = p.dev.pop_batch(batch)
            finally:
                self.held += [(int(h), int(w)) for h, w in zip(batch.heads[:batch.count], batch.writable_len)]
            return n, [batch.segments(k) for k in range(n)], batch.readable_len[:n].tolist()
        if kind == "push_batch":
            batch = getattr(self, "popped", None)
            if batch is None:
                return None
            n = min(op[1], batch.count)
            batch.lens[:n] = [int(w * op[2]) for w in batch.writable_len[:n]]
            p.dev.push_batch(batch, n)
            pushed = set(batch.heads[:n].tolist())
            self.held = [(h, w) for h, w in self.held if h not in pushed]
            return n
        if kind == "reap_batch":
            batch = p.twin.Batch(op[1])
            try:
                n = p.drv.reap_batch(batch)
            except Exception as exc:  # stopped partway: what was reaped before the bad entry is reported
                n = batch.count
                return ("error", type(exc).__name__, str(exc), batch.heads[:n].tolist(), batch.lens[:n].tolist())
            return n, batch.heads[:n].tolist(), batch.lens[:n].tolist()
        if kind == "add_wild":
            return p.drv.add(op[1], op[2])
        if kind == "add_many_wild":
            _, segs, chain_segs = op
            heads = np.zeros(8, np.uint16)
            done = p.drv.add_many([a for a, _, _ in segs], [n for _, n, _ in segs], [w for _, _, w in segs],
                                  chain_segs, heads)
            return done, heads[:done].tolist()
        if kind == "push_many_wild":
            pairs = op[1] + [pair for pair in self.held[:1]]
            p.dev.push_many([h for h, _ in pairs], [w for _, w in pairs])
            self.held = [pair for pair in self.held if pair not in pairs]
            return None
        if kind == "bad_used":
            return self.bad_used(op[1], op[2])
        if kind == "drain":
            for head, wlen in self.held:
                p.dev.push(head, wlen)
            self.held = []
            p.drv.kick_needed()
            for chain in p.dev.pop_many(p.layout.size):
                p.dev.push(chain.head, 0)
            return p.drv.pop_used()
        raise AssertionError(op)

    def crash(self, scribble):
        """A new device takes the ring over as a restarted vhost-user back-end does: at the base the front-end
        sends (split: the used ring's idx; packed: the initial state), then from the inflight record."""
        p = self.p
        if scribble is not None:
            offset, data = scribble
            offset %= max(1, len(self.region) - len(data))
            self.region[offset:offset + len(data)] = data
        p.dev = type(p.dev)(p.mem, p.layout, p.dev.features)
        self.held = []  # the new device holds nothing: the chains given back come with its pops
        if isinstance(p.layout, PackedLayout):
            p.dev.restore(QueueState(0, None, 1))
        else:
            p.dev.restore(QueueState(int.from_bytes(p.mem.read(p.layout.used + 2, 2), "little")))  # used->idx
        return p.dev.attach_inflight(self.region), p.dev.state, p.dev.inflight_pending

    def bad_used(self, behind, field):
        """Spoil a used entry the device wrote ``behind`` entries before its latest one (an id nobody holds, or a
        length past the chain's), so that a reap of several stops partway."""
        p = self.p
        size = p.layout.size
        if p.packed:
            slot = self.last_used_slot(behind)
            if slot is None:
                return None
            addr, length, ident, flags = p.read_packed_desc(slot)
            if field == "id":
                p.write_packed_desc(slot, addr, length, size + 1, flags)
            else:
                p.write_packed_desc(slot, addr, 0xFFFFFFFF, ident, flags | WRITE)
            return slot
        position = (p.dev.state.used_idx - 1 - behind) & 0xFFFF
        ident, length = p.read_used(position % size)
        if field == "id":
            p.write_used(position % size, size + 1, length)
        else:
            p.write_used(position % size, ident, 0xFFFFFFFF)
        return position

    def last_used_slot(self, behind):
        """The ring slot of a used descriptor the device wrote ``behind`` before its latest one, if it wrote so
        many since the driver last reaped (the packed ring keeps no used index to count back from)."""
        p = self.p
        slots = []
        pos, wrap = p.drv.last_used_idx, getattr(p.drv, "used_wrap")
        for _ in range(p.layout.size):
            flags = p.read_packed_desc(pos)[3]
            if bool(flags & AVAIL) != bool(wrap) or bool(flags & USED) != bool(wrap):
                break
            slots.append(pos)
            pos += 1  # the device may skip slots of longer chains; a slot it did not write ends the walk
            if pos == p.layout.size:
                pos, wrap = 0, wrap ^ 1
        return slots[-1 - behind] if behind < len(slots) else None

    def bulk(self, n):
        """n request cycles through the batch APIs, chains of 1 and 3 buffers alternating."""
        p = self.p
        size = p.layout.size
        one = (np.array([DATA], np.uint64), np.array([16], np.int64), np.array([False]))
        three = (DATA + np.array([0, 0x1000, 0x2000], np.uint64), np.array([16, 512, 1], np.int64),
                 np.array([False, True, True]))
        heads = np.zeros(size, np.uint16)
        lens = np.zeros(size, np.uint32)
        done = 0
        total_written = 0
        while done < n:
            a, l, w = one if done % 2 else three
            k = min(n - done, size)
            added = p.drv.add_many(np.tile(a, k), np.tile(l, k), np.tile(w, k), len(a))
            p.drv.kick_needed()
            chains = p.dev.pop_many(size)
            p.dev.push_many([c.head for c in chains], [c.writable_len for c in chains])
            reaped = p.drv.pop_used_into(heads, lens)
            total_written += int(lens[:reaped].sum())
            if added == 0 and reaped == 0 and not chains:
                break  # the ring holds chains added before the bulk step: nothing more fits
            done += added
        return done, total_written


def compare(size, features, ops, sides=None, packed=False):
    c, py = sides or (Side("cython", size, features, packed), Side("python", size, features, packed))
    results = []
    for i, op in enumerate(ops):
        rc, rp = c.run(op), py.run(op)
        assert rc == rp, f"operation {i} {op!r}: cython {rc!r} != python {rp!r}"
        assert c.p.buf == py.p.buf, f"guest memory differs after operation {i} {op!r}"
        assert c.region == py.region, f"the inflight record differs after operation {i} {op!r}"
        assert c.p.dev.state == py.p.dev.state and c.p.dev.broken == py.p.dev.broken
        assert c.p.drv.num_free == py.p.drv.num_free and c.p.drv.broken == py.p.drv.broken
        results.append(rc)
    return c, py, results


@pytest.mark.c_extension  # the Cython twin against the Python one
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 4, 8, 16]), FEATURES, st.lists(OPS, max_size=80))
def test_twins_agree_byte_for_byte(size, features, ops):
    compare(size, features, ops)


@pytest.mark.c_extension  # the Cython twin against the Python one
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 17), FEATURES | st.just(Feature.EVENT_IDX | Feature.IN_ORDER), st.lists(OPS, max_size=80))
def test_packed_twins_agree_byte_for_byte(size, features, ops):
    compare(size, features, ops, packed=True)


@pytest.mark.c_extension  # the Cython twin against the Python one
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([8, 256]), FEATURES, st.lists(OPS, max_size=20), st.lists(OPS, max_size=20))
def test_twins_agree_across_16_bit_index_wraparound(size, features, before, after):
    ops = [op for op in before if op[0] not in ("scribble", "reset")] + [("drain",)]
    c, py, _ = compare(size, features, ops)
    start = c.p.dev.state.last_avail_idx
    c, py, (bulk,) = compare(size, features, [("bulk", 66000)], (c, py))
    assert bulk[0] == 66000
    assert c.p.dev.state.last_avail_idx == (start + 66000) & 0xFFFF  # once round the 16-bit space and on
    compare(size, features, after, (c, py))


def test_memory_layout_assumptions():
    assert DATA + 0x7000 + 0x900 <= BASE + MEM_SIZE
