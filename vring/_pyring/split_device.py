"""Split virtqueues, device side (and what the driver side shares for now): the pure-Python reference twin.

Every shared-memory access names the spec structure it touches (virtio 1.2, 2.7 "Split Virtqueues"). Python has no
memory-ordering primitives; CPython's memoryview accesses are plain loads and stores done in program order under
the GIL, and x86 (the only host the Cython twin supports besides other little-endian ones) keeps stores ordered.
The comments "release", "acquire" and "full fence" mark where the Cython twin puts its barriers.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from .._chainio import gather, write_chain
from .._errors import (
    AddressError,
    VringError,
    broken_error,
    chain_error,
)
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
from .memory import GuestMemory

_DESC = struct.Struct("<QIHH")  # struct virtq_desc {le64 addr; le32 len; le16 flags; le16 next;}
_ELEM = struct.Struct("<II")  # struct virtq_used_elem {le32 id; le32 len;}
_U32_MAX = 0xFFFFFFFF


def _as_list(values: Any) -> list[int]:
    return [int(v) for v in values]


class _Rings:
    """Views of one queue's three areas, translated again whenever guest memory changes.

    The ``*16`` views read and write the 16-bit fields the other side polls (indices, flags, event fields) with
    one native load or store each: ``struct.pack_into`` zeroes its destination and then writes it byte by byte,
    and a peer on another CPU can catch the index half-written (seen with DPDK). Native means little-endian here,
    as for the C twin.
    """

    __slots__ = ("desc", "avail", "used", "desc16", "avail16", "used16", "generation")

    def __init__(self, mem: GuestMemory, layout: Any) -> None:
        # Split: descriptor table, avail ring, used ring. Packed: descriptor ring, driver and device event areas.
        (desc, ndesc), (avail, navail), (used, nused) = layout.areas()
        self.desc = mem.view(desc, ndesc)
        self.avail = mem.view(avail, navail)
        self.used = mem.view(used, nused)
        self.desc16 = self.desc.cast("H")
        self.avail16 = self.avail.cast("H")
        self.used16 = self.used.cast("H")
        self.generation = mem.generation


class Chain:
    """One descriptor chain the device popped: its head and its buffers, device-readable ones first.

    ``readable`` and ``writable`` are lists of zero-copy memoryviews into guest memory (a buffer that crosses two
    adjacent regions is two views); they are made on first use.
    """

    __slots__ = ("head", "readable_len", "writable_len", "indirect", "_pieces", "_readable", "_writable")

    def __init__(self, head: int, pieces: list[tuple[int, int, bool, tuple[int, memoryview]]], readable_len: int,
                 writable_len: int, indirect: bool) -> None:
        self.head = head
        self.readable_len = readable_len
        self.writable_len = writable_len
        self.indirect = indirect
        self._pieces = pieces  # (gpa, length, writable, (region gpa, region view)) per piece
        self._readable: list[memoryview] | None = None
        self._writable: list[memoryview] | None = None

    def _views(self, writable: bool) -> list[memoryview]:
        out = []
        for gpa, length, is_w, (region_gpa, region_view) in self._pieces:
            if is_w == writable:
                off = gpa - region_gpa
                out.append(region_view[off : off + length])
        return out

    @property
    def readable(self) -> list[memoryview]:
        if self._readable is None:
            self._readable = self._views(False)
        return self._readable

    @property
    def writable(self) -> list[memoryview]:
        if self._writable is None:
            self._writable = self._views(True)
        return self._writable

    @property
    def segments(self) -> list[tuple[int, int, bool]]:
        """(guest-physical address, length, device-writable) of every buffer piece, in chain order."""
        return [(gpa, length, w) for gpa, length, w, _ in self._pieces]

    def read(self) -> bytes:
        """All device-readable bytes of the chain, concatenated (a copy)."""
        return gather(self.readable)

    def write(self, data: Any, offset: int = 0) -> int:
        """Scatter ``data`` into the writable buffers from byte ``offset``; returns the bytes written."""
        return write_chain(self, data, offset)

    def __repr__(self) -> str:
        return (f"Chain(head={self.head}, readable_len={self.readable_len}, writable_len={self.writable_len}, "
                f"segments={len(self._pieces)})")


# ---------------------------------------------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------------------------------------------
class _Queue:
    """What both ends share: ring views that follow guest memory changes, and the broken latch."""

    _side = "queue"
    mem: GuestMemory
    layout: SplitLayout | PackedLayout
    _rings: _Rings
    broken: bool
    error: VringError | None

    def _bind(self) -> _Rings:
        if self._rings.generation != self.mem.generation:
            self._rings = _Rings(self.mem, self.layout)
        return self._rings

    def _check(self) -> _Rings:
        if self.broken:
            raise broken_error(self._side, self.error)
        return self._bind()

    def _fail(self, err: VringError) -> VringError:
        self.broken = True
        self.error = err
        return err


class DeviceQueue(_Queue):
    """The device's end of a split virtqueue (what QEMU or a vhost-user backend does). Trusts nothing it reads."""

    _side = "device"

    def __init__(self, mem: GuestMemory, layout: SplitLayout | PackedLayout, features: int = 0, *,
                 max_indirect: int = DEFAULT_MAX_INDIRECT) -> None:
        if max_indirect < 1:
            raise ValueError("max_indirect must be at least 1")
        self.mem = mem
        self.layout = layout
        self.features = Feature(int(features))
        self.size = layout.size
        self.max_indirect = max_indirect
        self._event_idx = bool(features & Feature.EVENT_IDX)
        self._indirect = bool(features & Feature.INDIRECT_DESC)
        self._rings = _Rings(mem, layout)
        self._inflight = bytearray(self.size)  # 1 while the device holds the chain at that head
        self._inflight_wlen = [0] * self.size  # writable bytes of each in-flight chain (caps push's length)
        self.reset()

    # -- state ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (device reset): indices back to 0, no chain in flight, not broken."""
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

    @property
    def state(self) -> QueueState:
        return QueueState(self.last_avail_idx, self.used_idx)

    def restore(self, state: QueueState | tuple[int, ...]) -> None:
        """Resume at a saved state; a ``used_idx`` of None is read from the used ring (vhost-user takeover)."""
        state = QueueState(*state)
        self.reset()
        rings = self._bind()
        self.last_avail_idx = int(state.last_avail_idx) & 0xFFFF
        self._avail_shadow = self.last_avail_idx
        if state.used_idx is None:
            self.used_idx = rings.used16[1]  # used->idx
        else:
            self.used_idx = int(state.used_idx) & 0xFFFF

    # -- popping -------------------------------------------------------------------------------------------
    def avail_pending(self) -> int:
        """How many chains the driver has made available that the device has not popped (0 if broken)."""
        if self.broken:
            return 0
        rings = self._bind()
        return (rings.avail16[1] - self.last_avail_idx) & 0xFFFF  # avail->idx (acquire)

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises MalformedChain (and latches broken) on bad driver input."""
        rings = self._check()
        chain = self._pop_one(rings)
        if chain is not None:
            self._after_pop(rings)
        return chain

    def pop_many(self, n: int) -> list[Chain]:
        """Up to ``n`` available chains."""
        rings = self._check()
        out: list[Chain] = []
        while len(out) < n:
            chain = self._pop_one(rings)
            if chain is None:
                break
            out.append(chain)
        if out:
            self._after_pop(rings)
        return out

    def _after_pop(self, rings: _Rings) -> None:
        # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as QEMU's virtqueue_pop does),
        # unless the device disabled notifications to poll.
        if self._event_idx and self._notify_enabled:
            rings.used16[2 + 4 * self.size] = self.last_avail_idx  # used->avail_event

    def _pop_one(self, rings: _Rings) -> Chain | None:
        chain = self._peek(rings)
        if chain is not None:
            self._commit(chain)
        return chain

    def _commit(self, chain: Chain) -> None:
        self._inflight[chain.head] = 1
        self._inflight_wlen[chain.head] = chain.writable_len
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF

    def _peek(self, rings: _Rings) -> Chain | None:
        """Read and check the next available chain without taking it."""
        size = self.size
        if self._avail_shadow == self.last_avail_idx:
            # Everything seen so far is consumed: look at the index again (acquire: ring entries after it).
            avail_idx = rings.avail16[1]  # avail->idx
            if avail_idx == self.last_avail_idx:
                return None
            if (avail_idx - self.last_avail_idx) & 0xFFFF > size:
                raise self._fail(chain_error("avail-index-jump", 0, 0, False, avail_idx, self.last_avail_idx))
            self._avail_shadow = avail_idx
        head = rings.avail16[2 + (self.last_avail_idx & (size - 1))]  # avail->ring[]
        if head >= size:
            raise self._fail(chain_error("head-out-of-range", head, 0, False, size))
        if self._inflight[head]:
            raise self._fail(chain_error("head-in-flight", head, head, False))
        return self._walk(rings, head)

    def pop_batch(self, batch: Batch) -> int:
        """Pop up to ``batch.capacity`` chains into ``batch`` (heads, segments, totals); returns the count.

        A chain whose segments no longer fit the batch stays in the ring for the next call.
        """
        rings = self._check()
        n = 0
        seg = 0
        batch.seg_start[0] = 0
        try:
            while n < batch.capacity:
                chain = self._peek(rings)
                if chain is None:
                    break
                pieces = chain.segments
                if seg + len(pieces) > batch.max_segments:
                    if n == 0:
                        raise ValueError(f"a chain of {len(pieces)} segments does not fit a batch of "
                                         f"{batch.max_segments} segments")
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
        finally:
            batch.count = n  # chains popped before an error are the device's to finish
        if n:
            self._after_pop(rings)
        return n

    def _walk(self, rings: _Rings, head: int) -> Chain:
        table = rings.desc
        limit = self.size  # entries of the table being walked
        index = head
        in_indirect = False
        was_indirect = False
        count = 0
        readable_len = 0
        writable_len = 0
        seen_writable = False
        pieces: list[tuple[int, int, bool, tuple[int, memoryview]]] = []
        while True:
            count += 1
            if count > limit:
                raise self._fail(chain_error("chain-loop", head, index, in_indirect, limit))
            # struct virtq_desc, read once: every check and every use below works on this copy.
            addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * index)
            if flags & DESC_F_INDIRECT:
                table = self._indirect_view(head, index, in_indirect, addr, length, flags)
                limit = length // DESC_SIZE
                index = 0
                count = 0
                in_indirect = was_indirect = True
                continue
            readable_len, writable_len, seen_writable = self._piece(
                pieces, head, index, in_indirect, addr, length, bool(flags & DESC_F_WRITE), readable_len,
                writable_len, seen_writable)
            if not flags & DESC_F_NEXT:
                break
            if nxt >= limit:
                raise self._fail(chain_error("next-out-of-range", head, index, in_indirect, nxt, limit))
            index = nxt
        return Chain(head, pieces, readable_len, writable_len, was_indirect)

    def _piece(self, pieces: list, head: int, index: int, in_indirect: bool, addr: int, length: int,
               writable: bool, readable_len: int, writable_len: int, seen_writable: bool) -> tuple[int, int, bool]:
        """Check one buffer of a chain and add its pieces (one per region it crosses): both layouts, direct
        and indirect descriptors, the same checks in the same order."""
        if length == 0:
            raise self._fail(chain_error("zero-length", head, index, in_indirect))
        if writable:
            seen_writable = True
            writable_len += length
        elif seen_writable:
            raise self._fail(chain_error("readable-after-writable", head, index, in_indirect))
        else:
            readable_len += length
        if readable_len + writable_len > _U32_MAX:
            raise self._fail(chain_error("chain-too-large", head, index, in_indirect))
        try:
            for region, offset, piece in self.mem.pieces(addr, length):
                pieces.append((region.gpa + offset, piece, writable, (region.gpa, region.view)))
        except AddressError:
            raise self._fail(chain_error("buffer-outside-memory", head, index, in_indirect, addr,
                                         length)) from None
        return readable_len, writable_len, seen_writable

    def _indirect_view(self, head: int, index: int, in_indirect: bool, addr: int, length: int,
                       flags: int) -> memoryview:
        """The indirect table a descriptor refers to, after every check the spec asks of it (both layouts)."""
        if not self._indirect:
            raise self._fail(chain_error("indirect-not-negotiated", head, index, in_indirect))
        if in_indirect:
            raise self._fail(chain_error("nested-indirect", head, index, in_indirect))
        if flags & DESC_F_NEXT:
            raise self._fail(chain_error("indirect-with-next", head, index, in_indirect))
        if length == 0:
            raise self._fail(chain_error("indirect-len-zero", head, index, in_indirect))
        if length % DESC_SIZE:
            raise self._fail(chain_error("indirect-len-unaligned", head, index, in_indirect, length))
        if length // DESC_SIZE > self.max_indirect:
            raise self._fail(chain_error("indirect-too-large", head, index, in_indirect, length, self.max_indirect))
        try:
            return self.mem.view(addr, length)
        except AddressError:
            raise self._fail(chain_error("indirect-outside-memory", head, index, in_indirect, addr,
                                         length)) from None

    # -- pushing -------------------------------------------------------------------------------------------
    def _check_push(self, head: int, written: int) -> None:
        if not 0 <= head < self.size or not self._inflight[head]:
            raise ValueError(f"head {head} is not a chain the device holds")
        if not 0 <= written <= self._inflight_wlen[head]:
            raise ValueError(f"written length {written} exceeds the chain's {self._inflight_wlen[head]} "
                             "writable bytes")

    def _put_used(self, rings: _Rings, head: int, written: int) -> None:
        # used->ring[used_idx % size] = {id, len}; plain stores, published by the release of used->idx.
        _ELEM.pack_into(rings.used, 4 + 8 * (self.used_idx & (self.size - 1)), head, written)
        self._inflight[head] = 0
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def push(self, head: int, written: int = 0) -> None:
        """Return the chain at ``head`` to the driver with ``written`` bytes written into its writable part."""
        rings = self._check()
        head = int(head)
        written = int(written)
        self._check_push(head, written)
        self._put_used(rings, head, written)
        self._publish_used(rings)

    def push_many(self, heads: Iterable[int], lens: Iterable[int]) -> None:
        """Return several chains; the used index is published once, after all their elements."""
        rings = self._check()
        heads = _as_list(heads)
        lens = _as_list(lens)
        if len(heads) != len(lens):
            raise ValueError("heads and lens differ in length")
        seen = set()
        for head, written in zip(heads, lens):
            self._check_push(head, written)
            if head in seen:
                raise ValueError(f"head {head} is pushed twice in one batch")
            seen.add(head)
        for head, written in zip(heads, lens):
            self._put_used(rings, head, written)
        if heads:
            self._publish_used(rings)

    def _publish_used(self, rings: _Rings) -> None:
        rings.used16[1] = self.used_idx  # used->idx, release: the elements are visible first

    def push_batch(self, batch: Batch, count: int | None = None) -> None:
        """Return the first ``count`` (default ``batch.count``) chains of ``batch`` with ``batch.lens`` bytes
        written; the used index is published once."""
        n = batch.count if count is None else count
        if not 0 <= n <= batch.capacity:
            raise ValueError(f"count {n} is outside the batch's capacity {batch.capacity}")
        self.push_many(batch.heads[:n], batch.lens[:n])

    # -- notifications -------------------------------------------------------------------------------------
    def notify_needed(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        rings = self._check()
        # full fence: our used->idx store must be visible before we read the driver's used_event / flags.
        new = self.used_idx
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if valid and new == old:
            return False
        if self._event_idx:
            used_event = rings.avail16[2 + self.size]  # avail->used_event
            return not valid or need_event(used_event, new, old)
        return not rings.avail16[0] & AVAIL_F_NO_INTERRUPT  # avail->flags

    def enable_notifications(self) -> bool:
        """Ask the driver to kick again; returns True if chains are already available (handle them first)."""
        rings = self._check()
        self._notify_enabled = True
        if self._event_idx:
            rings.used16[2 + 4 * self.size] = self.last_avail_idx  # used->avail_event
        else:
            self._used_flags &= ~USED_F_NO_NOTIFY
            rings.used16[0] = self._used_flags  # used->flags
        # full fence: the store above is visible before we look at avail->idx again.
        return rings.avail16[1] != self.last_avail_idx  # avail->idx

    def disable_notifications(self) -> None:
        """Tell the driver kicks are not needed (the device polls); with EVENT_IDX avail_event just stops moving."""
        rings = self._check()
        self._notify_enabled = False
        if not self._event_idx:
            self._used_flags |= USED_F_NO_NOTIFY
            rings.used16[0] = self._used_flags  # used->flags
