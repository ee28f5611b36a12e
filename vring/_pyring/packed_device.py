"""Packed virtqueues (virtio 1.1+, spec 2.8), driver and device side: the pure-Python reference twin.

One ring of 16-byte descriptors {le64 addr; le32 len; le16 id; le16 flags} serves both directions. The driver
makes a descriptor available by setting its AVAIL flag bit to its wrap counter and USED to the inverse; the device
marks a used one by setting both bits to *its* wrap counter. Chains occupy consecutive slots; the buffer id is in the
last descriptor of a chain; the device writes one used descriptor per buffer and skips as many slots as the chain
took. Two 4-byte event suppression structures {le16 off_wrap; le16 flags} replace the split ring's flags and event
indices. The head descriptor's flags are the publication: written last (release), read first (acquire).
"""

from __future__ import annotations

import struct

from .._errors import chain_error
from .._features import (
    DEFAULT_MAX_INDIRECT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    EVENT_FLAG_DESC,
    EVENT_FLAG_DISABLE,
    EVENT_FLAG_ENABLE,
    PACKED_DESC_F_AVAIL,
    PACKED_DESC_F_USED,
    need_event,
)
from .._layout import PackedLayout
from .._state import QueueState
from .memory import GuestMemory
from .split_device import Chain, DeviceQueue, _Rings

_PDESC = struct.Struct("<QIHH")  # struct pvirtq_desc {le64 addr; le32 len; le16 id; le16 flags;}
_PDESC_BODY = struct.Struct("<QIH")  # the same without its flags, for writing a head before publishing it
_ID_LEN = struct.Struct("<IH")  # len and id of a used descriptor (offsets 8 to 13)


def _set_event(event16: memoryview, off_wrap: int, flags: int) -> None:
    """struct pvirtq_event_suppress {le16 off_wrap; le16 flags;}: the offset first, then the flags that use it."""
    event16[0] = off_wrap
    event16[1] = flags


def _avail_bits(wrap: int) -> int:
    """AVAIL = wrap, USED = !wrap: how the driver marks a descriptor available in the lap ``wrap``."""
    return PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED


def _advance(pos: int, wrap: int, n: int, size: int) -> tuple[int, int]:
    """(position, wrap counter) ``n`` slots on: the counter flips each time the ring's end is passed."""
    pos += n
    return (pos - size, wrap ^ 1) if pos >= size else (pos, wrap)


def _arm_event(event16: memoryview, event_idx: bool, pos: int, wrap: int) -> None:
    """Ask the other side to notify: at slot ``pos`` of lap ``wrap`` with EVENT_IDX, else on every change."""
    if event_idx:
        _set_event(event16, pos | wrap << 15, EVENT_FLAG_DESC)
    else:
        _set_event(event16, 0, EVENT_FLAG_ENABLE)


def _is_avail(flags: int, wrap: int) -> bool:
    return bool(flags & PACKED_DESC_F_AVAIL) == bool(wrap) and bool(flags & PACKED_DESC_F_USED) != bool(wrap)


def _is_used(flags: int, wrap: int) -> bool:
    return bool(flags & PACKED_DESC_F_AVAIL) == bool(wrap) and bool(flags & PACKED_DESC_F_USED) == bool(wrap)


def _event_wants(event: tuple[int, int], event_idx: bool, size: int, wrap: int, new: int, old: int) -> bool:
    """Does the other side's event suppression structure ask to hear that the index moved from old to new?

    ``new``/``old`` are ring positions in the current lap, ``old`` possibly "negative" (mod 2**16) when the
    index wrapped; an event offset from the previous lap is moved back by the ring size to compare (as Linux).
    """
    off_wrap, flags = event
    if flags == EVENT_FLAG_DISABLE:
        return False
    if flags != EVENT_FLAG_DESC or not event_idx:
        return True  # ENABLE, or a value the spec reserves: notify rather than risk a lost wake-up
    off = off_wrap & 0x7FFF
    if off_wrap >> 15 != wrap:
        off -= size
    return need_event(off & 0xFFFF, new & 0xFFFF, old & 0xFFFF)


