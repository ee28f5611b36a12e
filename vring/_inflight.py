"""vhost-user's inflight record (vhost-user.rst, "Inflight I/O tracking"), the part both twins share: the layout of
one queue's region, its initialisation, and the reconnect procedure (check the record a device left when it died,
repair it, and say which chains to resubmit). Keeping the record on every pop and push is each twin's own work, in
its commit / put_used / publish functions.

A queue's region (little-endian, as QEMU, libvhost-user and DPDK lay it out):

- split, ``QueueRegionSplit``: ``u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx``, then
  one ``DescStateSplit {u8 inflight; u8 padding[5]; u16 next; u64 counter}`` per descriptor;
- packed, ``QueueRegionPacked``: ``u64 features; u16 version; u16 desc_num; u16 free_head; u16 old_free_head;
  u16 used_idx; u16 old_used_idx; u8 used_wrap_counter; u8 old_used_wrap_counter; u8 padding[7]``, then from byte
  32 one ``DescStatePacked {u8 inflight; u8 padding; u16 next; u16 last; u16 num; u64 counter; u16 id;
  u16 flags; u32 len; u64 addr}`` per descriptor (the last four: a copy of the ring descriptor it records).

Every check of a record runs before the first write, so a record refused (InflightError) is left as it was.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any, Callable

from ._errors import caller_error, inflight_error
from ._features import DESC_F_NEXT, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED
from ._layout import inflight_region_size

VERSION = 1
COUNTER_MASK = (1 << 64) - 1
SPLIT_HEADER = struct.Struct("<QHHHH")  # features, version, desc_num, last_batch_head, used_idx
SPLIT_ENTRY = struct.Struct("<B5xHQ")  # inflight, padding[5], next, counter
SPLIT_ENTRIES = SPLIT_HEADER.size  # desc[] starts at byte 16
PACKED_HEADER = struct.Struct("<QHHHHHHBB")  # features, version, desc_num, free_head, old_free_head, used_idx,
#                                              old_used_idx, used_wrap_counter, old_used_wrap_counter (+ padding[7])
PACKED_ENTRY = struct.Struct("<BxHHHQHHIQ")  # inflight, padding, next, last, num, counter, id, flags, len, addr
PACKED_ENTRIES = 32  # desc[] starts at byte 32: the 29-byte header padded to the entries' 8-byte alignment
# Byte offsets of the fields the device writes on every pop and push (the Cython twin has them as struct fields).
SPLIT_LAST_BATCH_HEAD, SPLIT_USED_IDX = 12, 14
PACKED_FREE_HEAD, PACKED_OLD_FREE_HEAD, PACKED_USED_IDX, PACKED_OLD_USED_IDX = 12, 14, 16, 18
PACKED_USED_WRAP, PACKED_OLD_USED_WRAP = 20, 21


def region_view(region: Any, size: int, packed: bool) -> memoryview:
    """The queue's bytes of ``region`` as a writable flat view, refusing a region that cannot hold the record."""
    view = memoryview(region)
    if view.readonly:
        raise caller_error("memory-readonly")
    if not view.c_contiguous:
        raise caller_error("memory-strided")
    view = view.cast("B") if (view.format != "B" or view.ndim != 1) else view
    needed = inflight_region_size(size, packed)
    if view.nbytes < needed:
        raise caller_error("inflight-region-size", given=view.nbytes, needed=needed,
                           kind="packed" if packed else "split", size=size)
    view = view[:needed]
    if ctypes.addressof(ctypes.c_char.from_buffer(view)) & 7:  # the Cython twin stores its u64 fields whole
        raise caller_error("inflight-region-alignment")
    return view


def record_version(view: memoryview) -> int:
    """The record's version: 0 for a fresh (zeroed) buffer, which the device initialises."""
    return int.from_bytes(view[8:10], "little")


def _check_header(version: int, desc_num: int, size: int) -> None:
    if version != VERSION:
        raise inflight_error("version", version, f"is not {VERSION}, the only version vhost-user defines")
    if desc_num != size:
        raise inflight_error("desc_num", desc_num, f"is not the queue size {size}: the record is another queue's")


