"""The device's end of a packed virtqueue (virtio 1.1+, 2.8 "Packed Virtqueues"): the pure-Python reference twin.

One ring of 16-byte descriptors {le64 addr; le32 len; le16 id; le16 flags} serves both directions. The driver
makes a descriptor available by setting its AVAIL flag bit to its wrap counter and USED to the inverse; the device
marks a used one by setting both bits to *its* wrap counter. Chains occupy consecutive slots; the buffer id is in the
last descriptor of a chain; the device writes one used descriptor per buffer and skips as many slots as the chain
took. Two 4-byte event suppression structures {le16 off_wrap; le16 flags} replace the split ring's flags and event
indices. The head descriptor's flags are the publication: written last (release), read first (acquire).
"""

from __future__ import annotations

from typing import Any

from .._errors import chain_error
from .._inflight import PackedRecovery, init_packed, recover_packed
from .._features import (
    DEFAULT_MAX_INDIRECT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    EVENT_FLAG_DISABLE,
    PACKED_DESC_F_AVAIL,
    PACKED_DESC_F_USED,
)
from .._layout import PackedLayout
from .._state import QueueState
from .chain import Chain, Piece
from .descriptors import add_buffer, indirect_table
from .inflight import PackedRecord
from .memory import GuestMemory
from .rings import PACKED_DESC, PackedRings, advance, event_wants, is_avail
from .split_device import HELD, PENDING, DeviceQueue


