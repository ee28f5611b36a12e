"""Bad input is normal input: every malformed ring gets a named error and latches only that queue."""

from __future__ import annotations

import pytest

from vring import Feature, MalformedChain, MalformedUsed, QueueBroken

from vring.testing import BASE, DATA, INDIRECT, MEM_SIZE, NEXT, TABLES, WRITE, make_pair

IND = Feature.INDIRECT_DESC
END = BASE + MEM_SIZE  # first guest-physical address past guest memory


def expect_chain_error(p, reason):
    with pytest.raises(MalformedChain) as info:
        p.dev.pop()
    assert info.value.reason == reason
    assert reason in str(info.value)
    assert p.dev.broken
    # Latched: every later call says the queue is broken, naming the original error, until reset().
    for call in (p.dev.pop, lambda: p.dev.pop_many(4), lambda: p.dev.push(0, 0), p.dev.notify_needed,
                 p.dev.enable_notifications, p.dev.disable_notifications):
        with pytest.raises(QueueBroken, match=reason):
            call()
    p.dev.reset()
    assert not p.dev.broken
    return info.value


def test_avail_index_jump(twin):
    p = make_pair(twin)
    p.set_avail_idx(17)
    err = expect_chain_error(p, "avail-index-jump")
    assert "avail index 17" in str(err)


def test_head_out_of_range(twin):
    p = make_pair(twin)
    p.make_available(16)
    expect_chain_error(p, "head-out-of-range")


def test_head_made_available_twice(twin):
    p = make_pair(twin)
    p.write_desc(3, DATA, 8)
    p.make_available(3, 3)
    assert p.dev.pop().head == 3
    expect_chain_error(p, "head-in-flight")


def test_next_out_of_range(twin):
    p = make_pair(twin)
    p.write_desc(0, DATA, 8, NEXT, 16)
    p.make_available(0)
    expect_chain_error(p, "next-out-of-range")


@pytest.mark.parametrize("shape", ["self", "cycle", "long-indirect-cycle"])
def test_loops(twin, shape):
    p = make_pair(twin, features=IND)
    if shape == "self":
        p.write_desc(5, DATA, 8, NEXT, 5)
    elif shape == "cycle":
        for i in range(16):
            p.write_desc(i, DATA, 8, NEXT, (i + 1) % 16)
    else:
        p.write_desc(5, TABLES, 16 * 4, INDIRECT)
        for i in range(4):
            p.write_desc(i, DATA, 8, NEXT, (i + 1) % 4, table=TABLES)
    p.make_available(5)
    expect_chain_error(p, "chain-loop")


def test_longest_legal_chain_is_the_queue_size(twin):
    p = make_pair(twin)
    for i in range(16):
        p.write_desc(i, DATA, 8, NEXT if i < 15 else 0, i + 1 if i < 15 else 0)
    p.make_available(0)
    assert len(p.dev.pop().readable) == 16


def test_indirect_not_negotiated(twin):
    p = make_pair(twin)
    p.write_desc(0, TABLES, 16, INDIRECT)
    p.write_desc(0, DATA, 8, table=TABLES)
    p.make_available(0)
    expect_chain_error(p, "indirect-not-negotiated")


def test_nested_indirect(twin):
    p = make_pair(twin, features=IND)
    p.write_desc(0, TABLES, 16, INDIRECT)
    p.write_desc(0, TABLES + 0x1000, 16, INDIRECT, table=TABLES)
    p.make_available(0)
    expect_chain_error(p, "nested-indirect")


def test_indirect_with_next(twin):
    p = make_pair(twin, features=IND)
    p.write_desc(0, TABLES, 16, INDIRECT | NEXT, 1)
    p.make_available(0)
    expect_chain_error(p, "indirect-with-next")


@pytest.mark.parametrize("length,reason", [(0, "indirect-len-zero"), (24, "indirect-len-unaligned"),
                                           (16 * 33, "indirect-too-large")])
def test_bad_indirect_table_length(twin, length, reason):
    p = make_pair(twin, features=IND, max_indirect=32)
    p.write_desc(0, TABLES, length, INDIRECT)
    p.make_available(0)
    expect_chain_error(p, reason)


@pytest.mark.parametrize("addr", [END - 8, END, (1 << 64) - 16])
def test_indirect_table_outside_memory(twin, addr):
    p = make_pair(twin, features=IND)
    p.write_desc(0, addr, 32, INDIRECT)
    p.make_available(0)
    expect_chain_error(p, "indirect-outside-memory")


def test_indirect_after_direct_descriptors_is_followed(twin):
    """The spec only forbids INDIRECT with NEXT: a chain may end in an indirect table (Linux vhost follows it)."""
    p = make_pair(twin, features=IND)
    p.write_desc(0, DATA, 8, NEXT, 1)
    p.write_desc(1, TABLES, 32, INDIRECT)
    p.write_desc(0, DATA + 8, 8, NEXT, 1, table=TABLES)
    p.write_desc(1, DATA + 16, 4, WRITE, table=TABLES)
    p.make_available(0)
    chain = p.dev.pop()
    assert chain.readable_len == 16 and chain.writable_len == 4 and chain.indirect


