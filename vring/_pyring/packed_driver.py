"""The driver's end of a packed virtqueue: the pure-Python reference twin."""

from __future__ import annotations

from collections import deque

from .._errors import used_error
from .._features import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, EVENT_FLAG_DISABLE, Feature
from .._layout import PackedLayout
from .memory import GuestMemory
from .packed_device import (
    _PDESC,
    _PDESC_BODY,
    PackedDeviceQueue,
    _advance,
    _arm_event,
    _avail_bits,
    _event_wants,
    _is_used,
    _set_event,
)
from .split_device import _U32_MAX, _Rings
from .split_driver import DriverQueue


class PackedDriverQueue(DriverQueue):
    """The driver's end of a packed virtqueue. Same methods as DriverQueue; heads are buffer ids."""

    def __init__(self, mem: GuestMemory, layout: PackedLayout, features: int = 0, *,
                 indirect_area: int | None = None, indirect_max: int = 16, indirect_threshold: int = 2) -> None:
        if not isinstance(layout, PackedLayout):
            raise TypeError("a packed queue needs a PackedLayout")
        self._in_order = bool(features & Feature.IN_ORDER)
        super().__init__(mem, layout, features, indirect_area=indirect_area, indirect_max=indirect_max,
                         indirect_threshold=indirect_threshold)

    def reset(self) -> None:
        super().reset()  # zeroes the ring and event areas; buffer ids come from the same private free list
        self.avail_wrap = 1
        self.used_wrap = 1
        self._added = 0  # slots made available since the last kick_needed
        self._order: deque[int] = deque()  # buffer ids in the order they were made available (IN_ORDER)
        self._skipped: deque[tuple[int, int]] = deque()  # in-order completions implied by a later used id

    def _add(self, rings: _Rings, segs: list[tuple[int, int, bool]]) -> int:
        nseg = len(segs)
        indirect, needed = self._reserve(nseg)
        wlen = 0
        seen_w = False
        for addr, length, w in segs:  # every check first: nothing is written for a chain that is refused
            seen_w = self._check_buffer(addr, length, w, seen_w)
            wlen += length if w else 0
        if wlen > _U32_MAX:
            raise ValueError("the chain's writable length exceeds 2**32 - 1")
        buffer_id = self._free_head
        self._free_head = self._next[buffer_id]
        head_pos, head_wrap = self.avail_idx, self.avail_wrap
        if indirect:
            table_gpa = self._table_gpa(buffer_id)
            table = self.mem.view(table_gpa, DESC_SIZE * nseg)
            for k, (addr, length, w) in enumerate(segs):  # entries are sequential: no NEXT, no id
                _PDESC.pack_into(table, DESC_SIZE * k, addr, length, 0, DESC_F_WRITE if w else 0)
            head = (table_gpa, DESC_SIZE * nseg, buffer_id, DESC_F_INDIRECT)
        else:
            pos, wrap = head_pos, head_wrap
            for k, (addr, length, w) in enumerate(segs):
                flags = (DESC_F_WRITE if w else 0) | (DESC_F_NEXT if k < nseg - 1 else 0)
                if k == 0:
                    head = (addr, length, buffer_id, flags)
                else:  # the rest of the chain goes in first, flags and all
                    _PDESC.pack_into(rings.desc, DESC_SIZE * pos, addr, length, buffer_id, flags | _avail_bits(wrap))
                pos, wrap = _advance(pos, wrap, 1, self.size)
        addr, length, _, flags = head
        _PDESC_BODY.pack_into(rings.desc, DESC_SIZE * head_pos, addr, length, buffer_id)
        # desc[head].flags last, release: this makes the whole chain available.
        rings.desc16[8 * head_pos + 7] = flags | _avail_bits(head_wrap)
        self.avail_idx, self.avail_wrap = _advance(head_pos, head_wrap, needed, self.size)
        self.num_free -= needed
        self._added += needed
        self._ndesc[buffer_id] = needed
        self._wlen[buffer_id] = wlen
        self._inflight[buffer_id] = 1
        if self._in_order:
            self._order.append(buffer_id)
        return buffer_id

    def kick_needed(self) -> bool:
        rings = self._check()
        added, self._added = self._added, 0
        if not added:
            return False
        # full fence: our descriptors are visible before we read the device's event suppression.
        event = (rings.used16[0], rings.used16[1])  # device event suppression
        new = self.avail_idx
        return _event_wants(event, self._event_idx, self.size, self.avail_wrap, new, new - added)

    def _reap_one(self, rings: _Rings) -> tuple[int, int] | None:
        if self._skipped:
            return self._skipped.popleft()
        pos = self.last_used_idx
        # desc[pos].flags, acquire: id and len after it.
        if not _is_used(self._flags(rings, pos), self.used_wrap):
            return None
        _addr, written, buffer_id, flags = _PDESC.unpack_from(rings.desc, DESC_SIZE * pos)  # once
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
                self._retire(skipped)
                self._skipped.append((skipped, 0))
            self._order.popleft()
        self._retire(buffer_id)
        if self._skipped:
            self._skipped.append((buffer_id, written))
            return self._skipped.popleft()
        return buffer_id, written

    _flags = staticmethod(PackedDeviceQueue._flags)

    def _retire(self, buffer_id: int) -> None:
        """The buffer's slots are free again, and its id."""
        self.last_used_idx, self.used_wrap = _advance(self.last_used_idx, self.used_wrap, self._ndesc[buffer_id],
                                                      self.size)
        self.num_free += self._ndesc[buffer_id]
        self._inflight[buffer_id] = 0
        self._next[buffer_id] = self._free_head
        self._free_head = buffer_id

    def _after_reap(self, rings: _Rings) -> None:
        if self._event_idx and self._interrupts_enabled:
            _arm_event(rings.avail16, True, self.last_used_idx, self.used_wrap)

    def disable_interrupts(self) -> None:
        rings = self._check()
        self._interrupts_enabled = False
        _set_event(rings.avail16, 0, EVENT_FLAG_DISABLE)

    def enable_interrupts(self) -> bool:
        rings = self._check()
        self._interrupts_enabled = True
        _arm_event(rings.avail16, self._event_idx, self.last_used_idx, self.used_wrap)
        # full fence: the store above is visible before we look at the next used descriptor again.
        return bool(self._skipped) or _is_used(self._flags(rings, self.last_used_idx), self.used_wrap)

