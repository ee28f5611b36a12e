"""The driver's end of a split virtqueue (virtio 1.2, 2.7 "Split Virtqueues"): the pure-Python reference twin.

Every shared-memory access goes through a ``SplitRings`` view named for the field (``rings.py``); the comments
"release", "acquire" and "full fence" mark where the Cython twin puts its barriers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from .._errors import VringError, caller_error, used_error
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
from .batch import Batch
from .memory import GuestMemory
from .queue import Queue, as_c_ints, as_ints
from .rings import DESC, LEN_MAX, SplitRings, ring_view


class DriverQueue(Queue):
    """The driver's end of a split virtqueue (what a guest kernel does). Trusts nothing the device writes.

    ``PackedDriverQueue`` keeps these methods for a packed ring. One caller per queue at a time; its GuestMemory's
    regions may change meanwhile, from another thread (see GuestMemory).
    """

    _side = "driver"
    _kind = "split"
    _layout_type: ClassVar[type] = SplitLayout  # annotated so that the packed subclass may name its own
    _rings_type: ClassVar[type] = SplitRings

    def __init__(self, mem: GuestMemory, layout: SplitLayout | PackedLayout, features: int = 0, *,
                 indirect_area: int | None = None, indirect_max: int = 16, indirect_threshold: int = 2) -> None:
        self._refuse_other_kind(layout)
        if not 1 <= indirect_max <= DEFAULT_MAX_INDIRECT:
            raise caller_error("indirect-max", limit=DEFAULT_MAX_INDIRECT)
        if indirect_threshold < 1:
            raise caller_error("indirect-threshold")
        self._attach(mem, layout, features)
        self.indirect_area = indirect_area
        self.indirect_max = indirect_max
        self.indirect_threshold = indirect_threshold
        self._use_indirect = bool(features & Feature.INDIRECT_DESC) and indirect_area is not None
        if indirect_area is not None:
            mem.view(indirect_area, self.indirect_area_bytes(self.size, indirect_max))  # must lie in one region
        self._map_rings()
        self.reset()

    def _map_rings(self) -> None:
        super()._map_rings()
        if self.indirect_area is not None:  # the indirect tables are mapped, and refused, like the ring areas
            ring_view(self.mem, self.indirect_area, self.indirect_area_bytes(self.size, self.indirect_max))

    @staticmethod
    def indirect_area_bytes(size: int, indirect_max: int = 16) -> int:
        """Bytes of guest memory the indirect tables need: one table of ``indirect_max`` entries per head."""
        return size * indirect_max * DESC_SIZE

    def reset(self) -> None:
        """Zero the three ring areas and start over with every descriptor free."""
        self._bind().clear()
        size = self.size
        self._next = list(range(1, size)) + [0]  # private free-list links: never read back from shared memory
        self._free_head = 0
        self.num_free = size
        self._ndesc = [0] * size  # descriptors the chain at each head occupies in the table
        self._wlen = [0] * size  # device-writable bytes of the chain at each head
        self._inflight = bytearray(size)
        self._tokens: list[Any] = [None] * size
        self.avail_idx = 0  # next avail->idx (written into the ring, published by kick_needed)
        self._published = 0  # avail->idx as last published
        self.last_used_idx = 0
        self._used_shadow = 0  # used->idx as last read: read again only once everything up to it is reaped
        self._avail_flags = 0
        self._interrupts_enabled = True
        self.broken = False
        self.error: VringError | None = None

    # -- adding --------------------------------------------------------------------------------------------
    def add(self, out: Sequence[tuple[int, int]] = (), in_: Sequence[tuple[int, int]] = (),
            token: Any = None) -> int:
        """Make one chain available: ``out`` buffers the device reads, then ``in_`` buffers it writes.

        Returns the head index. ``token`` (default: the head) comes back from ``pop_used``. The avail index is
        published by ``kick_needed``.
        """
        self._check()
        segs = _parse_buffers(out, False) + _parse_buffers(in_, True)
        head = self._add(segs)
        self._tokens[head] = token
        return head

    def add_many(self, addrs: Any, lens: Any, writable: Any, chain_segs: Any, heads: Any = None) -> int:
        """Add chains from flat segment arrays; returns how many were added (stops early when the ring is full).

        Chain k takes the next ``chain_segs[k]`` segments (or ``chain_segs`` each, if an int); a segment is
        (``addrs[i]``, ``lens[i]``) and device-writable where ``writable[i]`` is true. Head indices go into
        ``heads`` if given.
        """
        self._check()
        addrs = as_c_ints(addrs, "addrs", "uint64")
        lens = as_c_ints(lens, "lens", "int64")
        writable = as_ints(writable)
        if not len(addrs) == len(lens) == len(writable):
            raise caller_error("segment-arrays")
        if isinstance(chain_segs, int):
            if chain_segs < 1 or len(addrs) % chain_segs:
                raise caller_error("segments-uneven")
            counts = [chain_segs] * (len(addrs) // chain_segs)
        else:
            counts = as_c_ints(chain_segs, "chain_segs", "int64")
            if sum(counts) != len(addrs) or any(count < 0 for count in counts):
                raise caller_error("segments-total")
        if heads is not None and len(heads) < len(counts):
            raise caller_error("heads-short")
        start = 0
        done = 0
        for count in counts:
            segs = [(addrs[i], lens[i], bool(writable[i])) for i in range(start, start + count)]
            if self.num_free < self._needed(len(segs)):
                break
            head = self._add(segs)
            if heads is not None:
                heads[done] = head
            start += count
            done += 1
        return done

    def add_batch(self, batch: Batch, count: int) -> int:
        """Add the first ``count`` chains described in ``batch`` (``nsegs`` and the ``seg_*`` arrays); their heads
        go into ``batch.heads``. Returns how many were added (stops early when the ring is full)."""
        self._check()
        if not 0 <= count <= batch.capacity:
            raise caller_error("batch-count", count=count, capacity=batch.capacity)
        start = 0
        done = 0
        try:
            for k in range(count):
                nseg = int(batch.nsegs[k])
                if start + nseg > batch.max_segments:
                    raise caller_error("batch-chain-segments", chain=k, max_segments=batch.max_segments)
                if self.num_free < self._needed(nseg):
                    break
                segs = [(int(batch.seg_addr[i]), int(batch.seg_len[i]), bool(batch.seg_writable[i]))
                        for i in range(start, start + nseg)]
                batch.heads[k] = self._add(segs)
                start += nseg
                done += 1
        finally:
            batch.count = done  # chains added before an error stay added
        return done

    def reap_batch(self, batch: Batch) -> int:
        """Reap up to ``batch.capacity`` used buffers into ``batch.heads`` and ``batch.lens``; returns the count."""
        self._check()
        return self._reap_into(batch.heads, batch.lens, batch)

    def _reserve(self, nseg: int) -> tuple[bool, int]:
        """The checks before a chain of ``nseg`` buffers takes descriptors: (indirect?, descriptors needed)."""
        if nseg == 0:
            raise caller_error("empty-chain")
        indirect = self._indirect_for(nseg)
        if not indirect and nseg > self.size:
            raise caller_error("chain-longer-than-queue", nseg=nseg, size=self.size)
        needed = self._needed(nseg)
        if self.num_free < needed:
            raise caller_error("no-free-descriptors", needed=needed, free=self.num_free)
        return indirect, needed

    def _check_buffer(self, addr: int, length: int, writable: bool, seen_writable: bool) -> bool:
        """One buffer of a chain the caller adds; returns whether a device-writable one has been seen."""
        if not 0 < length <= LEN_MAX:
            raise caller_error("buffer-length", length=length)
        if not writable and seen_writable:
            raise caller_error("buffer-order")
        if not self.mem.contains(addr, length):
            raise caller_error("buffer-outside-memory", addr=addr, length=length)
        return seen_writable or writable

    def _needed(self, nseg: int) -> int:
        return 1 if self._indirect_for(nseg) else nseg

    def _indirect_for(self, nseg: int) -> bool:
        return self._use_indirect and self.indirect_threshold <= nseg <= self.indirect_max

    def _table_gpa(self, head: int) -> int:
        """Where the indirect table of the chain at ``head`` lives (only asked when indirect tables are in use)."""
        assert self.indirect_area is not None
        return self.indirect_area + head * self.indirect_max * DESC_SIZE

    def _add(self, segs: list[tuple[int, int, bool]]) -> int:
        rings: SplitRings = self._rings
        nseg = len(segs)
        indirect, needed = self._reserve(nseg)
        head = self._free_head
        # Check and write in one pass: the slots written are free ones the device cannot see (they are not in the
        # avail ring), so a chain refused halfway leaves nothing behind but bytes in free slots.
        if indirect:
            table = self.mem.view(self._table_gpa(head), DESC_SIZE * nseg)
        else:
            table = rings.desc
        wlen = 0
        seen_w = False
        index = head
        for k, (addr, length, w) in enumerate(segs):
            seen_w = self._check_buffer(addr, length, w, seen_w)
            wlen += length if w else 0
            last = k == nseg - 1
            flags = (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT)
            if indirect:  # struct virtq_desc in the head's indirect table, linked in table order
                DESC.pack_into(table, DESC_SIZE * k, addr, length, flags, 0 if last else k + 1)
            else:  # struct virtq_desc in the descriptor table, linked along the private free list
                nxt = self._next[index]
                DESC.pack_into(table, DESC_SIZE * index, addr, length, flags, 0 if last else nxt)
                index = nxt
        if wlen > LEN_MAX:
            raise caller_error("writable-too-large")
        if indirect:
            table_gpa = self._table_gpa(head)
            DESC.pack_into(rings.desc, DESC_SIZE * head, table_gpa, DESC_SIZE * nseg, DESC_F_INDIRECT, 0)
            self._free_head = self._next[head]
        else:
            self._free_head = index
        self.num_free -= needed
        self._ndesc[head] = needed
        self._wlen[head] = wlen
        self._inflight[head] = 1
        # avail->ring[avail_idx % size] = head; published with the index by kick_needed.
        rings.avail_ring[self.avail_idx & (self.size - 1)] = head
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        return head

    # -- kicking -------------------------------------------------------------------------------------------
    def kick_needed(self) -> bool:
        """Publish the avail index; True if the device asked to be notified of what was added since the last call."""
        rings: SplitRings = self._check()
        new = self.avail_idx
        old = self._published
        if new == old:
            return False
        rings.avail_idx[0] = new  # avail->idx, release: descriptors and ring entries visible first
        self._published = new
        # full fence: the index store is visible before we read the device's avail_event / flags.
        if self._event_idx:
            avail_event = rings.avail_event[0]  # used->avail_event
            return need_event(avail_event, new, old)
        return not rings.used_flags[0] & USED_F_NO_NOTIFY  # used->flags

    # -- reaping -------------------------------------------------------------------------------------------
    def _reap_one(self) -> tuple[int, int] | None:
        """The next (head, written length) the device returned, checked, its descriptors free again; or None."""
        rings: SplitRings = self._rings
        last = self.last_used_idx
        if self._used_shadow == last:
            # Everything seen so far is reaped: look at the index again (acquire: elements after it).
            used_idx = rings.used_idx[0]  # used->idx
            if used_idx == last:
                return None
            outstanding = (self._published - last) & 0xFFFF
            if (used_idx - last) & 0xFFFF > outstanding:
                raise self._fail(used_error("used-index-jump", last, used_idx, outstanding))
            self._used_shadow = used_idx
        ident, written = rings.used_entry(last & (self.size - 1))  # used->ring[last_used_idx % size], read once
        if ident >= self.size:
            raise self._fail(used_error("used-id-out-of-range", last, ident, self.size))
        if not self._inflight[ident]:
            raise self._fail(used_error("used-id-not-in-flight", last, ident))
        if written > self._wlen[ident]:
            raise self._fail(used_error("used-len-too-large", last, written, self._wlen[ident]))
        self._free_chain(ident)
        self.last_used_idx = (last + 1) & 0xFFFF
        return ident, written

    def _free_chain(self, head: int) -> None:
        last = head
        for _ in range(self._ndesc[head] - 1):
            last = self._next[last]
        self._next[last] = self._free_head
        self._free_head = head
        self.num_free += self._ndesc[head]
        self._inflight[head] = 0

    def _after_reap(self) -> None:
        if self._event_idx and self._interrupts_enabled:
            rings: SplitRings = self._rings
            rings.used_event[0] = self.last_used_idx  # avail->used_event

    def get_used(self) -> tuple[Any, int] | None:
        """The next (token, written length) the device returned, or None."""
        self._check()
        got = self._reap_one()
        if got is None:
            return None
        self._after_reap()
        head, written = got
        token = self._tokens[head]
        self._tokens[head] = None
        return (head if token is None else token), written

    def pop_used(self, max_count: int | None = None) -> list[tuple[Any, int]]:
        """Every (token, written length) the device returned so far (at most ``max_count``)."""
        self._check()
        out: list[tuple[Any, int]] = []
        while max_count is None or len(out) < max_count:
            got = self._reap_one()
            if got is None:
                break
            head, written = got
            token = self._tokens[head]
            self._tokens[head] = None
            out.append(((head if token is None else token), written))
        if out:
            self._after_reap()
        return out

    def pop_used_into(self, heads: Any, lens: Any) -> int:
        """Reap up to ``len(heads)`` used buffers into the arrays ``heads`` and ``lens``; returns the count."""
        self._check()
        if len(lens) < len(heads):
            raise caller_error("lens-short")
        return self._reap_into(heads, lens)

    def _reap_into(self, heads: Any, lens: Any, batch: Batch | None = None) -> int:
        """Reap into the arrays; ``batch.count`` says how many even when a malformed entry stops the loop (the
        queue is broken then, and writes nothing more into the ring)."""
        n = 0
        try:
            while n < len(heads):
                got = self._reap_one()
                if got is None:
                    break
                heads[n], lens[n] = got
                self._tokens[got[0]] = None
                n += 1
        finally:
            if batch is not None:
                batch.count = n
        if n:
            self._after_reap()
        return n

    # -- interrupts ----------------------------------------------------------------------------------------
    def disable_interrupts(self) -> None:
        """Ask the device not to interrupt (the driver polls)."""
        rings: SplitRings = self._check()
        self._interrupts_enabled = False
        if self._event_idx:
            # used_event one behind what we have seen: the device's used index will not cross it again soon.
            rings.used_event[0] = (self.last_used_idx - 1) & 0xFFFF  # avail->used_event
        else:
            self._avail_flags |= AVAIL_F_NO_INTERRUPT
            rings.avail_flags[0] = self._avail_flags  # avail->flags

    def enable_interrupts(self) -> bool:
        """Ask for an interrupt on the next used buffer; True if some are already there (reap before sleeping)."""
        rings: SplitRings = self._check()
        self._interrupts_enabled = True
        if self._event_idx:
            rings.used_event[0] = self.last_used_idx  # avail->used_event
        else:
            self._avail_flags &= ~AVAIL_F_NO_INTERRUPT
            rings.avail_flags[0] = self._avail_flags  # avail->flags
        # full fence: the store above is visible before we read used->idx again.
        return rings.used_idx[0] != self.last_used_idx  # used->idx

    @property
    def in_flight(self) -> int:
        """Chains added and not yet reaped."""
        return sum(self._inflight)


_U64_MAX = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _parse_buffers(seq: Sequence[tuple[int, int]], writable: bool) -> list[tuple[int, int, bool]]:
    """(address, length) pairs as segments. An address or length no 64-bit argument holds is refused here, before
    any check of the chain (the Cython twin cannot even store it)."""
    segs = []
    for addr, length in seq:
        addr, length = int(addr), int(length)
        if not 0 <= addr <= _U64_MAX:
            raise caller_error("buffer-outside-memory", addr=addr, length=length)
        if not _I64_MIN <= length <= _I64_MAX:
            raise caller_error("buffer-length", length=length)
        segs.append((addr, length, writable))
    return segs