def test_readable_after_writable(twin):
    p = make_pair(twin)
    p.write_desc(0, DATA, 8, WRITE | NEXT, 1)
    p.write_desc(1, DATA, 8, 0)
    p.make_available(0)
    expect_chain_error(p, "readable-after-writable")


def test_zero_length_buffer(twin):
    p = make_pair(twin)
    p.write_desc(0, DATA, 8, NEXT, 1)
    p.write_desc(1, DATA, 0, WRITE)
    p.make_available(0)
    expect_chain_error(p, "zero-length")


def test_chain_longer_than_4_gib(twin):
    import mmap

    p = make_pair(twin)
    big = mmap.mmap(-1, 1 << 31)  # 2 GiB of untouched anonymous memory: address space, not RAM
    p.mem.add_region(1 << 40, big)
    p.write_desc(0, 1 << 40, 1 << 31, NEXT, 1)
    p.write_desc(1, 1 << 40, 1 << 31, WRITE)  # 2**32 bytes in all: one more than a u32 length can say
    p.make_available(0)
    expect_chain_error(p, "chain-too-large")


@pytest.mark.parametrize("addr,length", [(END - 4, 8), (END, 1), (BASE - 1, 2), (0, 8), ((1 << 64) - 4, 8)])
def test_buffer_outside_memory(twin, addr, length):
    p = make_pair(twin)
    p.write_desc(0, addr, length, WRITE)
    p.make_available(0)
    err = expect_chain_error(p, "buffer-outside-memory")
    assert f"{addr:#x}" in str(err)


def test_indirect_descriptor_buffer_outside_memory(twin):
    p = make_pair(twin, features=IND)
    p.write_desc(0, TABLES, 16, INDIRECT)
    p.write_desc(0, END + 0x1000, 8, table=TABLES)
    p.make_available(0)
    expect_chain_error(p, "buffer-outside-memory")


def test_broken_queue_leaves_other_queues_alone(twin):
    bad = make_pair(twin)
    good = make_pair(twin)
    bad.make_available(99)
    with pytest.raises(MalformedChain):
        bad.dev.pop()
    good.drv.add([(DATA, 4)])
    good.drv.kick_needed()
    assert good.dev.pop() is not None


def test_chain_error_leaves_ring_indices_untouched(twin):
    p = make_pair(twin)
    p.write_desc(0, DATA, 8)
    p.write_desc(1, END, 8)
    p.make_available(0, 1)
    assert p.dev.pop().head == 0
    with pytest.raises(MalformedChain):
        p.dev.pop()
    assert p.dev.broken and p.dev.avail_pending() == 0


# -- the driver does not trust the device ---------------------------------------------------------------------
def expect_used_error(p, reason, call=None):
    with pytest.raises(MalformedUsed) as info:
        (call or p.drv.pop_used)()
    assert info.value.reason == reason and reason in str(info.value)
    assert p.drv.broken
    with pytest.raises(QueueBroken, match=reason):
        p.drv.add([(DATA, 1)])
    with pytest.raises(QueueBroken):
        p.drv.get_used()
    p.drv.reset()
    assert not p.drv.broken
    return info.value


def started(twin, n=2):
    p = make_pair(twin)
    for _ in range(n):
        p.drv.add([(DATA, 1)], [(DATA + 8, 8)])
    p.drv.kick_needed()
    return p


def test_used_id_out_of_range(twin):
    p = started(twin)
    p.write_used(0, 16, 0)
    p.set_used_idx(1)
    expect_used_error(p, "used-id-out-of-range")


def test_used_id_not_in_flight(twin):
    p = started(twin)
    p.write_used(0, 1, 0)  # 1 is not a head: the first chain took descriptors 0 and 1
    p.set_used_idx(1)
    expect_used_error(p, "used-id-not-in-flight")


def test_used_id_returned_twice(twin):
    p = started(twin)
    p.write_used(0, 0, 0)
    p.write_used(1, 0, 0)
    p.set_used_idx(2)
    expect_used_error(p, "used-id-not-in-flight")
    assert p.drv.last_used_idx == 0  # reset() started over


def test_used_len_too_large(twin):
    p = started(twin)
    p.write_used(0, 0, 9)
    p.set_used_idx(1)
    err = expect_used_error(p, "used-len-too-large", p.drv.get_used)
    assert "9 bytes" in str(err)


def test_used_index_past_what_was_published(twin):
    p = started(twin)
    p.drv.add([(DATA, 1)])  # added, not yet published
    p.write_used(0, 0, 0)
    p.set_used_idx(3)
    expect_used_error(p, "used-index-jump")


def test_used_error_in_batch_reap_keeps_what_came_before(twin):
    import numpy as np

    p = started(twin)
    p.write_used(0, 0, 8)
    p.write_used(1, 7, 0)
    p.set_used_idx(2)
    heads = np.zeros(4, np.uint16)
    lens = np.zeros(4, np.uint32)
    with pytest.raises(MalformedUsed, match="used-id-not-in-flight"):
        p.drv.pop_used_into(heads, lens)
    assert heads[0] == 0 and lens[0] == 8