class PackedDeviceQueue(DeviceQueue):
    """The device's end of a packed virtqueue. Same methods as DeviceQueue; ``head`` is the buffer id."""

    def __init__(self, mem: GuestMemory, layout: PackedLayout, features: int = 0, *,
                 max_indirect: int = DEFAULT_MAX_INDIRECT) -> None:
        if not isinstance(layout, PackedLayout):
            raise TypeError("a packed queue needs a PackedLayout")
        self._ndesc = [0] * layout.size  # ring slots each in-flight buffer took
        super().__init__(mem, layout, features, max_indirect=max_indirect)

    def reset(self) -> None:
        super().reset()
        self.avail_wrap = 1
        self.used_wrap = 1
        self._pushed = 0  # used slots written since the last notify_needed
        self._peeked_ndesc = 0

    @property
    def state(self) -> QueueState:
        return QueueState(self.last_avail_idx, self.used_idx, self.avail_wrap, self.used_wrap)

    def restore(self, state: QueueState | tuple[int, ...]) -> None:
        """Resume at a saved state; a ``used_idx`` of None means "where the driver's next chain starts"."""
        state = QueueState(*state)
        self.reset()
        self._bind()
        size = self.size
        if not 0 <= state.last_avail_idx < size or state.used_idx is not None and not 0 <= state.used_idx < size:
            raise ValueError(f"state {tuple(state)} is outside a ring of {size}")
        self.last_avail_idx = int(state.last_avail_idx)
        self.avail_wrap = int(state.avail_wrap) & 1
        if state.used_idx is None:
            self.used_idx, self.used_wrap = self.last_avail_idx, self.avail_wrap
        else:
            self.used_idx, self.used_wrap = int(state.used_idx), int(state.used_wrap) & 1

    def avail_pending(self) -> int:
        """Descriptors made available from last_avail_idx on (0 if broken)."""
        if self.broken:
            return 0
        rings = self._bind()
        count, pos, wrap = 0, self.last_avail_idx, self.avail_wrap
        while count < self.size and _is_avail(self._flags(rings, pos), wrap):
            count += 1
            pos, wrap = _advance(pos, wrap, 1, self.size)
        return count

    @staticmethod
    def _flags(rings: _Rings, pos: int) -> int:
        return rings.desc16[8 * pos + 7]  # desc[pos].flags

    def _peek(self, rings: _Rings) -> Chain | None:
        size = self.size
        pos, wrap = self.last_avail_idx, self.avail_wrap
        # desc[last_avail].flags, acquire: the descriptor's other fields, and the rest of the chain, after it.
        if not _is_avail(self._flags(rings, pos), wrap):
            return None
        head_pos = pos
        pieces: list[tuple[int, int, bool, tuple[int, memoryview]]] = []
        readable_len = writable_len = 0
        seen_writable = was_indirect = False
        count = 0
        buffer_id = 0
        while True:
            if count >= size:
                raise self._fail(chain_error("chain-too-long", head_pos, pos, False, size))
            # struct pvirtq_desc, read once: every check and every use below works on this copy.
            addr, length, buffer_id, flags = _PDESC.unpack_from(rings.desc, DESC_SIZE * pos)
            if count and not _is_avail(flags, wrap):
                raise self._fail(chain_error("chain-flags", head_pos, pos, False, flags, wrap))
            count += 1
            if flags & DESC_F_INDIRECT:
                entries = self._indirect_table(head_pos, pos, addr, length, flags)
                was_indirect = True
                for k, (eaddr, elen, _eid, eflags) in enumerate(entries):
                    if eflags & DESC_F_NEXT:
                        raise self._fail(chain_error("indirect-next", head_pos, k, True))
                    if eflags & DESC_F_INDIRECT:
                        raise self._fail(chain_error("nested-indirect", head_pos, k, True))
                    readable_len, writable_len, seen_writable = self._piece(
                        pieces, head_pos, k, True, eaddr, elen, bool(eflags & DESC_F_WRITE), readable_len,
                        writable_len, seen_writable)
                break
            readable_len, writable_len, seen_writable = self._piece(
                pieces, head_pos, pos, False, addr, length, bool(flags & DESC_F_WRITE), readable_len, writable_len,
                seen_writable)
            if not flags & DESC_F_NEXT:
                break
            pos, wrap = _advance(pos, wrap, 1, size)
        if buffer_id >= size:
            raise self._fail(chain_error("buffer-id-out-of-range", head_pos, pos, False, buffer_id, size))
        if self._inflight[buffer_id]:
            raise self._fail(chain_error("buffer-id-in-flight", head_pos, pos, False, buffer_id))
        self._peeked_ndesc = count
        return Chain(buffer_id, pieces, readable_len, writable_len, was_indirect)

    def _indirect_table(self, head: int, pos: int, addr: int, length: int, flags: int) -> list[tuple[int, ...]]:
        table = self._indirect_view(head, pos, False, addr, length, flags)
        return list(_PDESC.iter_unpack(table))  # the whole table, read once

    def _commit(self, chain: Chain) -> None:
        self._inflight[chain.head] = 1
        self._inflight_wlen[chain.head] = chain.writable_len
        self._ndesc[chain.head] = self._peeked_ndesc
        self.last_avail_idx, self.avail_wrap = _advance(self.last_avail_idx, self.avail_wrap, self._peeked_ndesc,
                                                        self.size)

    def _after_pop(self, rings: _Rings) -> None:
        # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as the split ring does).
        if self._event_idx and self._notify_enabled:
            _arm_event(rings.used16, True, self.last_avail_idx, self.avail_wrap)

    def _put_used(self, rings: _Rings, head: int, written: int) -> None:
        # The used descriptor: id and len first, then flags (AVAIL = USED = our wrap counter), release.
        pos = self.used_idx
        flags = (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED if self.used_wrap else 0) | (DESC_F_WRITE if written else 0)
        _ID_LEN.pack_into(rings.desc, DESC_SIZE * pos + 8, written, head)
        rings.desc16[8 * pos + 7] = flags  # desc[pos].flags, release
        self._inflight[head] = 0
        self.used_idx, self.used_wrap = _advance(pos, self.used_wrap, self._ndesc[head], self.size)
        self._pushed += self._ndesc[head]

    def _publish_used(self, rings: _Rings) -> None:
        pass  # every used descriptor's flags published it

    def notify_needed(self) -> bool:
        rings = self._check()
        # full fence: our used descriptors are visible before we read the driver's event suppression.
        new, pushed = self.used_idx, self._pushed
        valid = self._signalled_valid
        self._pushed = 0
        self._signalled_valid = True
        if valid and not pushed:
            return False
        event = (rings.avail16[0], rings.avail16[1])  # driver event suppression
        wants = _event_wants(event, self._event_idx, self.size, self.used_wrap, new, new - pushed)
        return wants or (not valid and event[1] != EVENT_FLAG_DISABLE)

    def enable_notifications(self) -> bool:
        rings = self._check()
        self._notify_enabled = True
        _arm_event(rings.used16, self._event_idx, self.last_avail_idx, self.avail_wrap)
        # full fence: the store above is visible before we look at the next descriptor again.
        return _is_avail(self._flags(rings, self.last_avail_idx), self.avail_wrap)

    def disable_notifications(self) -> None:
        rings = self._check()
        self._notify_enabled = False
        _set_event(rings.used16, 0, EVENT_FLAG_DISABLE)