def _check_counters(heads: list[int], counters: list[int]) -> None:
    owner: dict[int, int] = {}
    for head in heads:
        if counters[head] in owner:
            raise inflight_error(f"desc[{head}].counter", counters[head],
                                 f"is also desc[{owner[counters[head]]}]'s: the order of the chains is lost")
        owner[counters[head]] = head


# -- split -------------------------------------------------------------------------------------------------------
@dataclass
class SplitRecovery:
    """Where a split queue resumes once its record is repaired, and the device's copy of the record's links."""

    used_idx: int  # the used ring's idx
    last_avail_idx: int  # used_idx + the chains in flight
    pending: list[int]  # the heads to resubmit, in the order they were fetched (counter order)
    counter: int  # the fetch order of the next chain popped
    links: list[int]  # desc[i].next
    last_batch_head: int


def init_split(view: memoryview, size: int, used_idx: int, last_avail_idx: int) -> SplitRecovery:
    """A fresh record: version 1, ``size`` entries, none in flight, at the queue's used index."""
    view[:] = bytes(len(view))
    SPLIT_HEADER.pack_into(view, 0, 0, VERSION, size, 0, used_idx)
    return SplitRecovery(used_idx, last_avail_idx, [], 0, [0] * size, 0)


def recover_split(view: memoryview, size: int, used_ring_idx: int, avail_idx: int) -> SplitRecovery:
    """vhost-user's reconnect procedure for a split ring: the chains of the last batch that the used ring's idx
    (``used_ring_idx``) shows returned are not in flight any more; the chains still in flight are resubmitted in
    the order they were fetched. Checks the record whole first (InflightError), then repairs it."""
    _, version, desc_num, last_batch_head, used_idx = SPLIT_HEADER.unpack_from(view)
    _check_header(version, desc_num, size)
    entries = [SPLIT_ENTRY.unpack_from(view, SPLIT_ENTRIES + SPLIT_ENTRY.size * i) for i in range(size)]
    flags = [e[0] for e in entries]
    links = [e[1] for e in entries]
    counters = [e[2] for e in entries]
    for i in range(size):
        if flags[i] > 1:
            raise inflight_error(f"desc[{i}].inflight", flags[i], "is neither 0 nor 1")
        if links[i] >= size:
            raise inflight_error(f"desc[{i}].next", links[i], f"is outside a queue of {size}")
    if last_batch_head >= size:
        raise inflight_error("last_batch_head", last_batch_head, f"is outside a queue of {size}")
    batch = (used_ring_idx - used_idx) & 0xFFFF
    if batch > size:
        raise inflight_error("used_idx", used_idx, f"is {batch} entries behind the used ring's idx {used_ring_idx}, "
                             f"more than the queue size {size}")
    returned: list[int] = []  # the last batch: desc[last_batch_head] and the next batch - 1 along the list
    head = last_batch_head
    for _ in range(batch):
        if head in returned:
            raise inflight_error("last_batch_head", last_batch_head,
                                 f"starts a list that comes back to desc[{head}] before its {batch} entries")
        returned.append(head)
        head = links[head]
    in_flight = [i for i in range(size) if flags[i] and i not in returned]
    _check_counters(in_flight, counters)
    made_available = (avail_idx - used_ring_idx) & 0xFFFF
    if len(in_flight) > made_available:
        raise inflight_error("inflight entries", len(in_flight), f"are more than the {made_available} chains the "
                             f"driver made available past the used ring's idx {used_ring_idx}")
    # The repair, in an order a second crash can repeat: the entries, then the index that says they are done.
    for head in returned:
        view[SPLIT_ENTRIES + SPLIT_ENTRY.size * head] = 0
    struct.pack_into("<H", view, SPLIT_USED_IDX, used_ring_idx)
    pending = sorted(in_flight, key=counters.__getitem__)
    counter = (max(counters[i] for i in in_flight) + 1) & COUNTER_MASK if in_flight else 0
    return SplitRecovery(used_ring_idx, (used_ring_idx + len(in_flight)) & 0xFFFF, pending, counter, links,
                         last_batch_head)


