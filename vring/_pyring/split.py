"""Split virtqueues, driver and device side: the pure-Python reference twin.

Every shared-memory access names the spec structure it touches (virtio 1.2, 2.7 "Split Virtqueues"). Python has no
memory-ordering primitives; CPython's memoryview accesses are plain loads and stores done in program order under
the GIL, and x86 (the only host the Cython twin supports besides other little-endian ones) keeps stores ordered.
The comments "release", "acquire" and "full fence" mark where the Cython twin puts its barriers.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Sequence

from .._chainio import gather, write_chain
from .._errors import (
    AddressError,
    QueueFull,
    VringError,
    broken_error,
    chain_error,
    used_error,
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


# ---------------------------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------------------------
class DriverQueue(_Queue):
    """The driver's end of a split virtqueue (what a guest kernel does). Trusts nothing the device writes."""

    _side = "driver"

    def __init__(self, mem: GuestMemory, layout: SplitLayout | PackedLayout, features: int = 0, *,
                 indirect_area: int | None = None, indirect_max: int = 16, indirect_threshold: int = 2) -> None:
        if not 1 <= indirect_max <= DEFAULT_MAX_INDIRECT:
            raise ValueError(f"indirect_max must be between 1 and {DEFAULT_MAX_INDIRECT}")
        if indirect_threshold < 1:
            raise ValueError("indirect_threshold must be at least 1")
        self.mem = mem
        self.layout = layout
        self.features = Feature(int(features))
        self.size = layout.size
        self._event_idx = bool(features & Feature.EVENT_IDX)
        self.indirect_area = indirect_area
        self.indirect_max = indirect_max
        self.indirect_threshold = indirect_threshold
        self._use_indirect = bool(features & Feature.INDIRECT_DESC) and indirect_area is not None
        if indirect_area is not None:
            mem.view(indirect_area, self.indirect_area_bytes(self.size, indirect_max))  # must lie in one region
        self._rings = _Rings(mem, layout)
        self.reset()

    @staticmethod
    def indirect_area_bytes(size: int, indirect_max: int = 16) -> int:
        """Bytes of guest memory the indirect tables need: one table of ``indirect_max`` entries per head."""
        return size * indirect_max * DESC_SIZE

    def reset(self) -> None:
        """Zero the three ring areas and start over with every descriptor free."""
        rings = self._bind()
        for view in (rings.desc, rings.avail, rings.used):
            view[:] = bytes(len(view))
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
        rings = self._check()
        segs = [(int(a), int(n), False) for a, n in out] + [(int(a), int(n), True) for a, n in in_]
        head = self._add(rings, segs)
        self._tokens[head] = token
        return head

    def add_many(self, addrs: Any, lens: Any, writable: Any, chain_segs: Any, heads: Any = None) -> int:
        """Add chains from flat segment arrays; returns how many were added (stops early when the ring is full).

        Chain k takes the next ``chain_segs[k]`` segments (or ``chain_segs`` each, if an int); a segment is
        (``addrs[i]``, ``lens[i]``) and device-writable where ``writable[i]`` is true. Head indices go into
        ``heads`` if given.
        """
        rings = self._check()
        addrs = _as_list(addrs)
        lens = _as_list(lens)
        writable = _as_list(writable)
        if not len(addrs) == len(lens) == len(writable):
            raise ValueError("addrs, lens and writable differ in length")
        if isinstance(chain_segs, int):
            if chain_segs < 1 or len(addrs) % chain_segs:
                raise ValueError("the segments do not split into chains of chain_segs each")
            counts = [chain_segs] * (len(addrs) // chain_segs)
        else:
            counts = _as_list(chain_segs)
            if sum(counts) != len(addrs):
                raise ValueError("chain_segs does not add up to the number of segments")
        if heads is not None and len(heads) < len(counts):
            raise ValueError("heads is shorter than the number of chains")
        start = 0
        done = 0
        for count in counts:
            segs = [(addrs[i], lens[i], bool(writable[i])) for i in range(start, start + count)]
            if self.num_free < self._needed(len(segs)):
                break
            head = self._add(rings, segs)
            if heads is not None:
                heads[done] = head
            start += count
            done += 1
        return done

    def add_batch(self, batch: Batch, count: int) -> int:
        """Add the first ``count`` chains described in ``batch`` (``nsegs`` and the ``seg_*`` arrays); their heads
        go into ``batch.heads``. Returns how many were added (stops early when the ring is full)."""
        rings = self._check()
        if not 0 <= count <= batch.capacity:
            raise ValueError(f"count {count} is outside the batch's capacity {batch.capacity}")
        start = 0
        done = 0
        try:
            for k in range(count):
                nseg = int(batch.nsegs[k])
                if start + nseg > batch.max_segments:
                    raise ValueError(f"chain {k} runs past the batch's {batch.max_segments} segments")
                if self.num_free < self._needed(nseg):
                    break
                segs = [(int(batch.seg_addr[i]), int(batch.seg_len[i]), bool(batch.seg_writable[i]))
                        for i in range(start, start + nseg)]
                batch.heads[k] = self._add(rings, segs)
                start += nseg
                done += 1
        finally:
            batch.count = done  # chains added before an error stay added
        return done

    def reap_batch(self, batch: Batch) -> int:
        """Reap up to ``batch.capacity`` used buffers into ``batch.heads`` and ``batch.lens``; returns the count."""
        n = self.pop_used_into(batch.heads, batch.lens)
        batch.count = n
        return n

    def _reserve(self, nseg: int) -> tuple[bool, int]:
        """The checks before a chain of ``nseg`` buffers takes descriptors: (indirect?, descriptors needed)."""
        if nseg == 0:
            raise ValueError("a chain needs at least one buffer")
        indirect = self._indirect_for(nseg)
        if not indirect and nseg > self.size:
            raise ValueError(f"a chain of {nseg} buffers is longer than the queue size {self.size}")
        needed = self._needed(nseg)
        if self.num_free < needed:
            raise QueueFull(f"{needed} descriptors needed, {self.num_free} free")
        return indirect, needed

    def _check_buffer(self, addr: int, length: int, writable: bool, seen_writable: bool) -> bool:
        """One buffer of a chain the caller adds; returns whether a device-writable one has been seen."""
        if not 0 < length <= _U32_MAX:
            raise ValueError(f"buffer length {length} is not between 1 and 2**32 - 1")
        if not writable and seen_writable:
            raise ValueError("device-readable buffers must come before device-writable ones")
        if not self.mem.contains(addr, length):
            raise AddressError(f"buffer {addr:#x} (+{length}) is outside guest memory")
        return seen_writable or writable

    def _needed(self, nseg: int) -> int:
        return 1 if self._indirect_for(nseg) else nseg

    def _indirect_for(self, nseg: int) -> bool:
        return self._use_indirect and self.indirect_threshold <= nseg <= self.indirect_max

    def _table_gpa(self, head: int) -> int:
        """Where the indirect table of the chain at ``head`` lives (only asked when indirect tables are in use)."""
        assert self.indirect_area is not None
        return self.indirect_area + head * self.indirect_max * DESC_SIZE

    def _add(self, rings: _Rings, segs: list[tuple[int, int, bool]]) -> int:
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
                _DESC.pack_into(table, DESC_SIZE * k, addr, length, flags, 0 if last else k + 1)
            else:  # struct virtq_desc in the descriptor table, linked along the private free list
                nxt = self._next[index]
                _DESC.pack_into(table, DESC_SIZE * index, addr, length, flags, 0 if last else nxt)
                index = nxt
        if wlen > _U32_MAX:
            raise ValueError("the chain's writable length exceeds 2**32 - 1")
        if indirect:
            table_gpa = self._table_gpa(head)
            _DESC.pack_into(rings.desc, DESC_SIZE * head, table_gpa, DESC_SIZE * nseg, DESC_F_INDIRECT, 0)
            self._free_head = self._next[head]
        else:
            self._free_head = index
        self.num_free -= needed
        self._ndesc[head] = needed
        self._wlen[head] = wlen
        self._inflight[head] = 1
        # avail->ring[avail_idx % size] = head; published with the index by kick_needed.
        rings.avail16[2 + (self.avail_idx & (self.size - 1))] = head
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        return head

    # -- kicking -------------------------------------------------------------------------------------------
    def kick_needed(self) -> bool:
        """Publish the avail index; True if the device asked to be notified of what was added since the last call."""
        rings = self._check()
        new = self.avail_idx
        old = self._published
        if new == old:
            return False
        rings.avail16[1] = new  # avail->idx, release: descriptors and ring entries visible first
        self._published = new
        # full fence: the index store is visible before we read the device's avail_event / flags.
        if self._event_idx:
            avail_event = rings.used16[2 + 4 * self.size]  # used->avail_event
            return need_event(avail_event, new, old)
        return not rings.used16[0] & USED_F_NO_NOTIFY  # used->flags

    # -- reaping -------------------------------------------------------------------------------------------
    def _reap_one(self, rings: _Rings) -> tuple[int, int] | None:
        last = self.last_used_idx
        if self._used_shadow == last:
            # Everything seen so far is reaped: look at the index again (acquire: elements after it).
            used_idx = rings.used16[1]  # used->idx
            if used_idx == last:
                return None
            outstanding = (self._published - last) & 0xFFFF
            if (used_idx - last) & 0xFFFF > outstanding:
                raise self._fail(used_error("used-index-jump", last, used_idx, outstanding))
            self._used_shadow = used_idx
        ident, written = _ELEM.unpack_from(rings.used, 4 + 8 * (last & (self.size - 1)))  # used->ring[], once
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

    def _after_reap(self, rings: _Rings) -> None:
        if self._event_idx and self._interrupts_enabled:
            rings.avail16[2 + self.size] = self.last_used_idx  # avail->used_event

    def get_used(self) -> tuple[Any, int] | None:
        """The next (token, written length) the device returned, or None."""
        rings = self._check()
        got = self._reap_one(rings)
        if got is None:
            return None
        self._after_reap(rings)
        head, written = got
        token = self._tokens[head]
        self._tokens[head] = None
        return (head if token is None else token), written

    def pop_used(self, max_count: int | None = None) -> list[tuple[Any, int]]:
        """Every (token, written length) the device returned so far (at most ``max_count``)."""
        rings = self._check()
        out: list[tuple[Any, int]] = []
        while max_count is None or len(out) < max_count:
            got = self._reap_one(rings)
            if got is None:
                break
            head, written = got
            token = self._tokens[head]
            self._tokens[head] = None
            out.append(((head if token is None else token), written))
        if out:
            self._after_reap(rings)
        return out

    def pop_used_into(self, heads: Any, lens: Any) -> int:
        """Reap up to ``len(heads)`` used buffers into the arrays ``heads`` and ``lens``; returns the count."""
        rings = self._check()
        if len(lens) < len(heads):
            raise ValueError("lens is shorter than heads")
        n = 0
        while n < len(heads):
            got = self._reap_one(rings)
            if got is None:
                break
            heads[n], lens[n] = got
            self._tokens[got[0]] = None
            n += 1
        if n:
            self._after_reap(rings)
        return n

    # -- interrupts ----------------------------------------------------------------------------------------
    def disable_interrupts(self) -> None:
        """Ask the device not to interrupt (the driver polls)."""
        rings = self._check()
        self._interrupts_enabled = False
        if self._event_idx:
            # used_event one behind what we have seen: the device's used index will not cross it again soon.
            rings.avail16[2 + self.size] = (self.last_used_idx - 1) & 0xFFFF  # avail->used_event
        else:
            self._avail_flags |= AVAIL_F_NO_INTERRUPT
            rings.avail16[0] = self._avail_flags  # avail->flags

    def enable_interrupts(self) -> bool:
        """Ask for an interrupt on the next used buffer; True if some are already there (reap before sleeping)."""
        rings = self._check()
        self._interrupts_enabled = True
        if self._event_idx:
            rings.avail16[2 + self.size] = self.last_used_idx  # avail->used_event
        else:
            self._avail_flags &= ~AVAIL_F_NO_INTERRUPT
            rings.avail16[0] = self._avail_flags  # avail->flags
        # full fence: the store above is visible before we read used->idx again.
        return rings.used16[1] != self.last_used_idx  # used->idx

    @property
    def in_flight(self) -> int:
        """Chains added and not yet reaped."""
        return sum(self._inflight)
