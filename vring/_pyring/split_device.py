"""The device's end of a split virtqueue (virtio 1.2, 2.7 "Split Virtqueues"): the pure-Python reference twin.

Every shared-memory access goes through a ``SplitRings`` view named for the field (``rings.py``); the comments
"release", "acquire" and "full fence" mark where the Cython twin puts its barriers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

from .._errors import MalformedChain, VringError, caller_error, chain_error
from .._inflight import SplitRecovery, init_split, record_version, recover_split, region_view
from .._features import (
    AVAIL_F_NO_INTERRUPT,
    DEFAULT_MAX_INDIRECT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    USED_F_NO_NOTIFY,
    Feature,
    need_event,
)
from .._layout import PackedLayout, SplitLayout
from .._state import QueueState
from .batch import Batch
from .chain import Chain, Piece
from .descriptors import add_buffer, indirect_table
from .inflight import SplitRecord
from .memory import GuestMemory
from .queue import Queue, as_c_ints
from .rings import DESC, SplitRings

# What the device's per-head table holds: a chain the device holds (popped, not pushed), or one an inflight record
# says it held when it died, to be popped again before anything new.
HELD = 1
PENDING = 3


class DeviceQueue(Queue):
    """The device's end of a split virtqueue (what QEMU or a vhost-user back-end does). Trusts nothing it reads.

    ``PackedDeviceQueue`` keeps these methods for a packed ring. One caller per queue at a time; its GuestMemory's
    regions may change meanwhile, from another thread (see GuestMemory).
    """

    _side = "device"
    _kind = "split"
    _layout_type: ClassVar[type] = SplitLayout  # annotated so that the packed subclass may name its own
    _rings_type: ClassVar[type] = SplitRings

    def __init__(self, mem: GuestMemory, layout: SplitLayout | PackedLayout, features: int = 0, *,
                 max_indirect: int = DEFAULT_MAX_INDIRECT) -> None:
        self._refuse_other_kind(layout)
        if max_indirect < 1:
            raise caller_error("max-indirect")
        self._attach(mem, layout, features)
        self.max_indirect = max_indirect
        self._indirect = bool(features & Feature.INDIRECT_DESC)
        self._map_rings()
        self._inflight = bytearray(self.size)  # HELD while the device holds the chain at that head, PENDING
        self._inflight_wlen = [0] * self.size  # writable bytes of each in-flight chain (caps push's length)
        self.reset()

    # -- state ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (device reset): indices back to 0, no chain in flight, not broken, no inflight
        record kept."""
        self.last_avail_idx = 0
        self._avail_shadow = 0  # avail->idx as last read: read again only once everything up to it is popped
        self.used_idx = 0
        self.broken = False
        self.error: VringError | None = None
        self._notify_enabled = True
        self._used_flags = 0
        self._signalled_used = 0
        self._signalled_valid = False
        self._inflight[:] = bytes(self.size)
        self._record: Any = None  # the inflight record kept, if one is attached
        self._pending: list[int] = []  # heads the record said were in flight, popped again first
        self._pending_pos = 0
        self._resubmitting = False  # the chain the last _peek found is one of them

    @property
    def state(self) -> QueueState:
        return QueueState(self.last_avail_idx, self.used_idx)

    def restore(self, state: QueueState | tuple[int, ...]) -> None:
        """Resume at a saved state; a ``used_idx`` of None is read from the used ring (vhost-user takeover).

        StateError, and the queue unchanged, if the ring cannot be in that state (see QueueState.checked_split).
        """
        rings: SplitRings = self._bind()
        used_ring_idx, avail_idx = rings.used_idx[0], rings.avail_idx[0]  # used->idx, avail->idx
        state = QueueState(*state).checked_split(self.size, avail_idx)
        self.reset()
        self.last_avail_idx = state.last_avail_idx
        self._avail_shadow = self.last_avail_idx
        self.used_idx = used_ring_idx if state.used_idx is None else state.used_idx

    # -- inflight record (vhost-user "Inflight I/O tracking") ----------------------------------------------------
    def attach_inflight(self, region: Any) -> int:
        """Keep the inflight record in ``region`` (one queue's region of vhost-user's inflight buffer, at least
        ``inflight_region_size(size, packed)`` bytes, held until ``detach_inflight`` or ``reset``) on every pop and
        push. A fresh (zeroed) region is initialised at the queue's position: returns 0. Else the record a device
        left is checked (InflightError, the queue unchanged), repaired, and the queue resumes where it says: the
        chains it had in flight are popped again first, in the order they were first popped; returns their number.
        A queue that holds chains refuses (ValueError): attach before popping.
        """
        rings = self._check()
        view = region_view(region, self.size, self._kind == "packed")
        held = self.size - self._inflight.count(0)
        if held:
            raise caller_error("inflight-busy", held=held)
        if record_version(view) == 0:
            self._init_record(view)
            return 0
        return self._recover_record(view, rings)

    def _init_record(self, view: memoryview) -> None:
        self._start_record(SplitRecord(view, init_split(view, self.size, self.used_idx, self.last_avail_idx)), [])

    def _recover_record(self, view: memoryview, rings: SplitRings) -> int:
        used_ring_idx, avail_idx = rings.used_idx[0], rings.avail_idx[0]  # used->idx, avail->idx
        found: SplitRecovery = recover_split(view, self.size, used_ring_idx, avail_idx)
        self._start_record(SplitRecord(view, found), found.pending)
        self.used_idx = found.used_idx
        self.last_avail_idx = self._avail_shadow = found.last_avail_idx
        return len(found.pending)

    def _start_record(self, record: Any, pending: list[int]) -> None:
        for head in pending:  # every other head is free: attach_inflight refuses a queue holding chains
            self._inflight[head] = PENDING
        self._record = record
        self._pending = pending
        self._pending_pos = 0

    def detach_inflight(self) -> None:
        """Stop keeping the inflight record (the region is the caller's again); chains still to resubmit stay
        in flight, as the device still holds them."""
        self._record = None

    @property
    def inflight_pending(self) -> int:
        """Chains the inflight record said were in flight that pops have not returned again yet."""
        return len(self._pending) - self._pending_pos

    # -- popping -------------------------------------------------------------------------------------------
    def avail_pending(self) -> int:
        """How many chains the driver has made available that the device has not popped (0 if broken)."""
        if self.broken:
            return 0
        rings: SplitRings = self._bind()
        return self.inflight_pending + ((rings.avail_idx[0] - self.last_avail_idx) & 0xFFFF)  # avail->idx (acquire)

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises MalformedChain (and latches broken) on bad driver input."""
        self._check()
        chain = self._pop_one()
        if chain is not None:
            self._after_pop()
        return chain

    def pop_many(self, n: int) -> list[Chain]:
        """Up to ``n`` available chains."""
        self._check()
        out: list[Chain] = []
        while len(out) < n:
            chain = self._pop_one()
            if chain is None:
                break
            out.append(chain)
        if out:
            self._after_pop()
        return out

    def _after_pop(self) -> None:
        # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as QEMU's virtqueue_pop does),
        # unless the device disabled notifications to poll.
        if self._event_idx and self._notify_enabled:
            rings: SplitRings = self._rings
            rings.avail_event[0] = self.last_avail_idx  # used->avail_event

    def _pop_one(self) -> Chain | None:
        try:
            chain = self._peek()
        except MalformedChain as err:
            raise self._fail(err)
        if chain is not None:
            self._commit(chain)
        return chain

    def _commit(self, chain: Chain) -> None:
        """Take the chain ``_peek`` returned: in the inflight record, unless it is one the record gave back (it
        keeps its entry and counter)."""
        self._inflight[chain.head] = HELD
        self._inflight_wlen[chain.head] = chain.writable_len
        if self._resubmitting:
            self._pending_pos += 1
            return
        if self._record is not None:
            self._record.fetched(chain.head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF

    def _peek(self) -> Chain | None:
        """Read and check the next available chain without taking it: MalformedChain if the driver broke a rule
        (the caller latches the queue broken)."""
        rings: SplitRings = self._rings
        size = self.size
        self._resubmitting = self._pending_pos < len(self._pending)
        if self._resubmitting:
            return self._walk(rings, self._pending[self._pending_pos])
        if self._avail_shadow == self.last_avail_idx:
            # Everything seen so far is consumed: look at the index again (acquire: ring entries after it).
            avail_idx = rings.avail_idx[0]  # avail->idx
            if avail_idx == self.last_avail_idx:
                return None
            if (avail_idx - self.last_avail_idx) & 0xFFFF > size:
                raise chain_error("avail-index-jump", 0, 0, False, avail_idx, self.last_avail_idx)
            self._avail_shadow = avail_idx
        head = rings.avail_ring[self.last_avail_idx & (size - 1)]  # avail->ring[last_avail_idx % size]
        if head >= size:
            raise chain_error("head-out-of-range", head, 0, False, size)
        if self._inflight[head]:
            raise chain_error("head-in-flight", head, head, False)
        return self._walk(rings, head)

    def pop_batch(self, batch: Batch) -> int:
        """Pop up to ``batch.capacity`` chains into ``batch`` (heads, segments, totals); returns the count.

        A chain whose segments no longer fit the batch stays in the ring for the next call.
        """
        self._check()
        n = 0
        seg = 0
        batch.seg_start[0] = 0
        try:
            while n < batch.capacity:
                chain = self._peek()
                if chain is None:
                    break
                pieces = chain.segments
                if seg + len(pieces) > batch.max_segments:
                    if n == 0:
                        raise caller_error("batch-chain-too-long", nseg=len(pieces), max_segments=batch.max_segments)
                    break
                self._commit(chain)
                for gpa, length, writable in pieces:
                    batch.seg_addr[seg] = gpa
                    batch.seg_len[seg] = length
                    batch.seg_writable[seg] = writable
                    seg += 1
                batch.heads[n] = chain.head
                batch.nsegs[n] = len(pieces)
                batch.seg_start[n + 1] = seg
                batch.readable_len[n] = chain.readable_len
                batch.writable_len[n] = chain.writable_len
                n += 1
        except MalformedChain as err:
            raise self._fail(err)
        finally:
            batch.count = n  # chains popped before an error are the device's to finish
        if n:
            self._after_pop()
        return n

    def _walk(self, rings: SplitRings, head: int) -> Chain:
        """Follow the chain at ``head`` through the descriptor table and at most one indirect table (2.7.5)."""
        table = rings.desc
        limit = self.size  # entries of the table being walked
        index = head
        in_indirect = False
        was_indirect = False
        count = 0
        readable_len = 0
        writable_len = 0
        pieces: list[Piece] = []
        while True:
            count += 1
            if count > limit:
                raise chain_error("chain-loop", head, index, in_indirect, limit)
            # struct virtq_desc, read once: every check and every use below works on this copy.
            addr, length, flags, nxt = DESC.unpack_from(table, DESC_SIZE * index)
            if flags & DESC_F_INDIRECT:
                table = indirect_table(self.mem, head, index, in_indirect, addr, length, flags, self._indirect,
                                       self.max_indirect)
                limit = length // DESC_SIZE
                index = 0
                count = 0
                in_indirect = was_indirect = True
                continue
            readable_len, writable_len = add_buffer(self.mem, pieces, head, index, in_indirect, addr, length,
                                                    bool(flags & DESC_F_WRITE), readable_len, writable_len)
            if not flags & DESC_F_NEXT:
                break
            if nxt >= limit:
                raise chain_error("next-out-of-range", head, index, in_indirect, nxt, limit)
            index = nxt
        return Chain._make(head, pieces, readable_len, writable_len, was_indirect)

    # -- pushing -------------------------------------------------------------------------------------------
    def _check_push(self, head: int, written: int) -> None:
        if not 0 <= head < self.size or self._inflight[head] != HELD:
            raise caller_error("head-not-held", head=head)
        if not 0 <= written <= self._inflight_wlen[head]:
            raise caller_error("written-too-large", written=written, writable=self._inflight_wlen[head])

    def _put_used(self, head: int, written: int) -> None:
        rings: SplitRings = self._rings
        # used->ring[used_idx % size] = {id, len}; plain stores, published by the release of used->idx.
        rings.set_used_entry(self.used_idx & (self.size - 1), head, written)
        if self._record is not None:
            self._record.used(head)  # the list of the last batch, before used->idx is published
        self._inflight[head] = 0
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def push(self, head: int, written: int = 0) -> None:
        """Return the chain at ``head`` to the driver with ``written`` bytes written into its writable part."""
        self._check()
        head = int(head)
        written = int(written)
        self._check_push(head, written)
        self._put_used(head, written)
        self._publish_used()

    def push_many(self, heads: Iterable[int], lens: Iterable[int]) -> None:
        """Return several chains; the used index is published once, after all their elements."""
        self._check()
        heads = as_c_ints(heads, "heads", "int64")
        lens = as_c_ints(lens, "lens", "int64")
        if len(heads) != len(lens):
            raise caller_error("push-lengths")
        seen = set()
        for head, written in zip(heads, lens):
            self._check_push(head, written)
            if head in seen:
                raise caller_error("pushed-twice", head=head)
            seen.add(head)
        for head, written in zip(heads, lens):
            self._put_used(head, written)
        if heads:
            self._publish_used()

    def _publish_used(self) -> None:
        rings: SplitRings = self._rings
        rings.used_idx[0] = self.used_idx  # used->idx, release: the elements are visible first
        if self._record is not None:
            self._record.published(self.used_idx)

    def push_batch(self, batch: Batch, count: int | None = None) -> None:
        """Return the first ``count`` (default ``batch.count``) chains of ``batch`` with ``batch.lens`` bytes
        written; the used index is published once."""
        n = batch.count if count is None else count
        if not 0 <= n <= batch.capacity:
            raise caller_error("batch-count", count=n, capacity=batch.capacity)
        self.push_many(batch.heads[:n], batch.lens[:n])

    # -- notifications -------------------------------------------------------------------------------------
    def notify_needed(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        rings: SplitRings = self._check()
        # full fence: our used->idx store must be visible before we read the driver's used_event / flags.
        new = self.used_idx
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if valid and new == old:
            return False
        if self._event_idx:
            used_event = rings.used_event[0]  # avail->used_event
            return not valid or need_event(used_event, new, old)
        return not rings.avail_flags[0] & AVAIL_F_NO_INTERRUPT  # avail->flags

    def enable_notifications(self) -> bool:
        """Ask the driver to kick again; returns True if chains are already available (handle them first)."""
        rings: SplitRings = self._check()
        self._notify_enabled = True
        if self._event_idx:
            rings.avail_event[0] = self.last_avail_idx  # used->avail_event
        else:
            self._used_flags &= ~USED_F_NO_NOTIFY
            rings.used_flags[0] = self._used_flags  # used->flags
        # full fence: the store above is visible before we look at avail->idx again.
        return self.inflight_pending > 0 or rings.avail_idx[0] != self.last_avail_idx  # avail->idx

    def disable_notifications(self) -> None:
        """Tell the driver kicks are not needed (the device polls); with EVENT_IDX avail_event just stops moving."""
        rings: SplitRings = self._check()
        self._notify_enabled = False
        if not self._event_idx:
            self._used_flags |= USED_F_NO_NOTIFY
            rings.used_flags[0] = self._used_flags  # used->flags
