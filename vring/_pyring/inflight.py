"""The inflight record kept on every pop and push (vhost-user.rst, "Inflight I/O tracking"): pure-Python twin.

The device writes the record in the spec's order, so that a device killed between any two stores leaves a record
the reconnect procedure (``vring._inflight``) repairs. The comment "release fence" marks where the Cython twin puts
``vring_order_record`` (barrier.h): later stores to the record are not made before the earlier ones. The device
never reads the record back while it keeps it: the links it follows are its own copy, so a peer scribbling on the
shared region cannot send it outside the region.
"""

from __future__ import annotations

import struct

from .._inflight import (
    COUNTER_MASK,
    PACKED_ENTRIES,
    PACKED_ENTRY,
    PACKED_FREE_HEAD,
    PACKED_OLD_FREE_HEAD,
    PACKED_OLD_USED_IDX,
    PACKED_OLD_USED_WRAP,
    PACKED_USED_IDX,
    PACKED_USED_WRAP,
    SPLIT_ENTRIES,
    SPLIT_ENTRY,
    SPLIT_LAST_BATCH_HEAD,
    SPLIT_USED_IDX,
    PackedRecovery,
    SplitRecovery,
)

_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_DESC_COPY = struct.Struct("<HHIQ")  # id, flags, len, addr: the copy of a ring descriptor in a DescStatePacked


class SplitRecord:
    """A split queue's record: ``fetched`` on every pop, ``used`` on every used element, ``published`` after
    used->idx is."""

    def __init__(self, region: memoryview, recovery: SplitRecovery) -> None:
        self.region = region
        self.links = list(recovery.links)  # desc[i].next: the list of the last batch
        self.last_batch_head = recovery.last_batch_head
        self.counter = recovery.counter
        self.batch = 0  # used elements written since the last publication

    def fetched(self, head: int) -> None:
        entry = SPLIT_ENTRIES + SPLIT_ENTRY.size * head
        _U64.pack_into(self.region, entry + 8, self.counter)  # desc[head].counter
        self.counter = (self.counter + 1) & COUNTER_MASK
        # release fence: the counter is in the record before the entry counts as in flight
        self.region[entry] = 1  # desc[head].inflight

    def used(self, head: int) -> None:
        _U16.pack_into(self.region, SPLIT_ENTRIES + SPLIT_ENTRY.size * head + 6, self.last_batch_head)  # .next
        self.links[head] = self.last_batch_head
        self.last_batch_head = head
        _U16.pack_into(self.region, SPLIT_LAST_BATCH_HEAD, head)
        self.batch += 1

    def published(self, used_idx: int) -> None:
        # release fence: used->idx is published before the batch's entries stop counting as in flight
        head = self.last_batch_head
        for _ in range(self.batch):
            self.region[SPLIT_ENTRIES + SPLIT_ENTRY.size * head] = 0  # desc[head].inflight
            head = self.links[head]
        # release fence: the entries are done before the record's used_idx says so
        _U16.pack_into(self.region, SPLIT_USED_IDX, used_idx)
        self.batch = 0


class PackedRecord:
    """A packed queue's record: ``fetched`` on every pop, ``used`` before a used descriptor is published and
    ``done`` after (each push is a batch of one)."""

    def __init__(self, region: memoryview, recovery: PackedRecovery) -> None:
        self.region = region
        self.links = list(recovery.links)  # desc[i].next: the free list and each chain's entries
        self.free_head = recovery.free_head  # old_free_head too, between two operations
        self.entry_of = dict(recovery.entry_of)  # buffer id -> its chain's head entry
        self.last_of = dict(recovery.last_of)  # head entry -> its chain's last entry
        self.counter = recovery.counter
        self.used_idx = recovery.used_idx
        self.used_wrap = recovery.used_wrap
        self.held_slots = sum(recovery.num.values())  # entries (ring slots) of the chains in flight

    def _entry(self, index: int) -> int:
        return PACKED_ENTRIES + PACKED_ENTRY.size * index

    def fetched(self, descs: list[tuple[int, int, int, int]]) -> None:
        """Record a chain's ring descriptors (addr, len, id, flags) in entries taken from the free list's head,
        which old_free_head moves past once the chain is whole (the commit point: until then the reconnect
        procedure puts the entries back on the free list, whatever else was written)."""
        region = self.region
        head = entry = last = self.free_head
        at = self._entry(head)
        _U64.pack_into(region, at + 8, self.counter)  # desc[head].counter
        self.counter = (self.counter + 1) & COUNTER_MASK
        # release fence: the counter is in the record before the entry counts as in flight
        region[at] = 1  # desc[head].inflight
        for addr, length, buffer_id, flags in descs:
            _DESC_COPY.pack_into(region, self._entry(entry) + 16, buffer_id, flags, length, addr)
            last = entry
            entry = self.links[entry]
        _U16.pack_into(region, at + 4, last)  # desc[head].last
        _U16.pack_into(region, at + 6, len(descs))  # desc[head].num
        self.last_of[head] = last
        self.entry_of[descs[-1][2]] = head
        self.free_head = entry
        self.held_slots += len(descs)
        _U16.pack_into(region, PACKED_FREE_HEAD, entry)
        # release fence: the chain's entries are complete before old_free_head takes them off the free list
        _U16.pack_into(region, PACKED_OLD_FREE_HEAD, entry)

    def used(self, buffer_id: int, ndesc: int, used_idx: int, used_wrap: int) -> None:
        """Before the used descriptor is published: give the chain's ``ndesc`` entries back to the free list and
        move the record's used_idx and used_wrap_counter to ``used_idx`` / ``used_wrap`` (the slot after it)."""
        region = self.region
        self.held_slots -= ndesc
        head = self.entry_of.pop(buffer_id)
        last = self.last_of.pop(head)
        _U16.pack_into(region, self._entry(last) + 2, self.free_head)  # desc[last].next
        self.links[last] = self.free_head
        self.free_head = head
        _U16.pack_into(region, PACKED_FREE_HEAD, head)
        # release fence: free_head differs from old_free_head before the used slot moves (recover_packed)
        _U16.pack_into(region, PACKED_USED_IDX, used_idx)
        region[PACKED_USED_WRAP] = used_wrap
        self.used_idx, self.used_wrap = used_idx, used_wrap
        self._done_head = head

    def done(self) -> None:
        """After the used descriptor is published: the chain is no longer in flight, the push is complete."""
        region = self.region
        # release fence: the used descriptor is published before its entry stops counting as in flight
        region[self._entry(self._done_head)] = 0  # desc[head].inflight
        # release fence: the entry is done before old_* say the push is complete
        _U16.pack_into(region, PACKED_OLD_FREE_HEAD, self.free_head)
        # release fence: old_free_head equal to free_head says the push is committed before old_used_* move
        _U16.pack_into(region, PACKED_OLD_USED_IDX, self.used_idx)
        region[PACKED_OLD_USED_WRAP] = self.used_wrap
