"""The driver's end of a packed virtqueue (virtio 1.1+, 2.8 "Packed Virtqueues"): the pure-Python reference twin.

A chain takes consecutive descriptor slots, its buffer id in each; the head's flags are written last (release)
and make the whole chain available. The device's used descriptors come back in the same ring.
"""

from __future__ import annotations

from collections import deque

from .._errors import caller_error, used_error
from .._features import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, Feature
from .._layout import PackedLayout
from .memory import GuestMemory
from .rings import LEN_MAX, PACKED_DESC, PACKED_DESC_BODY, PackedRings, advance, avail_bits, event_wants, is_used
from .split_driver import DriverQueue


class PackedDriverQueue(DriverQueue):
    """The driver's end of a packed virtqueue. Same methods as DriverQueue; heads are buffer ids.

    One caller per queue at a time; its GuestMemory's regions may change meanwhile (see GuestMemory).
    """

    _kind = "packed"
    _layout_type = PackedLayout
    _rings_type = PackedRings

    def __init__(self, mem: GuestMemory, layout: PackedLayout, features: int = 0, *,
                 indirect_area: int | None = None, indirect_max: int = 16, indirect_threshold: int = 2) -> None:
        super().__init__(mem, layout, features, indirect_area=indirect_area, indirect_max=indirect_max,
                         indirect_threshold=indirect_threshold)  # refuses a SplitLayout first
        self._in_order = bool(features & Feature.IN_ORDER)

    def reset(self) -> None:
        super().reset()  # zeroes the ring and event areas; buffer ids come from the same private free list
        self.avail_wrap = 1
        self.used_wrap = 1
        self._added = 0  # slots made available since the last kick_needed
        self._order: deque[int] = deque()  # buffer ids in the order they were made available (IN_ORDER)
        self._skipped: deque[tuple[int, int]] = deque()  # in-order completions implied by a later used id

    def _add(self, segs: list[tuple[int, int, bool]]) -> int:
        rings: PackedRings = self._rings
        nseg = len(segs)
        indirect, needed = self._reserve(nseg)
        wlen = 0
        seen_w = False
        for addr, length, w in segs:  # every check first: nothing is written for a chain that is refused
            seen_w = self._check_buffer(addr, length, w, seen_w)
            wlen += length if w else 0
        if wlen > LEN_MAX:
            raise caller_error("writable-too-large")
        buffer_id = self._free_head
        self._free_head = self._next[buffer_id]
        head_pos, head_wrap = self.avail_idx, self.avail_wrap
        if indirect:
            table_gpa = self._table_gpa(buffer_id)
            table = self.mem.view(table_gpa, DESC_SIZE * nseg)
            for k, (addr, length, w) in enumerate(segs):  # entries are sequential: no NEXT, no id
                PACKED_DESC.pack_into(table, DESC_SIZE * k, addr, length, 0, DESC_F_WRITE if w else 0)
            head = (table_gpa, DESC_SIZE * nseg, buffer_id, DESC_F_INDIRECT)
        else:
            pos, wrap = head_pos, head_wrap
            for k, (addr, length, w) in enumerate(segs):
                flags = (DESC_F_WRITE if w else 0) | (DESC_F_NEXT if k < nseg - 1 else 0)
                if k == 0:
                    head = (addr, length, buffer_id, flags)
                else:  # the rest of the chain goes in first, flags and all: struct pvirtq_desc
                    PACKED_DESC.pack_into(rings.desc, DESC_SIZE * pos, addr, length, buffer_id,
                                          flags | avail_bits(wrap))
                pos, wrap = advance(pos, wrap, 1, self.size)
        addr, length, _, flags = head
        PACKED_DESC_BODY.pack_into(rings.desc, DESC_SIZE * head_pos, addr, length, buffer_id)
        # desc[head].flags last, release: this makes the whole chain available.
        rings.desc_flags[head_pos] = flags | avail_bits(head_wrap)
        self.avail_idx, self.avail_wrap = advance(head_pos, head_wrap, needed, self.size)
        self.num_free -= needed
        self._added += needed
        self._ndesc[buffer_id] = needed
        self._wlen[buffer_id] = wlen
        self._inflight[buffer_id] = 1
        if self._in_order:
            self._order.append(buffer_id)
        return buffer_id

    def kick_needed(self) -> bool:
        rings: PackedRings = self._check()
        added, self._added = self._added, 0
        if not added:
            return False
        # full fence: our descriptors are visible before we read the device's event suppression.
        event = rings.device_event.read()  # device event suppression (2.8.14): (off_wrap, flags)
        new = self.avail_idx
        return event_wants(event, self._event_idx, self.size, self.avail_wrap, new, new - added)

    def _reap_one(self) -> tuple[int, int] | None:
        rings: PackedRings = self._rings
        if self._skipped:
            return self._hand_back(*self._skipped.popleft())
        pos = self.last_used_idx
        # desc[pos].flags, acquire: id and len after it.
        if not is_used(rings.desc_flags[pos], self.used_wrap):
            return None
        _addr, written, buffer_id, flags = PACKED_DESC.unpack_from(rings.desc, DESC_SIZE * pos)  # once
        if not flags & DESC_F_WRITE:
            written = 0  # spec 2.8.4: the length of a used descriptor without WRITE is reserved, ignored
        if self.num_free == self.size:  # no slot in flight
            raise self._fail(used_error("used-wrap", pos, flags))
        if buffer_id >= self.size:
            raise self._fail(used_error("used-id-out-of-range", pos, buffer_id, self.size))
        if not self._inflight[buffer_id]:
            raise self._fail(used_error("used-id-not-in-flight", pos, buffer_id))
        if written > self._wlen[buffer_id]:
            raise self._fail(used_error("used-len-too-large", pos, written, self._wlen[buffer_id]))
        if self._in_order:
            # IN_ORDER: one used descriptor may stand for every buffer made available before it.
            while self._order and self._order[0] != buffer_id:
                skipped = self._order.popleft()
                self._consume(skipped)
                self._skipped.append((skipped, 0))
            self._order.popleft()
        self._consume(buffer_id)
        if self._skipped:
            self._skipped.append((buffer_id, written))
            return self._hand_back(*self._skipped.popleft())
        return self._hand_back(buffer_id, written)

    def _consume(self, buffer_id: int) -> None:
        """Step the used slot past the buffer's slots in the ring."""
        self.last_used_idx, self.used_wrap = advance(self.last_used_idx, self.used_wrap, self._ndesc[buffer_id],
                                                     self.size)

    def _hand_back(self, buffer_id: int, written: int) -> tuple[int, int]:
        """The buffer's completion, handed back: its slots and its id are free again. Until then its slots count
        as taken, so a free slot always means a free id."""
        self.num_free += self._ndesc[buffer_id]
        self._inflight[buffer_id] = 0
        self._next[buffer_id] = self._free_head
        self._free_head = buffer_id
        return buffer_id, written

    def _after_reap(self) -> None:
        if self._event_idx and self._interrupts_enabled:
            rings: PackedRings = self._rings
            rings.driver_event.arm(True, self.last_used_idx, self.used_wrap)  # driver event suppression

    def disable_interrupts(self) -> None:
        rings: PackedRings = self._check()
        self._interrupts_enabled = False
        rings.driver_event.disable()  # driver event suppression

    def enable_interrupts(self) -> bool:
        rings: PackedRings = self._check()
        self._interrupts_enabled = True
        rings.driver_event.arm(self._event_idx, self.last_used_idx, self.used_wrap)  # driver event suppression
        # full fence: the store above is visible before we look at the next used descriptor again.
        return bool(self._skipped) or is_used(rings.desc_flags[self.last_used_idx], self.used_wrap)  # desc[].flags