class PackedDeviceQueue(DeviceQueue):
    """The device's end of a packed virtqueue. Same methods as DeviceQueue; ``head`` is the buffer id.

    One caller per queue at a time; its GuestMemory's regions may change meanwhile (see GuestMemory).
    """

    _kind = "packed"
    _layout_type = PackedLayout
    _rings_type = PackedRings

    def __init__(self, mem: GuestMemory, layout: PackedLayout, features: int = 0, *,
                 max_indirect: int = DEFAULT_MAX_INDIRECT) -> None:
        super().__init__(mem, layout, features, max_indirect=max_indirect)  # refuses a SplitLayout first
        self._ndesc = [0] * self.size  # ring slots each in-flight buffer took

    def reset(self) -> None:
        super().reset()
        self.avail_wrap = 1
        self.used_wrap = 1
        self._pushed = 0  # used slots written since the last notify_needed
        self._peeked_ndesc = 0
        self._peeked_descs: list[tuple[int, int, int, int]] = []  # the peeked chain's ring descriptors, for the record
        self._resubmit_descs: dict[int, list[tuple[int, int, int, int]]] = {}  # pending buffer id -> its descriptors

    @property
    def state(self) -> QueueState:
        return QueueState(self.last_avail_idx, self.used_idx, self.avail_wrap, self.used_wrap)

    def restore(self, state: QueueState | tuple[int, ...]) -> None:
        """Resume at a saved state; a ``used_idx`` of None means "where the driver's next chain starts".

        StateError, and the queue unchanged, for slots outside the ring (see QueueState.checked_packed).
        """
        self._bind()
        state = QueueState(*state).checked_packed(self.size)
        self.reset()
        self.last_avail_idx = state.last_avail_idx
        self.avail_wrap = state.avail_wrap
        if state.used_idx is None:
            self.used_idx, self.used_wrap = self.last_avail_idx, self.avail_wrap
        else:
            self.used_idx, self.used_wrap = state.used_idx, state.used_wrap

    def _init_record(self, view: memoryview) -> None:
        found = init_packed(view, self.size, self.used_idx, self.used_wrap, self.last_avail_idx, self.avail_wrap)
        self._start_record(PackedRecord(view, found), [])

    def _recover_record(self, view: memoryview, rings: Any) -> int:
        packed_rings: PackedRings = rings
        found: PackedRecovery = recover_packed(view, self.size, packed_rings.desc_flags.__getitem__)  # desc[i].flags
        self._start_record(PackedRecord(view, found), found.pending)
        for buffer_id in found.pending:
            self._ndesc[buffer_id] = found.num[buffer_id]
        self._resubmit_descs = found.entries
        self.used_idx, self.used_wrap = found.used_idx, found.used_wrap
        self.last_avail_idx, self.avail_wrap = found.last_avail_idx, found.avail_wrap
        return len(found.pending)

    def avail_pending(self) -> int:
        """Descriptors made available from last_avail_idx on (0 if broken)."""
        if self.broken:
            return 0
        rings: PackedRings = self._bind()
        count, pos, wrap = 0, self.last_avail_idx, self.avail_wrap
        while count < self.size and is_avail(rings.desc_flags[pos], wrap):  # desc[pos].flags
            count += 1
            pos, wrap = advance(pos, wrap, 1, self.size)
        return count + sum(self._ndesc[i] for i in self._pending[self._pending_pos:])

    def _peek(self) -> Chain | None:
        rings: PackedRings = self._rings
        self._resubmitting = self._pending_pos < len(self._pending)
        if self._resubmitting:
            return self._peek_resubmitted(self._resubmit_descs[self._pending[self._pending_pos]])
        pos, wrap = self.last_avail_idx, self.avail_wrap
        # desc[last_avail].flags, acquire: the descriptor's other fields, and the rest of the chain, after it.
        if not is_avail(rings.desc_flags[pos], wrap):
            return None
        return self._walk_chain(rings.desc, pos, wrap, 0, [] if self._record is not None else None)

    def _peek_resubmitted(self, descs: list[tuple[int, int, int, int]]) -> Chain:
        """A chain the inflight record kept: its descriptors laid out as a ring (the slot after them never
        available) and walked with every check of a chain the driver makes available. A chain the driver wrote
        across the ring's end has its later descriptors in the next lap: it starts as many slots before the end as
        it had there, so that the walker's wrap counter flips where their flags do."""
        size = self.size
        head_flags = descs[0][3]
        wrap = 1 if head_flags & PACKED_DESC_F_AVAIL else 0
        first = next((size - j for j in range(1, len(descs)) if is_avail(descs[j][3], wrap ^ 1)), 0)
        scratch = bytearray(DESC_SIZE * size)  # zeroed: the slot after the chain is never available
        for k, (addr, length, buffer_id, flags) in enumerate(descs):
            PACKED_DESC.pack_into(scratch, DESC_SIZE * ((first + k) % size), addr, length, buffer_id, flags)
        if not is_avail(head_flags, wrap):
            raise chain_error("chain-flags", first, first, False, head_flags, wrap)
        return self._walk_chain(scratch, first, wrap, PENDING, None)

    def _walk_chain(self, ring: Any, pos: int, wrap: int, expected: int,
                    copies: list[tuple[int, int, int, int]] | None) -> Chain:
        """Walk and check the chain at ``pos`` of ``ring`` (available in the lap ``wrap``), whose buffer id's
        entry of the in-flight table must be ``expected``; its ring descriptors go to ``copies`` if given."""
        size = self.size
        head_pos = pos
        pieces: list[Piece] = []
        readable_len = writable_len = 0
        was_indirect = False
        count = 0
        buffer_id = 0
        while True:
            if count >= size:
                raise chain_error("chain-too-long", head_pos, pos, False, size)
            # struct pvirtq_desc, read once: every check and every use below works on this copy.
            addr, length, buffer_id, flags = PACKED_DESC.unpack_from(ring, DESC_SIZE * pos)
            if count and not is_avail(flags, wrap):
                raise chain_error("chain-flags", head_pos, pos, False, flags, wrap)
            count += 1
            if copies is not None:
                copies.append((addr, length, buffer_id, flags))
            if flags & DESC_F_INDIRECT:
                table = indirect_table(self.mem, head_pos, pos, False, addr, length, flags, self._indirect,
                                       self.max_indirect)
                was_indirect = True
                entries = list(PACKED_DESC.iter_unpack(table))  # the whole table, read once
                # Entries are sequential. Spec 2.8.7: WRITE is their only valid flag, the others and the buffer id
                # "are reserved and are ignored by the device".
                for k, (eaddr, elen, _eid, eflags) in enumerate(entries):
                    readable_len, writable_len = add_buffer(self.mem, pieces, head_pos, k, True, eaddr, elen,
                                                            bool(eflags & DESC_F_WRITE), readable_len, writable_len)
                break
            readable_len, writable_len = add_buffer(self.mem, pieces, head_pos, pos, False, addr, length,
                                                    bool(flags & DESC_F_WRITE), readable_len, writable_len)
            if not flags & DESC_F_NEXT:
                break
            pos, wrap = advance(pos, wrap, 1, size)
        if buffer_id >= size:
            raise chain_error("buffer-id-out-of-range", head_pos, pos, False, buffer_id, size)
        if self._inflight[buffer_id] != expected:
            raise chain_error("buffer-id-in-flight", head_pos, pos, False, buffer_id)
        # The record's free list has an entry per slot: a driver reusing slots the device holds would run past it.
        if copies is not None and self._record.held_slots + count > size:
            raise chain_error("slots-in-flight", head_pos, pos, False, count, size - self._record.held_slots)
        self._peeked_ndesc = count
        if copies is not None:
            self._peeked_descs = copies
        return Chain._make(buffer_id, pieces, readable_len, writable_len, was_indirect)

    def _commit(self, chain: Chain) -> None:
        self._inflight[chain.head] = HELD
        self._inflight_wlen[chain.head] = chain.writable_len
        self._ndesc[chain.head] = self._peeked_ndesc
        if self._resubmitting:  # given back by the record: keeps its entries and counter
            self._pending_pos += 1
            return
        if self._record is not None:
            self._record.fetched(self._peeked_descs)
        self.last_avail_idx, self.avail_wrap = advance(self.last_avail_idx, self.avail_wrap, self._peeked_ndesc,
                                                       self.size)

    def _after_pop(self) -> None:
        # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as the split ring does).
        if self._event_idx and self._notify_enabled:
            rings: PackedRings = self._rings
            rings.device_event.arm(True, self.last_avail_idx, self.avail_wrap)  # device event suppression

    def _put_used(self, head: int, written: int) -> None:
        rings: PackedRings = self._rings
        # The used descriptor: AVAIL = USED = our wrap counter; id and len first, then flags (release).
        pos = self.used_idx
        flags = (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED if self.used_wrap else 0) | (DESC_F_WRITE if written else 0)
        after = advance(pos, self.used_wrap, self._ndesc[head], self.size)
        record = self._record
        if record is not None:  # each push is a batch of one for the record: its entries back first
            record.used(head, self._ndesc[head], *after)
        rings.put_used(pos, head, written, flags)  # desc[used_idx]
        self._inflight[head] = 0
        if record is not None:
            record.done()
        self.used_idx, self.used_wrap = after
        self._pushed += self._ndesc[head]

    def _publish_used(self) -> None:
        pass  # every used descriptor's flags published it

    def notify_needed(self) -> bool:
        rings: PackedRings = self._check()
        # full fence: our used descriptors are visible before we read the driver's event suppression.
        new, pushed = self.used_idx, self._pushed
        valid = self._signalled_valid
        self._pushed = 0
        self._signalled_valid = True
        if valid and not pushed:
            return False
        event = rings.driver_event.read()  # driver event suppression (2.8.14): (off_wrap, flags)
        wants = event_wants(event, self._event_idx, self.size, self.used_wrap, new, new - pushed)
        return wants or (not valid and event[1] != EVENT_FLAG_DISABLE)

    def enable_notifications(self) -> bool:
        rings: PackedRings = self._check()
        self._notify_enabled = True
        rings.device_event.arm(self._event_idx, self.last_avail_idx, self.avail_wrap)  # device event suppression
        # full fence: the store above is visible before we look at the next descriptor again.
        if self.inflight_pending:
            return True
        return is_avail(rings.desc_flags[self.last_avail_idx], self.avail_wrap)  # desc[last_avail_idx].flags

    def disable_notifications(self) -> None:
        rings: PackedRings = self._check()
        self._notify_enabled = False
        rings.device_event.disable()  # device event suppression