# -- packed ------------------------------------------------------------------------------------------------------
@dataclass
class PackedRecovery:
    """Where a packed queue resumes once its record is repaired, and the device's copy of the record's lists."""

    used_idx: int
    used_wrap: int
    last_avail_idx: int  # used_idx advanced by the ring slots of the chains in flight
    avail_wrap: int
    pending: list[int]  # buffer ids to resubmit, in the order they were fetched
    counter: int
    links: list[int]  # desc[i].next: the free list and each chain's entries
    free_head: int
    entry_of: dict[int, int]  # buffer id -> its chain's head entry
    last_of: dict[int, int]  # head entry -> the entry of the chain's last descriptor
    num: dict[int, int]  # buffer id -> ring slots of its chain
    entries: dict[int, list[tuple[int, int, int, int]]]  # buffer id -> its descriptors (addr, len, id, flags)


def init_packed(view: memoryview, size: int, used_idx: int, used_wrap: int, last_avail_idx: int,
                avail_wrap: int) -> PackedRecovery:
    """A fresh record: version 1, ``size`` entries all on the free list (desc[i].next = i + 1), at the queue's
    used slot and wrap counter."""
    view[:] = bytes(len(view))
    PACKED_HEADER.pack_into(view, 0, 0, VERSION, size, 0, 0, used_idx, used_idx, used_wrap, used_wrap)
    for i in range(size):
        struct.pack_into("<H", view, PACKED_ENTRIES + PACKED_ENTRY.size * i + 2, i + 1)
    return PackedRecovery(used_idx, used_wrap, last_avail_idx, avail_wrap, [], 0, list(range(1, size + 1)), 0, {},
                          {}, {}, {})


def _is_avail(flags: int, wrap: int) -> bool:
    return bool(flags & PACKED_DESC_F_AVAIL) == bool(wrap) and bool(flags & PACKED_DESC_F_USED) != bool(wrap)


def packed_repair_stores(commit: bool, free_head: int, used_idx: int, used_wrap: int) -> list[tuple[int, str, int]]:
    """The header stores of a packed record's repair, in the order it makes them: (offset, struct format, value)
    that make the old_* and the current fields ``free_head``, ``used_idx``, ``used_wrap`` (see recover_packed)."""
    old = [(PACKED_OLD_FREE_HEAD, "<H", free_head), (PACKED_OLD_USED_IDX, "<H", used_idx),
           (PACKED_OLD_USED_WRAP, "<B", used_wrap)]
    current = [(PACKED_USED_WRAP, "<B", used_wrap), (PACKED_USED_IDX, "<H", used_idx),
               (PACKED_FREE_HEAD, "<H", free_head)]
    return old + current if commit else current + old


def recover_packed(view: memoryview, size: int, ring_flags: Callable[[int], int]) -> PackedRecovery:
    """vhost-user's reconnect procedure for a packed ring: a push the crash interrupted is committed if its used
    descriptor (the ring entry at old_used_idx, whose flags ``ring_flags(slot)`` reads) was published or the push
    had begun to complete (old_free_head equal to free_head), else rolled back; entries on the free list are not
    in flight; the chains still in flight are resubmitted in the order they were fetched. Checks the record whole
    first (InflightError), then repairs it."""
    (_, version, desc_num, free_head, old_free_head, used_idx, old_used_idx, used_wrap,
     old_used_wrap) = PACKED_HEADER.unpack_from(view)
    _check_header(version, desc_num, size)
    for name, value, limit in (("free_head", free_head, size + 1), ("old_free_head", old_free_head, size + 1),
                               ("used_idx", used_idx, size), ("old_used_idx", old_used_idx, size),
                               ("used_wrap_counter", used_wrap, 2), ("old_used_wrap_counter", old_used_wrap, 2)):
        if value >= limit:
            raise inflight_error(name, value, f"is not below {limit}")
    entries = [PACKED_ENTRY.unpack_from(view, PACKED_ENTRIES + PACKED_ENTRY.size * i) for i in range(size)]
    links = [e[1] for e in entries]
    for i, (flag, nxt, *_rest) in enumerate(entries):
        if flag > 1:
            raise inflight_error(f"desc[{i}].inflight", flag, "is neither 0 nor 1")
        if nxt > size:
            raise inflight_error(f"desc[{i}].next", nxt, f"is past the end of the list ({size})")
    # Commit a push whose used descriptor was published. done() stores old_free_head first: equal to free_head, it
    # says done() started even if the crash left old_used_idx and old_used_wrap_counter apart (then the slot at
    # old_used_idx is not the published one). Until then they differ: used() first moves free_head to the pushed
    # chain's head, which was not on the free list; a pop moves old_free_head only once its chain is whole.
    commit = old_free_head == free_head or ((used_idx, used_wrap) != (old_used_idx, old_used_wrap)
                                            and not _is_avail(ring_flags(old_used_idx), old_used_wrap))
    if commit:
        old_free_head, old_used_idx, old_used_wrap = free_head, used_idx, used_wrap
    free_head, used_idx, used_wrap = old_free_head, old_used_idx, old_used_wrap  # what is still in progress: undo
    free: set[int] = set()
    entry = free_head
    while entry != size:
        if entry in free:
            raise inflight_error("free list", f"from {free_head}", f"comes back to desc[{entry}]")
        free.add(entry)
        entry = links[entry]
    heads = [i for i in range(size) if entries[i][0] and i not in free]
    owner: dict[int, int] = {}
    entry_of: dict[int, int] = {}
    last_of: dict[int, int] = {}
    num_of: dict[int, int] = {}
    chains: dict[int, list[tuple[int, int, int, int]]] = {}
    for head in heads:
        num = entries[head][3]
        if not 1 <= num <= size:
            raise inflight_error(f"desc[{head}].num", num, f"is not between 1 and {size}")
        entry, chain = head, []
        for k in range(num):
            if entry == size:
                raise inflight_error(f"desc[{head}].num", num, f"is longer than the chain's list ({k} entries)")
            if entry in free or entry in owner:
                raise inflight_error(f"desc[{head}]", "chain", f"runs into desc[{entry}], "
                                     + ("on the free list" if entry in free else f"desc[{owner[entry]}]'s"))
            owner[entry] = head
            _, _, _, _, _, buffer_id, flags, length, addr = entries[entry]
            if bool(flags & DESC_F_NEXT) != (k < num - 1):
                raise inflight_error(f"desc[{entry}].flags", hex(flags), f"do not end a chain of {num} where it ends")
            chain.append((addr, length, buffer_id, flags))
            last = entry
            entry = links[entry]
        if entries[head][2] != last:
            raise inflight_error(f"desc[{head}].last", entries[head][2], f"is not the chain's last entry {last}")
        buffer_id = chain[-1][2]
        if buffer_id >= size:
            raise inflight_error(f"desc[{last}].id", buffer_id, f"is outside a queue of {size}")
        if buffer_id in entry_of:
            raise inflight_error(f"desc[{last}].id", buffer_id, f"is also desc[{entry_of[buffer_id]}]'s chain's")
        entry_of[buffer_id], last_of[head], num_of[buffer_id], chains[buffer_id] = head, last, num, chain
    for i in range(size):
        if i not in free and i not in owner:
            raise inflight_error(f"desc[{i}]", "entry", "is neither on the free list nor in a chain in flight")
    counters = [e[4] for e in entries]
    _check_counters(heads, counters)
    # The repair, in an order a second crash decides the same way: a commit writes old_free_head first (equal to
    # free_head, it commits again); a rollback restores the used slot and its wrap counter before free_head (equal
    # to old_free_head with them not yet restored, it would commit what it undoes). Then the entries.
    for at, fmt, value in packed_repair_stores(commit, free_head, used_idx, used_wrap):
        struct.pack_into(fmt, view, at, value)
    for entry in free:
        view[PACKED_ENTRIES + PACKED_ENTRY.size * entry] = 0
    by_head = {head: buffer_id for buffer_id, head in entry_of.items()}
    pending = [by_head[head] for head in sorted(heads, key=counters.__getitem__)]
    counter = (max(counters[i] for i in heads) + 1) & COUNTER_MASK if heads else 0
    slots = sum(num_of.values())
    last_avail, avail_wrap = used_idx + slots, used_wrap
    if last_avail >= size:
        last_avail, avail_wrap = last_avail - size, avail_wrap ^ 1
    return PackedRecovery(used_idx, used_wrap, last_avail, avail_wrap, pending, counter, links, free_head, entry_of,
                          last_of, num_of, chains)
