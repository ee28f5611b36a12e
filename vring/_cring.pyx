# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Split virtqueues over raw pointers: the Cython twin of ``vring._pyring``.

Pointers to guest memory come once from the buffer protocol; ring pointers are translated again only when guest
memory changes. The hot functions are ``noexcept nogil`` C; every bound is checked by hand against the queue size
or a region's size, and shared memory is read through ``barrier.h``. Errors are found in C and worded in Python by
``vring._errors`` so that both twins say exactly the same thing.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset, memcpy
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE

cdef extern from "Python.h":
    ctypedef struct PyThreadState
    PyThreadState *PyEval_SaveThread()
    void PyEval_RestoreThread(PyThreadState *)
cimport numpy as cnp

import numpy as np

from ._chainio import gather, write_chain
from ._errors import (
    CHAIN_REASONS, USED_REASONS, AddressError, LayoutError, QueueFull, broken_error, chain_error, used_error,
)
from ._features import DEFAULT_MAX_INDIRECT, Feature
from ._layout import PackedLayout
from ._state import QueueState
from ._batch import BatchMethods, batch_arrays
from ._buffers import as_byte_view, map_fd

cnp.import_array()

cdef extern from *:
    """
    #ifndef VRING_CFLAGS
    #define VRING_CFLAGS ""
    #endif
    #ifdef __VERSION__
    #define VRING_COMPILER_VERSION __VERSION__
    #else
    #define VRING_COMPILER_VERSION "unknown"
    #endif
    """
    const char *VRING_CFLAGS
    const char *VRING_COMPILER_VERSION

# How this extension was compiled (reported by `vring info` and the benchmarks).
BUILD_CFLAGS = VRING_CFLAGS.decode()
COMPILER = VRING_COMPILER_VERSION.decode()

cdef enum:
    DESC_F_NEXT = 1
    DESC_F_WRITE = 2
    DESC_F_INDIRECT = 4
    AVAIL_F_NO_INTERRUPT = 1
    USED_F_NO_NOTIFY = 1
    PACKED_F_AVAIL = 1 << 7
    PACKED_F_USED = 1 << 15
    EVENT_ENABLE = 0
    EVENT_DISABLE = 1
    EVENT_DESC = 2

cdef extern from *:
    """
    #define VRING_U32_MAX 0xFFFFFFFFull
    """
    const uint64_t U32_MAX "VRING_U32_MAX"

# Chain check codes: index into vring._errors.CHAIN_REASONS, plus one.
cdef enum:
    E_AVAIL_JUMP = 1
    E_HEAD_RANGE
    E_HEAD_INFLIGHT
    E_NEXT_RANGE
    E_LOOP
    E_INDIRECT_NOT_NEGOTIATED
    E_NESTED_INDIRECT
    E_INDIRECT_NEXT
    E_INDIRECT_ZERO
    E_INDIRECT_UNALIGNED
    E_INDIRECT_LARGE
    E_INDIRECT_MEMORY
    E_READABLE_AFTER_WRITABLE
    E_ZERO_LENGTH
    E_CHAIN_LARGE
    E_BUFFER_MEMORY
    E_BUFFER_ID_RANGE
    E_BUFFER_ID_INFLIGHT
    E_CHAIN_FLAGS
    E_CHAIN_TOO_LONG
    E_PACKED_TABLE_NEXT
    E_NOMEM

# Used ring check codes: index into USED_REASONS, plus one.
cdef enum:
    U_INDEX_JUMP = 1
    U_ID_RANGE
    U_NOT_IN_FLIGHT
    U_LEN_LARGE
    U_WRAP

# Batch loops shorter than this keep the GIL: releasing and taking it back costs more than such a loop.
cdef enum:
    NOGIL_MIN = 64


cdef inline PyThreadState *gil_release_if(bint release) noexcept:
    return PyEval_SaveThread() if release else NULL


cdef inline void gil_restore(PyThreadState *ts) noexcept:
    if ts != NULL:
        PyEval_RestoreThread(ts)

assert CHAIN_REASONS[E_BUFFER_MEMORY - 1] == "buffer-outside-memory"
assert CHAIN_REASONS[E_PACKED_TABLE_NEXT - 1] == "indirect-next" and len(CHAIN_REASONS) == E_NOMEM - 1
assert USED_REASONS[U_WRAP - 1] == "used-wrap" and len(USED_REASONS) == U_WRAP


# ---------------------------------------------------------------------------------------------------------------
# Guest memory
# ---------------------------------------------------------------------------------------------------------------
cdef inline int mem_find(MemMap *m, uint64_t gpa) noexcept nogil:
    """Index of the region holding ``gpa``, or -1. ``gpa - start < size`` is false when gpa < start (unsigned)."""
    cdef int i = m.hint
    if i < m.n and gpa - m.regions[i].gpa < m.regions[i].size:
        return i
    for i in range(m.n):
        if gpa - m.regions[i].gpa < m.regions[i].size:
            m.hint = i
            return i
    return -1


cdef inline unsigned char *mem_ptr(MemMap *m, uint64_t gpa, uint64_t length) noexcept nogil:
    """Host pointer of [gpa, gpa + length) if it lies inside one region, else NULL (length >= 1)."""
    cdef int i = mem_find(m, gpa)
    if i < 0:
        return NULL
    cdef uint64_t offset = gpa - m.regions[i].gpa
    if length > m.regions[i].size - offset:
        return NULL
    return m.regions[i].host + offset


cdef inline bint mem_contains(MemMap *m, uint64_t gpa, uint64_t length) noexcept nogil:
    """Whether [gpa, gpa + length) is guest memory, crossing adjacent regions if need be (length >= 1)."""
    cdef int i = m.hint
    cdef uint64_t offset, piece
    if gpa + (length - 1) < gpa:  # wraps past 2**64
        return False
    # Fast path: inside the region of the last hit.
    if i < m.n and gpa - m.regions[i].gpa < m.regions[i].size and length <= m.regions[i].size - (gpa - m.regions[i].gpa):
        return True
    while length:
        i = mem_find(m, gpa)
        if i < 0:
            return False
        offset = gpa - m.regions[i].gpa
        piece = m.regions[i].size - offset
        if piece >= length:
            return True
        gpa += piece
        length -= piece
    return True


cdef class GuestMemory:
    """Guest-physical memory made of regions, each a host buffer; every translation is bounds-checked.

    A range that crosses from one region into another adjacent in guest-physical address is legal and comes back
    as one view per piece (``views``); ``view`` wants a range inside one region.
    """

    def __cinit__(self):
        self.map.regions = NULL
        self.map.n = 0
        self.map.hint = 0
        self._regions = []
        self._views = []
        self.generation = 0

    def __dealloc__(self):
        free(self.map.regions)

    def add_region(self, gpa, buffer):
        """Make ``buffer`` (bytearray, mmap, numpy array, ...) the guest memory at ``gpa``."""
        self._insert(gpa, as_byte_view(buffer), buffer)

    def add_region_fd(self, gpa, size, fd, offset=0):
        """Map ``size`` bytes of ``fd`` from ``offset`` (shared, read-write) as the guest memory at ``gpa``."""
        if size <= 0:
            raise AddressError(f"region size {size} is not positive")
        mapping, view = map_fd(fd, size, offset)
        try:
            self._insert(gpa, view, mapping)
        except BaseException:
            view.release()
            mapping.close()
            raise

    def remove_region(self, gpa):
        """Forget the region that starts at ``gpa`` (views already handed out keep its memory alive)."""
        for i, region in enumerate(self._regions):
            if region[0] == gpa:
                self._rebuild(self._regions[:i] + self._regions[i + 1:])
                return
        raise AddressError(f"no region starts at {gpa:#x}")

    def _insert(self, gpa, view, owner):
        size = view.nbytes
        if not isinstance(gpa, int) or gpa < 0 or size == 0 or gpa + size - 1 > 0xFFFFFFFFFFFFFFFF:
            raise AddressError(f"region {gpa!r} (+{size}) is empty or not a 64-bit guest-physical range")
        for rgpa, rsize, _, _ in self._regions:
            if gpa < rgpa + rsize and rgpa < gpa + size:
                raise AddressError(f"region {gpa:#x} (+{size:#x}) overlaps region {rgpa:#x} (+{rsize:#x})")
        self._rebuild(sorted(self._regions + [(gpa, size, view, owner)], key=lambda r: r[0]))

    cdef _rebuild(self, list regions):
        cdef Py_buffer buf
        cdef Region *table = <Region *>malloc(max(1, len(regions)) * sizeof(Region))
        if table == NULL:
            raise MemoryError()
        try:
            for i, (gpa, size, view, _) in enumerate(regions):
                # The memoryview in the list keeps the export alive; the pointer stays valid while it is listed.
                PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE | PyBUF_WRITABLE)
                table[i].gpa = gpa
                table[i].size = size
                table[i].host = <unsigned char *>buf.buf
                PyBuffer_Release(&buf)
        except BaseException:
            free(table)
            raise
        free(self.map.regions)
        self.map.regions = table
        self.map.n = len(regions)
        self.map.hint = 0
        self._regions = regions
        self._views = [r[2] for r in regions]
        self.generation += 1

    @property
    def regions(self):
        """(guest-physical address, size) of every region, in address order."""
        return [(r[0], r[1]) for r in self._regions]

    def pieces(self, gpa, length):
        """(region index, offset in region, length) pieces covering [gpa, gpa + length), or AddressError."""
        if length < 0 or gpa < 0 or gpa + length - 1 > 0xFFFFFFFFFFFFFFFF:
            raise AddressError(f"range {gpa:#x} (+{length}) is not a 64-bit guest-physical range")
        out = []
        cdef int i
        g = gpa  # a Python int: it may reach 2**64 once the last piece is taken
        while length > 0:
            i = mem_find(&self.map, g)
            if i < 0:
                raise AddressError(f"guest-physical address {g:#x} is outside guest memory")
            offset = g - self.map.regions[i].gpa
            piece = min(length, self.map.regions[i].size - offset)
            out.append((i, offset, piece))
            g += piece
            length -= piece
        return out

    def contains(self, gpa, length):
        """Whether [gpa, gpa + length) lies in guest memory (adjacent regions allowed)."""
        try:
            self.pieces(gpa, length)
        except AddressError:
            return False
        return True

    def view(self, gpa, length):
        """A zero-copy, writable view of [gpa, gpa + length), which must lie inside one region."""
        pieces = self.pieces(gpa, length)
        if len(pieces) > 1:
            raise AddressError(f"range {gpa:#x} (+{length}) spans {len(pieces)} regions; use views()")
        if not pieces:
            return memoryview(b"")
        i, offset, piece = pieces[0]
        return self._views[i][offset:offset + piece]

    def views(self, gpa, length):
        """Zero-copy views of [gpa, gpa + length), one per region the range crosses."""
        return [self._views[i][offset:offset + piece] for i, offset, piece in self.pieces(gpa, length)]

    def read(self, gpa, length):
        return b"".join(bytes(v) for v in self.views(gpa, length))

    def write(self, gpa, data):
        src = memoryview(data).cast("B")
        done = 0
        for view in self.views(gpa, src.nbytes):
            view[:] = src[done:done + view.nbytes]
            done += view.nbytes


cdef int bind_area(GuestMemory mem, uint64_t gpa, uint64_t length, unsigned char **out) except -1:
    cdef unsigned char *p = mem_ptr(&mem.map, gpa, length)
    if p == NULL:
        mem.view(gpa, length)  # raises the AddressError that says why
        raise AddressError(f"range {gpa:#x} (+{length}) is not inside one region")
    if (<size_t>p) & 1:
        raise LayoutError(f"ring area at {gpa:#x} is at an odd host address; 16-bit fields need 2-byte alignment",
                          "host-alignment")
    out[0] = p
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Chain
# ---------------------------------------------------------------------------------------------------------------
cdef class Chain:
    """One descriptor chain the device popped: its head and its buffers, device-readable ones first.

    ``readable`` and ``writable`` are lists of zero-copy memoryviews into guest memory (a buffer that crosses two
    adjacent regions is two views); they are made on first use.
    """

    def __cinit__(self):
        self._segs = self._inline
        self._nseg = 0

    def __dealloc__(self):
        if self._segs != self._inline:
            free(self._segs)

    def __init__(self):
        raise TypeError("chains come from DeviceQueue.pop()")

    cdef list _views(self, bint writable):
        cdef uint32_t i
        cdef Seg *s
        out = []
        for i in range(self._nseg):
            s = &self._segs[i]
            if s.writable == writable:
                out.append(self._region_views[s.region][s.offset:s.offset + s.len])
        return out

    @property
    def readable(self):
        if self._readable is None:
            self._readable = self._views(False)
        return self._readable

    @property
    def writable(self):
        if self._writable is None:
            self._writable = self._views(True)
        return self._writable

    @property
    def segments(self):
        """(guest-physical address, length, device-writable) of every buffer piece, in chain order."""
        return [(self._segs[i].gpa, self._segs[i].len, bool(self._segs[i].writable)) for i in range(self._nseg)]

    def read(self):
        """All device-readable bytes of the chain, concatenated (a copy)."""
        return gather(self.readable)

    def write(self, data, offset=0):
        """Scatter ``data`` into the writable buffers from byte ``offset``; returns the bytes written."""
        return write_chain(self, data, offset)

    def __repr__(self):
        return (f"Chain(head={self.head}, readable_len={self.readable_len}, writable_len={self.writable_len}, "
                f"segments={self._nseg})")


cdef Chain make_chain(SplitDev *q, uint16_t head, list region_views):
    cdef Chain c = Chain.__new__(Chain)
    c.head = head
    c.readable_len = q.readable_len
    c.writable_len = q.writable_len
    c.indirect = q.was_indirect
    if q.nseg > 4:
        c._segs = <Seg *>malloc(q.nseg * sizeof(Seg))
        if c._segs == NULL:
            c._segs = c._inline
            raise MemoryError()
    memcpy(c._segs, q.segs, q.nseg * sizeof(Seg))
    c._nseg = q.nseg
    c._region_views = region_views
    return c



# ---------------------------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------------------------
cdef class Batch:
    """Arrays for up to ``capacity`` chains and ``max_segments`` buffer segments, reused from call to call.

    Device side: ``DeviceQueue.pop_batch`` fills ``heads``, ``nsegs``, ``seg_start``, the ``seg_*`` arrays and the
    ``readable_len`` / ``writable_len`` totals; the device sets ``lens`` (bytes written) and calls ``push_batch``.
    Driver side: fill ``nsegs`` and the ``seg_*`` arrays (chain k takes the next ``nsegs[k]`` segments), call
    ``DriverQueue.add_batch``, which fills ``heads``; ``reap_batch`` fills ``heads`` and ``lens``.
    ``count`` is how many chains the last call filled. The arrays are bound once: batch calls pass only the batch.
    """

    def __init__(self, capacity, max_segments=None):
        self.capacity, self.max_segments, arrays = batch_arrays(capacity, max_segments)
        self.count = 0
        (self.heads, self.lens, self.nsegs, self.seg_start, self.readable_len, self.writable_len, self.seg_addr,
         self.seg_len, self.seg_writable) = arrays
        self.heads_p = <uint16_t *>cnp.PyArray_DATA(self.heads)
        self.lens_p = <uint32_t *>cnp.PyArray_DATA(self.lens)
        self.nsegs_p = <uint32_t *>cnp.PyArray_DATA(self.nsegs)
        self.seg_start_p = <uint32_t *>cnp.PyArray_DATA(self.seg_start)
        self.readable_p = <uint32_t *>cnp.PyArray_DATA(self.readable_len)
        self.writable_p = <uint32_t *>cnp.PyArray_DATA(self.writable_len)
        self.seg_addr_p = <uint64_t *>cnp.PyArray_DATA(self.seg_addr)
        self.seg_len_p = <uint32_t *>cnp.PyArray_DATA(self.seg_len)
        self.seg_writable_p = <uint8_t *>cnp.PyArray_DATA(self.seg_writable)

    # Not on any hot path: the pure-Python twin's code serves both.
    set_chains = BatchMethods.set_chains
    segments = BatchMethods.segments


# ---------------------------------------------------------------------------------------------------------------
# Device side, in C
# ---------------------------------------------------------------------------------------------------------------
cdef inline int dev_fail(ChainError *err, int reason, uint32_t head, uint32_t index, bint in_indirect,
                         uint64_t a, uint64_t b) noexcept nogil:
    err.reason = reason
    err.head = head
    err.index = index
    err.in_indirect = in_indirect
    err.a = a
    err.b = b
    return reason


cdef inline int dev_add_seg(SplitDev *q, uint64_t gpa, uint64_t offset, uint32_t length, int region,
                            bint writable) noexcept nogil:
    cdef Seg *grown
    if q.nseg == q.segs_cap:
        grown = <Seg *>realloc(q.segs, 2 * q.segs_cap * sizeof(Seg))
        if grown == NULL:
            return -1
        q.segs = grown
        q.segs_cap *= 2
    q.segs[q.nseg].gpa = gpa
    q.segs[q.nseg].offset = offset
    q.segs[q.nseg].len = length
    q.segs[q.nseg].region = <uint16_t>region
    q.segs[q.nseg].writable = writable
    q.nseg += 1
    return 0


cdef int dev_translate(SplitDev *q, MemMap *m, uint64_t gpa, uint64_t length, bint writable) noexcept nogil:
    """Append [gpa, gpa + length) to q.segs, one piece per region crossed: 0, E_BUFFER_MEMORY or E_NOMEM."""
    cdef int r
    cdef uint64_t offset, piece
    if gpa + (length - 1) < gpa:  # wraps past 2**64
        return E_BUFFER_MEMORY
    while length:
        r = mem_find(m, gpa)
        if r < 0:
            return E_BUFFER_MEMORY
        offset = gpa - m.regions[r].gpa
        piece = m.regions[r].size - offset
        if piece > length:
            piece = length
        if dev_add_seg(q, gpa, offset, <uint32_t>piece, r, writable) < 0:
            return E_NOMEM
        gpa += piece
        length -= piece
    return 0


cdef inline int dev_piece(SplitDev *q, MemMap *m, uint64_t addr, uint32_t length, bint writable,
                          uint64_t *readable_len, uint64_t *writable_len, bint *seen_writable) noexcept nogil:
    """Check one buffer of a chain and append its pieces to q.segs: 0, or the failed check's code.

    The same checks in the same order for split and packed rings, direct and indirect descriptors.
    """
    cdef Region *region
    cdef uint64_t offset
    cdef Seg *seg
    if length == 0:
        return E_ZERO_LENGTH
    if writable:
        seen_writable[0] = True
        writable_len[0] += length
    elif seen_writable[0]:
        return E_READABLE_AFTER_WRITABLE
    else:
        readable_len[0] += length
    if readable_len[0] + writable_len[0] > U32_MAX:
        return E_CHAIN_LARGE
    # Translate. Fast path: the buffer lies inside the region of the last hit and the scratch has room.
    region = &m.regions[m.hint] if m.hint < m.n else NULL
    offset = addr - region.gpa if region != NULL else 0
    if region != NULL and offset < region.size and length <= region.size - offset and q.nseg < q.segs_cap:
        seg = &q.segs[q.nseg]
        seg.gpa = addr
        seg.offset = offset
        seg.len = length
        seg.region = <uint16_t>m.hint
        seg.writable = writable
        q.nseg += 1
        return 0
    return dev_translate(q, m, addr, length, writable)


cdef inline int dev_fail_piece(ChainError *err, int reason, uint32_t head, uint32_t index, bint in_indirect,
                               uint64_t addr, uint32_t length) noexcept nogil:
    # Only the memory check names the buffer; the others say which descriptor.
    if reason == E_BUFFER_MEMORY:
        return dev_fail(err, reason, head, index, in_indirect, addr, length)
    return dev_fail(err, reason, head, index, in_indirect, 0, 0)


cdef inline int dev_walk(SplitDev *q, MemMap *m, uint16_t head, ChainError *err) noexcept nogil:
    """Walk the chain at ``head`` into q.segs; 0, or the failed check's code (with ``err`` filled in)."""
    cdef uint64_t words[2]
    cdef uint64_t addr
    cdef uint32_t length
    cdef uint16_t flags, nxt
    cdef const vring_desc *table = q.desc
    cdef uint32_t limit = q.size  # entries of the table being walked
    cdef uint32_t index = head
    cdef uint32_t count = 0
    cdef bint in_indirect = False
    cdef bint seen_writable = False
    cdef uint64_t readable_len = 0, writable_len = 0
    cdef int r
    q.nseg = 0
    q.was_indirect = False
    while True:
        count += 1
        if count > limit:
            return dev_fail(err, E_LOOP, head, index, in_indirect, limit, 0)
        # struct virtq_desc, read once: every check and every use below works on these local copies.
        vring_load_desc_once(words, &table[index])
        addr = words[0]
        length = <uint32_t>words[1]
        flags = <uint16_t>(words[1] >> 32)
        nxt = <uint16_t>(words[1] >> 48)
        if flags & DESC_F_INDIRECT:
            if not q.indirect:
                return dev_fail(err, E_INDIRECT_NOT_NEGOTIATED, head, index, in_indirect, 0, 0)
            if in_indirect:
                return dev_fail(err, E_NESTED_INDIRECT, head, index, in_indirect, 0, 0)
            if flags & DESC_F_NEXT:
                return dev_fail(err, E_INDIRECT_NEXT, head, index, in_indirect, 0, 0)
            if length == 0:
                return dev_fail(err, E_INDIRECT_ZERO, head, index, in_indirect, 0, 0)
            if length % sizeof(vring_desc):
                return dev_fail(err, E_INDIRECT_UNALIGNED, head, index, in_indirect, length, 0)
            if length // sizeof(vring_desc) > q.max_indirect:
                return dev_fail(err, E_INDIRECT_LARGE, head, index, in_indirect, length, q.max_indirect)
            table = <const vring_desc *>mem_ptr(m, addr, length)
            if table == NULL or addr + (length - 1) < addr:
                return dev_fail(err, E_INDIRECT_MEMORY, head, index, in_indirect, addr, length)
            limit = length // sizeof(vring_desc)
            index = 0
            count = 0
            in_indirect = True
            q.was_indirect = True
            continue
        r = dev_piece(q, m, addr, length, (flags & DESC_F_WRITE) != 0, &readable_len, &writable_len,
                      &seen_writable)
        if r:
            return dev_fail_piece(err, r, head, index, in_indirect, addr, length)
        if not flags & DESC_F_NEXT:
            q.readable_len = <uint32_t>readable_len
            q.writable_len = <uint32_t>writable_len
            return 0
        if nxt >= limit:
            return dev_fail(err, E_NEXT_RANGE, head, index, in_indirect, nxt, limit)
        index = nxt



# -- packed rings, device side (spec 2.8) -------------------------------------------------------------------
cdef inline bint pk_is_avail(uint16_t flags, uint8_t wrap) noexcept nogil:
    """Available in lap ``wrap``: AVAIL = wrap and USED = !wrap."""
    return ((flags >> 7) & 1) == wrap and ((flags >> 15) & 1) != wrap


cdef inline bint pk_is_used(uint16_t flags, uint8_t wrap) noexcept nogil:
    """Used in lap ``wrap``: AVAIL = USED = wrap."""
    return ((flags >> 7) & 1) == wrap and ((flags >> 15) & 1) == wrap


cdef inline uint16_t pk_flags(const void *ring, uint32_t pos) noexcept nogil:
    # desc[pos].flags, acquire: the descriptor's other fields (and the rest of a chain) are read after it.
    return vring_observe_idx(<const uint16_t *>(<const unsigned char *>ring + 16 * pos + 14))


cdef inline bint pk_event_wants(const unsigned char *event, bint event_idx, uint32_t size, uint8_t wrap,
                                uint16_t new, uint16_t old) noexcept nogil:
    """Does the other side's struct pvirtq_event_suppress ask to hear that the index moved from old to new?

    An event offset from the previous lap is moved back by the ring size (mod 2**16), as Linux does.
    """
    cdef uint16_t off_wrap = vring_read_shared_u16(<const uint16_t *>event)
    cdef uint16_t flags = vring_read_shared_u16(<const uint16_t *>(event + 2))
    cdef uint16_t off
    if flags == EVENT_DISABLE:
        return False
    if flags != EVENT_DESC or not event_idx:
        return True  # ENABLE, or a value the spec reserves: notify rather than risk a lost wake-up
    off = off_wrap & 0x7FFF
    if (off_wrap >> 15) != wrap:
        off -= size
    return <uint16_t>(new - off - 1) < <uint16_t>(new - old)


cdef inline void pk_set_event(unsigned char *event, uint16_t off_wrap, uint16_t flags) noexcept nogil:
    vring_write_shared_u16(<uint16_t *>event, off_wrap)
    vring_write_shared_u16(<uint16_t *>(event + 2), flags)


cdef inline void pk_arm_event(unsigned char *event, bint event_idx, uint32_t pos, uint8_t wrap) noexcept nogil:
    """Ask the other side to notify: at slot ``pos`` of lap ``wrap`` with EVENT_IDX, else on every change."""
    if event_idx:
        pk_set_event(event, <uint16_t>(pos | (wrap << 15)), EVENT_DESC)
    else:
        pk_set_event(event, 0, EVENT_ENABLE)


cdef inline void pk_advance(uint16_t *pos, uint8_t *wrap, uint32_t n, uint32_t size) noexcept nogil:
    """Move ``pos`` ``n`` slots on; the lap's wrap counter flips each time the ring's end is passed."""
    cdef uint32_t p = pos[0] + n
    if p >= size:
        p -= size
        wrap[0] ^= 1
    pos[0] = <uint16_t>p


cdef inline int pk_dev_peek(SplitDev *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Read and check the chain at last_avail without taking it: 1, 0 (nothing available) or minus a code."""
    cdef const unsigned char *ring = <const unsigned char *>q.desc
    cdef const unsigned char *table
    cdef uint64_t words[2]
    cdef uint64_t addr, readable_len = 0, writable_len = 0
    cdef uint16_t pos = q.last_avail
    cdef uint32_t head_pos = q.last_avail, count = 0, length, k, entries
    cdef uint8_t wrap = q.avail_wrap
    cdef uint16_t flags, buffer_id = 0
    cdef bint seen_writable = False
    cdef int r
    if not pk_is_avail(pk_flags(ring, pos), wrap):
        return 0
    q.nseg = 0
    q.was_indirect = False
    while True:
        if count >= q.size:
            return -dev_fail(err, E_CHAIN_TOO_LONG, head_pos, pos, False, q.size, 0)
        # struct pvirtq_desc, read once: every check and every use below works on these local copies.
        vring_load_desc_once(words, ring + 16 * pos)
        addr = words[0]
        length = <uint32_t>words[1]
        buffer_id = <uint16_t>(words[1] >> 32)
        flags = <uint16_t>(words[1] >> 48)
        if count and not pk_is_avail(flags, wrap):
            return -dev_fail(err, E_CHAIN_FLAGS, head_pos, pos, False, flags, wrap)
        count += 1
        if flags & DESC_F_INDIRECT:
            if not q.indirect:
                return -dev_fail(err, E_INDIRECT_NOT_NEGOTIATED, head_pos, pos, False, 0, 0)
            if flags & DESC_F_NEXT:
                return -dev_fail(err, E_INDIRECT_NEXT, head_pos, pos, False, 0, 0)
            if length == 0:
                return -dev_fail(err, E_INDIRECT_ZERO, head_pos, pos, False, 0, 0)
            if length % 16:
                return -dev_fail(err, E_INDIRECT_UNALIGNED, head_pos, pos, False, length, 0)
            if length // 16 > q.max_indirect:
                return -dev_fail(err, E_INDIRECT_LARGE, head_pos, pos, False, length, q.max_indirect)
            table = mem_ptr(m, addr, length)
            if table == NULL or addr + (length - 1) < addr:
                return -dev_fail(err, E_INDIRECT_MEMORY, head_pos, pos, False, addr, length)
            q.was_indirect = True
            entries = length // 16
            for k in range(entries):  # entries are sequential: NEXT has no meaning in a packed table
                vring_load_desc_once(words, table + 16 * k)
                if (words[1] >> 48) & DESC_F_NEXT:
                    return -dev_fail(err, E_PACKED_TABLE_NEXT, head_pos, k, True, 0, 0)
                if (words[1] >> 48) & DESC_F_INDIRECT:
                    return -dev_fail(err, E_NESTED_INDIRECT, head_pos, k, True, 0, 0)
                r = dev_piece(q, m, words[0], <uint32_t>words[1], ((words[1] >> 48) & DESC_F_WRITE) != 0,
                              &readable_len, &writable_len, &seen_writable)
                if r:
                    return -dev_fail_piece(err, r, head_pos, k, True, words[0], <uint32_t>words[1])
            break
        r = dev_piece(q, m, addr, length, (flags & DESC_F_WRITE) != 0, &readable_len, &writable_len,
                      &seen_writable)
        if r:
            return -dev_fail_piece(err, r, head_pos, pos, False, addr, length)
        if not flags & DESC_F_NEXT:
            break
        pk_advance(&pos, &wrap, 1, q.size)
    if buffer_id >= q.size:
        return -dev_fail(err, E_BUFFER_ID_RANGE, head_pos, pos, False, buffer_id, q.size)
    if q.inflight[buffer_id]:
        return -dev_fail(err, E_BUFFER_ID_INFLIGHT, head_pos, pos, False, buffer_id, 0)
    q.readable_len = <uint32_t>readable_len
    q.writable_len = <uint32_t>writable_len
    q.peeked_ndesc = count
    head_out[0] = buffer_id
    return 1


cdef inline void pk_dev_commit(SplitDev *q, uint16_t buffer_id) noexcept nogil:
    q.inflight[buffer_id] = 1
    q.inflight_wlen[buffer_id] = q.writable_len
    q.ndesc[buffer_id] = <uint16_t>q.peeked_ndesc
    pk_advance(&q.last_avail, &q.avail_wrap, q.peeked_ndesc, q.size)


cdef inline void pk_dev_put_used(SplitDev *q, uint16_t buffer_id, uint32_t written) noexcept nogil:
    # The used descriptor: len and id first, then its flags (AVAIL = USED = our wrap counter), published.
    cdef unsigned char *desc = <unsigned char *>q.desc + 16 * q.used_idx
    cdef uint16_t flags = (PACKED_F_AVAIL | PACKED_F_USED if q.used_wrap else 0) | (DESC_F_WRITE if written else 0)
    memcpy(desc + 8, &written, 4)
    memcpy(desc + 12, &buffer_id, 2)
    vring_publish_desc_flags(<uint16_t *>(desc + 14), flags)
    q.inflight[buffer_id] = 0
    pk_advance(&q.used_idx, &q.used_wrap, q.ndesc[buffer_id], q.size)
    q.pushed += q.ndesc[buffer_id]


cdef inline bint pk_dev_notify_needed(SplitDev *q) noexcept nogil:
    cdef uint16_t new = q.used_idx
    cdef uint32_t pushed = q.pushed
    cdef bint valid = q.signalled_valid
    cdef bint wants
    q.pushed = 0
    q.signalled_valid = True
    if valid and not pushed:
        return False
    # Our used descriptors must be visible before we read the driver's event suppression.
    vring_fence_store_then_check()
    wants = pk_event_wants(<const unsigned char *>q.avail, q.event_idx, q.size, q.used_wrap, new,
                           <uint16_t>(new - pushed))
    return wants or (not valid and vring_read_shared_u16(<const uint16_t *>(<unsigned char *>q.avail + 2))
                     != EVENT_DISABLE)


cdef inline int dev_peek(SplitDev *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Read and check the next chain into q.segs without taking it: 1 found, 0 nothing available, or minus the
    failed check's code."""
    cdef uint16_t avail_idx
    cdef uint16_t head = 0
    cdef int r
    if q.packed:
        return pk_dev_peek(q, m, head_out, err)
    if q.avail_shadow == q.last_avail:
        # Everything seen so far is consumed: look at avail->idx again (acquire: ring entries after it).
        avail_idx = vring_observe_idx(&q.avail[1])
        if avail_idx == q.last_avail:
            return 0
        if <uint16_t>(avail_idx - q.last_avail) > q.size:
            return -dev_fail(err, E_AVAIL_JUMP, 0, 0, False, avail_idx, q.last_avail)
        q.avail_shadow = avail_idx
    head = vring_read_shared_u16(&q.avail[2 + (q.last_avail & (q.size - 1))])  # avail->ring[], once
    if head >= q.size:
        return -dev_fail(err, E_HEAD_RANGE, head, 0, False, q.size, 0)
    if q.inflight[head]:
        return -dev_fail(err, E_HEAD_INFLIGHT, head, head, False, 0, 0)
    r = dev_walk(q, m, head, err)
    if r:
        return -r
    head_out[0] = head
    return 1


cdef inline void dev_commit(SplitDev *q, uint16_t head) noexcept nogil:
    """Take the chain dev_peek found: it is in flight until pushed."""
    if q.packed:
        pk_dev_commit(q, head)
        return
    q.inflight[head] = 1
    q.inflight_wlen[head] = q.writable_len
    q.last_avail += 1


cdef inline int dev_pop(SplitDev *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Pop the next chain into q.segs: 1 popped, 0 nothing available, or minus the failed check's code."""
    cdef int r = dev_peek(q, m, head_out, err)
    if r == 1:
        dev_commit(q, head_out[0])
    return r


cdef inline void dev_after_pop(SplitDev *q) noexcept nogil:
    # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as QEMU's virtqueue_pop does),
    # unless the device disabled notifications to poll.
    if q.event_idx and q.notify_enabled:
        if q.packed:  # device event suppression: the next descriptor, in its lap
            pk_arm_event(q.used, True, q.last_avail, q.avail_wrap)
        else:
            vring_write_shared_u16(<uint16_t *>(q.used + 4 + 8 * q.size), q.last_avail)  # used->avail_event


cdef inline int dev_check_push(SplitDev *q, uint64_t head, uint64_t written) noexcept nogil:
    """0 if the device may return ``head`` with ``written`` bytes; 1 not a held head; 2 too many bytes."""
    if head >= q.size or not q.inflight[head]:
        return 1
    if written > q.inflight_wlen[head]:
        return 2
    return 0


cdef inline void dev_put_used(SplitDev *q, uint16_t head, uint32_t written) noexcept nogil:
    # used->ring[used_idx % size] = {id, len}; plain stores, published by the release of used->idx.
    cdef vring_used_elem elem
    if q.packed:
        pk_dev_put_used(q, head, written)
        return
    elem.id = head
    elem.len = written
    memcpy(q.used + 4 + 8 * (q.used_idx & (q.size - 1)), &elem, sizeof(elem))
    q.inflight[head] = 0
    q.used_idx += 1


cdef inline void dev_publish(SplitDev *q) noexcept nogil:
    if not q.packed:  # a packed ring published each used descriptor by its flags already
        vring_publish_idx(<uint16_t *>(q.used + 2), q.used_idx)  # used->idx, release: the elements first

ctypedef fused push_head_t:
    long long
    uint16_t

ctypedef fused push_len_t:
    long long
    uint32_t


cdef int dev_push_all(SplitDev *q, const push_head_t *heads, const push_len_t *lens, Py_ssize_t n,
                      Py_ssize_t *bad) noexcept nogil:
    """Check every (head, written) first, then write the elements and publish used->idx once.

    0, or 1 (not a held head), 2 (too many bytes), 3 (a head twice) with ``bad`` = the offending entry; nothing is
    written on an error.
    """
    cdef Py_ssize_t i, j
    cdef int code = 0
    for i in range(n):
        bad[0] = i
        if heads[i] < 0 or heads[i] >= q.size:
            code = 1
        elif lens[i] < 0:
            code = 2
        else:
            code = dev_check_push(q, <uint64_t>heads[i], <uint64_t>lens[i])
        if code == 0 and q.inflight[heads[i]] == 2:
            code = 3
        if code:
            for j in range(i):
                q.inflight[heads[j]] = 1
            return code
        q.inflight[heads[i]] = 2  # seen in this batch (still in flight)
    for i in range(n):
        q.inflight[heads[i]] = 1
        dev_put_used(q, <uint16_t>heads[i], <uint32_t>lens[i])
    if n:
        dev_publish(q)
    return 0



cdef inline bint dev_notify_needed(SplitDev *q) noexcept nogil:
    cdef uint16_t new = q.used_idx
    cdef uint16_t old = q.signalled_used
    cdef bint valid = q.signalled_valid
    cdef uint16_t event
    if q.packed:
        return pk_dev_notify_needed(q)
    q.signalled_used = new
    q.signalled_valid = True
    if valid and new == old:
        return False
    # Our used->idx store must be visible before we read the driver's used_event / flags.
    vring_fence_store_then_check()
    if q.event_idx:
        event = vring_read_shared_u16(&q.avail[2 + q.size])  # avail->used_event
        return not valid or <uint16_t>(new - event - 1) < <uint16_t>(new - old)
    return not (vring_read_shared_u16(&q.avail[0]) & AVAIL_F_NO_INTERRUPT)  # avail->flags


cdef class DeviceQueue:
    """The device's end of a split virtqueue (what QEMU or a vhost-user backend does). Trusts nothing it reads."""

    def __cinit__(self):
        memset(&self.q, 0, sizeof(SplitDev))

    def __dealloc__(self):
        free(self.q.inflight)
        free(self.q.inflight_wlen)
        free(self.q.ndesc)
        free(self.q.segs)

    def __init__(self, GuestMemory mem, layout, features=0, *, max_indirect=DEFAULT_MAX_INDIRECT):
        if max_indirect < 1:
            raise ValueError("max_indirect must be at least 1")
        self.mem = mem
        self.layout = layout
        self.features = Feature(int(features))
        self.q.size = layout.size
        self.q.max_indirect = max_indirect
        self.q.event_idx = bool(features & Feature.EVENT_IDX)
        self.q.indirect = bool(features & Feature.INDIRECT_DESC)
        self._generation = mem.generation + 1
        self._bind()
        self.q.inflight = <uint8_t *>malloc(self.q.size)
        self.q.inflight_wlen = <uint32_t *>malloc(self.q.size * sizeof(uint32_t))
        self.q.ndesc = <uint16_t *>malloc(self.q.size * sizeof(uint16_t))
        self.q.segs_cap = 16
        self.q.segs = <Seg *>malloc(self.q.segs_cap * sizeof(Seg))
        if self.q.inflight == NULL or self.q.inflight_wlen == NULL or self.q.segs == NULL or self.q.ndesc == NULL:
            raise MemoryError()
        self.reset()

    cdef int _bind(self) except -1:
        """Translate the ring areas again if guest memory changed since the last call."""
        cdef unsigned char *desc
        cdef unsigned char *avail
        cdef unsigned char *used
        if self._generation == self.mem.generation:
            return 0
        # Split: descriptor table, avail ring, used ring. Packed: descriptor ring, driver and device event areas.
        (gdesc, ndesc), (gavail, navail), (gused, nused) = self.layout.areas()
        bind_area(self.mem, gdesc, ndesc, &desc)
        bind_area(self.mem, gavail, navail, &avail)
        bind_area(self.mem, gused, nused, &used)
        self.q.desc = <vring_desc *>desc
        self.q.avail = <uint16_t *>avail
        self.q.used = used
        self._generation = self.mem.generation
        return 0

    cdef int _check(self) except -1:
        if self.broken:
            raise broken_error("device", self.error)
        if self._generation != self.mem.generation:
            self._bind()
        return 0

    cdef _fail(self, ChainError *err):
        if err.reason == E_NOMEM:
            raise MemoryError()
        e = chain_error(CHAIN_REASONS[err.reason - 1], err.head, err.index, err.in_indirect, err.a, err.b)
        self.broken = True
        self.error = e
        raise e

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def size(self):
        return self.q.size

    @property
    def max_indirect(self):
        return self.q.max_indirect

    @property
    def last_avail_idx(self):
        return self.q.last_avail

    @property
    def used_idx(self):
        return self.q.used_idx

    def reset(self):
        """Forget everything (device reset): indices back to 0, no chain in flight, not broken."""
        self.q.last_avail = 0
        self.q.avail_shadow = 0
        self.q.used_idx = 0
        self.broken = False
        self.error = None
        self.q.notify_enabled = True
        self.q.used_flags = 0
        self.q.signalled_used = 0
        self.q.signalled_valid = False
        self.q.avail_wrap = 1
        self.q.used_wrap = 1
        self.q.pushed = 0
        memset(self.q.inflight, 0, self.q.size)

    @property
    def state(self):
        if self.q.packed:
            return QueueState(self.q.last_avail, self.q.used_idx, self.q.avail_wrap, self.q.used_wrap)
        return QueueState(self.q.last_avail, self.q.used_idx)

    def restore(self, state):
        """Resume at a saved state; a ``used_idx`` of None is read from the used ring (vhost-user takeover)."""
        state = QueueState(*state)
        self.reset()
        self._bind()
        if self.q.packed:
            size = self.q.size
            if not 0 <= state.last_avail_idx < size or state.used_idx is not None and not 0 <= state.used_idx < size:
                raise ValueError(f"state {tuple(state)} is outside a ring of {size}")
            self.q.last_avail = state.last_avail_idx
            self.q.avail_wrap = int(state.avail_wrap) & 1
            if state.used_idx is None:
                self.q.used_idx, self.q.used_wrap = self.q.last_avail, self.q.avail_wrap
            else:
                self.q.used_idx, self.q.used_wrap = state.used_idx, int(state.used_wrap) & 1
            return
        self.q.last_avail = int(state.last_avail_idx) & 0xFFFF
        self.q.avail_shadow = self.q.last_avail
        if state.used_idx is None:
            self.q.used_idx = vring_read_shared_u16(<uint16_t *>(self.q.used + 2))  # used->idx
        else:
            self.q.used_idx = int(state.used_idx) & 0xFFFF

    # -- popping -------------------------------------------------------------------------------------------
    def avail_pending(self):
        """How many chains the driver has made available that the device has not popped (0 if broken)."""
        cdef uint32_t count = 0
        cdef uint16_t pos = self.q.last_avail
        cdef uint8_t wrap = self.q.avail_wrap
        if self.broken:
            return 0
        self._bind()
        if self.q.packed:  # descriptors made available from last_avail_idx on
            while count < self.q.size and pk_is_avail(pk_flags(self.q.desc, pos), wrap):
                count += 1
                pk_advance(&pos, &wrap, 1, self.q.size)
            return count
        return <uint16_t>(vring_observe_idx(&self.q.avail[1]) - self.q.last_avail)  # avail->idx

    def pop(self):
        """The next available chain, or None. Raises MalformedChain (and latches broken) on bad driver input."""
        cdef ChainError err
        cdef uint16_t head = 0
        self._check()
        cdef int r = dev_pop(&self.q, &self.mem.map, &head, &err)
        if r == 0:
            return None
        if r < 0:
            self._fail(&err)
        dev_after_pop(&self.q)
        return make_chain(&self.q, head, self.mem._views)

    def pop_many(self, n):
        """Up to ``n`` available chains."""
        cdef ChainError err
        cdef uint16_t head = 0
        cdef int r
        cdef Py_ssize_t want = n
        self._check()
        out = []
        views = self.mem._views
        while len(out) < want:
            r = dev_pop(&self.q, &self.mem.map, &head, &err)
            if r == 0:
                break
            if r < 0:
                self._fail(&err)
            out.append(make_chain(&self.q, head, views))
        if out:
            dev_after_pop(&self.q)
        return out

    # -- pushing -------------------------------------------------------------------------------------------
    cdef _push_error(self, int code, object head, object written):
        if code == 1:
            raise ValueError(f"head {head} is not a chain the device holds")
        raise ValueError(f"written length {written} exceeds the chain's {self.q.inflight_wlen[head]} writable bytes")

    def push(self, head, written=0):
        """Return the chain at ``head`` to the driver with ``written`` bytes written into its writable part."""
        cdef long long h, w
        self._check()
        try:
            h = head
            w = written
        except (OverflowError, TypeError):
            head, written = int(head), int(written)  # huge, negative or not an int: the checks below word it
            h = head if -1 <= head < 1 << 62 else -1
            w = written if -1 <= written < 1 << 62 else -1
        if h < 0 or h >= self.q.size or not self.q.inflight[h]:
            self._push_error(1, head, written)
        if w < 0 or w > self.q.inflight_wlen[h]:
            self._push_error(2, head, written)
        dev_put_used(&self.q, <uint16_t>h, <uint32_t>w)
        dev_publish(&self.q)

    def push_many(self, heads, lens):
        """Return several chains; the used index is published once, after all their elements."""
        cdef cnp.ndarray h = _int_array(heads, np.int64)
        cdef cnp.ndarray l = _int_array(lens, np.int64)
        cdef Py_ssize_t n = cnp.PyArray_DIM(h, 0), i = 0
        cdef const long long *hp = <const long long *>cnp.PyArray_DATA(h)
        cdef const long long *lp = <const long long *>cnp.PyArray_DATA(l)
        cdef int code = 0
        self._check()
        if cnp.PyArray_DIM(l, 0) != n:
            raise ValueError("heads and lens differ in length")
        cdef PyThreadState *_ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
        code = dev_push_all(&self.q, hp, lp, n, &i)
        gil_restore(_ts)
        if code:
            self._push_many_error(code, hp[i], lp[i])

    cdef _push_many_error(self, int code, object head, object written):
        if code == 3:
            raise ValueError(f"head {head} is pushed twice in one batch")
        self._push_error(code, head, written)

    def pop_batch(self, Batch batch not None):
        """Pop up to ``batch.capacity`` chains into ``batch`` (heads, segments, totals); returns the count.

        A chain whose segments no longer fit the batch stays in the ring for the next call.
        """
        cdef ChainError err
        cdef uint16_t head = 0
        cdef int r = 0
        cdef bint too_big = False
        cdef Py_ssize_t n = 0, cap = batch.capacity, max_seg = batch.max_segments
        cdef uint32_t seg = 0, i
        cdef Seg *s
        self._check()
        batch.seg_start_p[0] = 0
        cdef PyThreadState *_ts = gil_release_if(cap >= NOGIL_MIN)  # the loop below touches no Python object
        while n < cap:
            r = dev_peek(&self.q, &self.mem.map, &head, &err)
            if r <= 0:
                break
            if seg + self.q.nseg > max_seg:
                too_big = n == 0
                break
            dev_commit(&self.q, head)
            for i in range(self.q.nseg):
                s = &self.q.segs[i]
                batch.seg_addr_p[seg] = s.gpa
                batch.seg_len_p[seg] = s.len
                batch.seg_writable_p[seg] = s.writable
                seg += 1
            batch.heads_p[n] = head
            batch.nsegs_p[n] = self.q.nseg
            batch.seg_start_p[n + 1] = seg
            batch.readable_p[n] = self.q.readable_len
            batch.writable_p[n] = self.q.writable_len
            n += 1
        if n and r >= 0:
            dev_after_pop(&self.q)
        gil_restore(_ts)
        batch.count = n
        if r < 0:
            self._fail(&err)
        if too_big:
            raise ValueError(f"a chain of {self.q.nseg} segments does not fit a batch of {max_seg} segments")
        return n

    def push_batch(self, Batch batch not None, count=None):
        """Return the first ``count`` (default ``batch.count``) chains of ``batch`` with ``batch.lens`` bytes
        written; the used index is published once."""
        cdef Py_ssize_t n = batch.count if count is None else count, i
        cdef int code = 0
        if not 0 <= n <= batch.capacity:
            raise ValueError(f"count {n} is outside the batch's capacity {batch.capacity}")
        self._check()
        cdef PyThreadState *_ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
        code = dev_push_all(&self.q, batch.heads_p, batch.lens_p, n, &i)
        gil_restore(_ts)
        if code:
            self._push_many_error(code, batch.heads_p[i], batch.lens_p[i])

    # -- notifications -------------------------------------------------------------------------------------
    def notify_needed(self):
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        self._check()
        return dev_notify_needed(&self.q)

    def enable_notifications(self):
        """Ask the driver to kick again; returns True if chains are already available (handle them first)."""
        self._check()
        self.q.notify_enabled = True
        if self.q.packed:
            pk_arm_event(self.q.used, self.q.event_idx, self.q.last_avail, self.q.avail_wrap)
            vring_fence_store_then_check()
            return pk_is_avail(pk_flags(self.q.desc, self.q.last_avail), self.q.avail_wrap)
        if self.q.event_idx:
            vring_write_shared_u16(<uint16_t *>(self.q.used + 4 + 8 * self.q.size), self.q.last_avail)
        else:
            self.q.used_flags &= ~USED_F_NO_NOTIFY
            vring_write_shared_u16(<uint16_t *>self.q.used, self.q.used_flags)  # used->flags
        # The store above must be visible before we look at avail->idx again, or a kick can be lost.
        vring_fence_store_then_check()
        return vring_observe_idx(&self.q.avail[1]) != self.q.last_avail

    def disable_notifications(self):
        """Tell the driver kicks are not needed (the device polls); with EVENT_IDX avail_event just stops moving."""
        self._check()
        self.q.notify_enabled = False
        if self.q.packed:
            pk_set_event(self.q.used, 0, EVENT_DISABLE)
            return
        if not self.q.event_idx:
            self.q.used_flags |= USED_F_NO_NOTIFY
            vring_write_shared_u16(<uint16_t *>self.q.used, self.q.used_flags)  # used->flags


# ---------------------------------------------------------------------------------------------------------------
# Driver side, in C
# ---------------------------------------------------------------------------------------------------------------
cdef enum:
    A_EMPTY = 1
    A_LEN
    A_ORDER
    A_ADDR
    A_WLEN
    A_LONG
    A_FULL


cdef inline bint drv_indirect_for(SplitDrv *q, uint32_t nseg) noexcept nogil:
    return q.use_indirect and q.indirect_threshold <= nseg <= q.indirect_max


cdef inline uint32_t drv_needed(SplitDrv *q, uint32_t nseg) noexcept nogil:
    return 1 if drv_indirect_for(q, nseg) else nseg


ctypedef fused seg_len_t:
    long long   # lengths from Python or int64 arrays: may be out of range, checked below
    uint32_t    # lengths from a Batch



# -- packed rings, driver side -------------------------------------------------------------------------------
cdef inline long drv_reserve(SplitDrv *q, uint32_t nseg, uint32_t *bad) noexcept nogil:
    """The checks before a chain of ``nseg`` buffers takes ring slots, both layouts: the slots it needs, or
    minus an A_* code."""
    cdef bint indirect
    cdef uint32_t needed
    if nseg == 0:
        return -A_EMPTY
    indirect = drv_indirect_for(q, nseg)
    if not indirect and nseg > q.size:
        return -A_LONG
    needed = 1 if indirect else nseg
    if q.num_free < needed:
        bad[0] = needed
        return -A_FULL
    return needed


cdef inline int drv_check_buffer(MemMap *m, uint64_t addr, seg_len_t length, bint writable, bint *seen_writable,
                                 uint64_t *writable_len) noexcept nogil:
    """One buffer of a chain the driver adds, both layouts: 0 or an A_* code."""
    if seg_len_t is uint32_t:
        if length == 0:
            return A_LEN
    else:
        if length < 1 or length > <long long>U32_MAX:
            return A_LEN
    if writable:
        seen_writable[0] = True
        writable_len[0] += <uint64_t>length
    elif seen_writable[0]:
        return A_ORDER
    if not mem_contains(m, addr, <uint64_t>length):
        return A_ADDR
    return 0


cdef inline int pk_drv_add(SplitDrv *q, MemMap *m, const uint64_t *addrs, const seg_len_t *lens, const uint8_t *wr,
                           uint32_t nseg, uint16_t *head_out, uint32_t *bad) noexcept nogil:
    """Make one chain available in the packed ring: 0, or an A_* code. Checks first, then writes: the rest of
    the chain, then the head, whose flags (release) make the whole chain available at once."""
    cdef uint64_t wlen = 0
    cdef bint seen_w = False, indirect
    cdef uint32_t k, needed, length
    cdef uint16_t buffer_id, flags, head_flags = 0, pos
    cdef uint8_t wrap
    cdef unsigned char *ring = <unsigned char *>q.desc
    cdef unsigned char *table
    cdef unsigned char *desc
    cdef uint64_t head_addr = 0
    cdef uint32_t head_len = 0
    cdef long code = drv_reserve(q, nseg, bad)
    if code < 0:
        return <int>-code
    needed = <uint32_t>code
    indirect = drv_indirect_for(q, nseg)
    for k in range(nseg):
        bad[0] = k
        code = drv_check_buffer(m, addrs[k], lens[k], wr[k], &seen_w, &wlen)
        if code:
            return <int>code
    if wlen > U32_MAX:
        return A_WLEN
    buffer_id = q.free_head
    q.free_head = q.next[buffer_id]
    if indirect:
        table = q.indirect_host + <uint64_t>buffer_id * q.indirect_max * 16
        for k in range(nseg):  # entries are sequential: no NEXT, no id
            desc = table + 16 * k
            flags = DESC_F_WRITE if wr[k] else 0
            memcpy(desc, &addrs[k], 8)
            head_len = <uint32_t>lens[k]
            memcpy(desc + 8, &head_len, 4)
            memset(desc + 12, 0, 2)
            memcpy(desc + 14, &flags, 2)
        head_addr = q.indirect_area + <uint64_t>buffer_id * q.indirect_max * 16
        head_len = nseg * 16
        head_flags = DESC_F_INDIRECT
    else:
        pos = q.avail_idx
        wrap = q.avail_wrap
        for k in range(nseg):
            flags = (DESC_F_WRITE if wr[k] else 0) | (DESC_F_NEXT if k < nseg - 1 else 0)
            if k == 0:
                head_addr = addrs[0]
                head_len = <uint32_t>lens[0]
                head_flags = flags
            else:  # the rest of the chain goes in first, flags and all
                desc = ring + 16 * pos
                flags |= PACKED_F_AVAIL if wrap else PACKED_F_USED
                length = <uint32_t>lens[k]
                memcpy(desc, &addrs[k], 8)
                memcpy(desc + 8, &length, 4)
                memcpy(desc + 12, &buffer_id, 2)
                memcpy(desc + 14, &flags, 2)
            pk_advance(&pos, &wrap, 1, q.size)
    desc = ring + 16 * q.avail_idx
    memcpy(desc, &head_addr, 8)
    memcpy(desc + 8, &head_len, 4)
    memcpy(desc + 12, &buffer_id, 2)
    vring_publish_desc_flags(<uint16_t *>(desc + 14),
                             head_flags | (PACKED_F_AVAIL if q.avail_wrap else PACKED_F_USED))
    pk_advance(&q.avail_idx, &q.avail_wrap, needed, q.size)
    q.num_free -= needed
    q.added += needed
    q.ndesc[buffer_id] = <uint16_t>needed
    q.wlen[buffer_id] = <uint32_t>wlen
    q.inflight[buffer_id] = 1
    if q.in_order:
        q.order[(q.order_head + q.order_len) % q.size] = buffer_id
        q.order_len += 1
    head_out[0] = buffer_id
    return 0


cdef inline bint pk_drv_kick_needed(SplitDrv *q) noexcept nogil:
    cdef uint32_t added = q.added
    q.added = 0
    if not added:
        return False
    # Our descriptors must be visible before we read the device's event suppression.
    vring_fence_store_then_check()
    return pk_event_wants(q.used, q.event_idx, q.size, q.avail_wrap, q.avail_idx,
                          <uint16_t>(q.avail_idx - added))


cdef inline void pk_drv_retire(SplitDrv *q, uint16_t buffer_id) noexcept nogil:
    """The buffer's slots and its id are free again."""
    pk_advance(&q.last_used, &q.used_wrap, q.ndesc[buffer_id], q.size)
    q.num_free += q.ndesc[buffer_id]
    q.inflight[buffer_id] = 0
    q.next[buffer_id] = q.free_head
    q.free_head = buffer_id


cdef inline void pk_skip_push(SplitDrv *q, uint16_t buffer_id, uint32_t written) noexcept nogil:
    cdef uint32_t slot = (q.skip_head + q.skip_count) % q.size
    q.skip_id[slot] = buffer_id
    q.skip_len[slot] = written
    q.skip_count += 1


cdef inline int pk_drv_reap_one(SplitDrv *q, uint16_t *head, uint32_t *written, uint64_t *a,
                                uint64_t *b) noexcept nogil:
    """1 reaped one, 0 nothing, or minus a U_* code."""
    cdef uint64_t words[2]
    cdef uint32_t length
    cdef uint16_t buffer_id, flags, skipped
    if not q.skip_count:
        if not pk_is_used(pk_flags(q.desc, q.last_used), q.used_wrap):
            return 0
        vring_load_desc_once(words, <unsigned char *>q.desc + 16 * q.last_used)  # the used descriptor, once
        buffer_id = <uint16_t>(words[1] >> 32)
        flags = <uint16_t>(words[1] >> 48)
        # Spec 2.8.4: the length of a used descriptor without WRITE is reserved and ignored by drivers.
        length = <uint32_t>words[1] if flags & DESC_F_WRITE else 0
        if q.num_free == q.size:  # no slot in flight
            a[0] = flags
            return -U_WRAP
        a[0] = buffer_id
        if buffer_id >= q.size:
            b[0] = q.size
            return -U_ID_RANGE
        if not q.inflight[buffer_id]:
            return -U_NOT_IN_FLIGHT
        if length > q.wlen[buffer_id]:
            a[0] = length
            b[0] = q.wlen[buffer_id]
            return -U_LEN_LARGE
        if q.in_order:
            # IN_ORDER: one used descriptor may stand for every buffer made available before it.
            while q.order_len and q.order[q.order_head] != buffer_id:
                skipped = q.order[q.order_head]
                q.order_head = (q.order_head + 1) % q.size
                q.order_len -= 1
                pk_drv_retire(q, skipped)
                pk_skip_push(q, skipped, 0)
            q.order_head = (q.order_head + 1) % q.size
            q.order_len -= 1
        pk_drv_retire(q, buffer_id)
        if not q.skip_count:
            head[0] = buffer_id
            written[0] = length
            return 1
        pk_skip_push(q, buffer_id, length)
    head[0] = q.skip_id[q.skip_head]
    written[0] = q.skip_len[q.skip_head]
    q.skip_head = (q.skip_head + 1) % q.size
    q.skip_count -= 1
    return 1


cdef inline int drv_add(SplitDrv *q, MemMap *m, const uint64_t *addrs, const seg_len_t *lens, const uint8_t *wr,
                 uint32_t nseg, uint16_t *head_out, uint32_t *bad) noexcept nogil:
    """Add one chain: 0, or an A_* code (``bad`` = the offending segment where there is one)."""
    cdef uint64_t wlen = 0
    cdef bint seen_w = False, indirect, last
    cdef uint32_t k, needed
    cdef uint16_t head, index, nxt
    cdef vring_desc d
    cdef unsigned char *table = NULL
    cdef long code
    if q.packed:
        return pk_drv_add(q, m, addrs, lens, wr, nseg, head_out, bad)
    code = drv_reserve(q, nseg, bad)
    if code < 0:
        return <int>-code
    needed = <uint32_t>code
    indirect = drv_indirect_for(q, nseg)
    head = q.free_head
    if indirect:
        table = q.indirect_host + <uint64_t>head * q.indirect_max * sizeof(vring_desc)
    # Check and write in one pass: the slots written are free ones the device cannot see (they are not in the
    # avail ring), so a chain refused halfway leaves nothing behind.
    index = head
    for k in range(nseg):
        code = drv_check_buffer(m, addrs[k], lens[k], wr[k], &seen_w, &wlen)
        if code:
            bad[0] = k
            return <int>code
        last = k == nseg - 1
        d.addr = addrs[k]
        d.len = <uint32_t>lens[k]
        d.flags = (DESC_F_WRITE if wr[k] else 0) | (0 if last else DESC_F_NEXT)
        if indirect:
            d.next = 0 if last else k + 1
            memcpy(table + k * sizeof(vring_desc), &d, sizeof(d))
        else:
            nxt = q.next[index]
            d.next = 0 if last else nxt
            memcpy(&q.desc[index], &d, sizeof(d))
            index = nxt
    if wlen > U32_MAX:
        return A_WLEN
    if indirect:
        d.addr = q.indirect_area + <uint64_t>head * q.indirect_max * sizeof(vring_desc)
        d.len = nseg * sizeof(vring_desc)
        d.flags = DESC_F_INDIRECT
        d.next = 0
        memcpy(&q.desc[head], &d, sizeof(d))
        q.free_head = q.next[head]
    else:
        q.free_head = index
    q.num_free -= needed
    q.ndesc[head] = needed
    q.wlen[head] = <uint32_t>wlen
    q.inflight[head] = 1
    # avail->ring[avail_idx % size] = head; published with the index by kick_needed.
    vring_write_shared_u16(&q.avail[2 + (q.avail_idx & (q.size - 1))], head)
    q.avail_idx += 1
    head_out[0] = head
    return 0


cdef inline bint drv_kick_needed(SplitDrv *q) noexcept nogil:
    cdef uint16_t new = q.avail_idx
    cdef uint16_t old = q.published
    cdef uint16_t event
    if q.packed:
        return pk_drv_kick_needed(q)
    if new == old:
        return False
    vring_publish_idx(&q.avail[1], new)  # avail->idx, release: descriptors and ring entries visible first
    q.published = new
    # The index store must be visible before we read the device's avail_event / flags.
    vring_fence_store_then_check()
    if q.event_idx:
        event = vring_read_shared_u16(<uint16_t *>(q.used + 4 + 8 * q.size))  # used->avail_event
        return <uint16_t>(new - event - 1) < <uint16_t>(new - old)
    return not (vring_read_shared_u16(<uint16_t *>q.used) & USED_F_NO_NOTIFY)  # used->flags


cdef inline void drv_free_chain(SplitDrv *q, uint16_t head) noexcept nogil:
    cdef uint16_t last = head
    cdef uint32_t k
    for k in range(q.ndesc[head] - 1):
        last = q.next[last]
    q.next[last] = q.free_head
    q.free_head = head
    q.num_free += q.ndesc[head]
    q.inflight[head] = 0


cdef inline int drv_reap_one(SplitDrv *q, uint16_t *head, uint32_t *written, uint64_t *a, uint64_t *b) noexcept nogil:
    """1 reaped one, 0 nothing, or minus a U_* code (``a``, ``b`` = the values the check compared)."""
    cdef uint16_t used_idx
    cdef uint16_t last = q.last_used
    cdef uint16_t outstanding
    cdef vring_used_elem elem
    cdef uint64_t raw
    if q.packed:
        return pk_drv_reap_one(q, head, written, a, b)
    if q.used_shadow == last:
        # Everything seen so far is reaped: look at used->idx again (acquire: elements after it).
        used_idx = vring_observe_idx(<uint16_t *>(q.used + 2))
        if used_idx == last:
            return 0
        outstanding = q.published - last
        if <uint16_t>(used_idx - last) > outstanding:
            a[0] = used_idx
            b[0] = outstanding
            return -U_INDEX_JUMP
        q.used_shadow = used_idx
    raw = vring_load_used_elem_once(q.used + 4 + 8 * (last & (q.size - 1)))  # used->ring[], once
    elem.id = <uint32_t>raw
    elem.len = <uint32_t>(raw >> 32)
    a[0] = elem.id
    if elem.id >= q.size:
        b[0] = q.size
        return -U_ID_RANGE
    if not q.inflight[elem.id]:
        return -U_NOT_IN_FLIGHT
    if elem.len > q.wlen[elem.id]:
        a[0] = elem.len
        b[0] = q.wlen[elem.id]
        return -U_LEN_LARGE
    drv_free_chain(q, <uint16_t>elem.id)
    q.last_used = last + 1
    head[0] = <uint16_t>elem.id
    written[0] = elem.len
    return 1


cdef inline void drv_after_reap(SplitDrv *q) noexcept nogil:
    if q.event_idx and q.interrupts_enabled:
        if q.packed:  # driver event suppression: the next used descriptor, in its lap
            pk_arm_event(<unsigned char *>q.avail, True, q.last_used, q.used_wrap)
        else:
            vring_write_shared_u16(&q.avail[2 + q.size], q.last_used)  # avail->used_event


cdef inline cnp.ndarray _int_array(obj, dtype):
    """``obj`` as a 1-D C-contiguous array of ``dtype``: the array itself when it already is one."""
    if (cnp.PyArray_Check(obj) and (<cnp.ndarray>obj).dtype == dtype and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj)):
        return <cnp.ndarray>obj
    arr = np.ascontiguousarray(obj, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError("expected a one-dimensional sequence")
    return arr


cdef inline bint _is_out_array(obj, int typenum):
    return (cnp.PyArray_Check(obj) and cnp.PyArray_TYPE(<cnp.ndarray>obj) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>obj))


cdef uint32_t _parse_buffers(seq, uint8_t writable, uint64_t *addrs, long long *lens, uint8_t *wr,
                             uint32_t k) except? 0xFFFFFFFF:
    """(address, length) pairs into the C arrays from slot k; returns the next slot. Values no C type holds get
    the same errors the pure-Python twin raises for them."""
    for item in seq:
        addr, length = item
        try:
            addrs[k] = addr
        except (OverflowError, TypeError):
            raise AddressError(f"buffer {int(addr):#x} (+{int(length)}) is outside guest memory") from None
        try:
            lens[k] = length
        except (OverflowError, TypeError):
            raise ValueError(f"buffer length {int(length)} is not between 1 and 2**32 - 1") from None
        wr[k] = writable
        k += 1
    return k


cdef class DriverQueue:
    """The driver's end of a split virtqueue (what a guest kernel does). Trusts nothing the device writes."""

    def __cinit__(self):
        memset(&self.q, 0, sizeof(SplitDrv))

    def __dealloc__(self):
        free(self.q.next)
        free(self.q.ndesc)
        free(self.q.wlen)
        free(self.q.inflight)
        free(self.q.order)
        free(self.q.skip_id)
        free(self.q.skip_len)
        free(self._has_token)

    def __init__(self, GuestMemory mem, layout, features=0, *, indirect_area=None, indirect_max=16,
                 indirect_threshold=2):
        if not 1 <= indirect_max <= DEFAULT_MAX_INDIRECT:
            raise ValueError(f"indirect_max must be between 1 and {DEFAULT_MAX_INDIRECT}")
        if indirect_threshold < 1:
            raise ValueError("indirect_threshold must be at least 1")
        self.mem = mem
        self.layout = layout
        self.features = Feature(int(features))
        self.q.size = layout.size
        self.q.event_idx = bool(features & Feature.EVENT_IDX)
        self.indirect_area = indirect_area
        self.q.indirect_max = indirect_max
        self.q.indirect_threshold = indirect_threshold
        self.q.use_indirect = bool(features & Feature.INDIRECT_DESC) and indirect_area is not None
        if indirect_area is not None:
            mem.view(indirect_area, self.indirect_area_bytes(self.q.size, indirect_max))  # must lie in one region
            self.q.indirect_area = indirect_area
        self._generation = mem.generation + 1
        self._bind()
        n = self.q.size
        self.q.next = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.ndesc = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.wlen = <uint32_t *>malloc(n * sizeof(uint32_t))
        self.q.inflight = <uint8_t *>malloc(n)
        self.q.order = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.skip_id = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.skip_len = <uint32_t *>malloc(n * sizeof(uint32_t))
        self._has_token = <uint8_t *>malloc(n)
        if (self.q.next == NULL or self.q.ndesc == NULL or self.q.wlen == NULL or self.q.inflight == NULL
                or self._has_token == NULL or self.q.order == NULL or self.q.skip_id == NULL
                or self.q.skip_len == NULL):
            raise MemoryError()
        self.reset()

    @staticmethod
    def indirect_area_bytes(size, indirect_max=16):
        """Bytes of guest memory the indirect tables need: one table of ``indirect_max`` entries per head."""
        return size * indirect_max * 16

    cdef int _bind(self) except -1:
        cdef unsigned char *desc
        cdef unsigned char *avail
        cdef unsigned char *used
        cdef unsigned char *tables = NULL
        if self._generation == self.mem.generation:
            return 0
        (gdesc, ndesc), (gavail, navail), (gused, nused) = self.layout.areas()
        bind_area(self.mem, gdesc, ndesc, &desc)
        bind_area(self.mem, gavail, navail, &avail)
        bind_area(self.mem, gused, nused, &used)
        if self.indirect_area is not None:
            bind_area(self.mem, self.indirect_area, self.indirect_area_bytes(self.q.size, self.q.indirect_max),
                      &tables)
        self.q.desc = <vring_desc *>desc
        self.q.avail = <uint16_t *>avail
        self.q.used = used
        self.q.indirect_host = tables
        self._generation = self.mem.generation
        return 0

    cdef int _check(self) except -1:
        if self.broken:
            raise broken_error("driver", self.error)
        if self._generation != self.mem.generation:
            self._bind()
        return 0

    cdef _fail_used(self, int code, uint64_t a, uint64_t b):
        e = used_error(USED_REASONS[code - 1], self.q.last_used, a, b)
        self.broken = True
        self.error = e
        raise e

    cdef inline object _drop_token(self, uint16_t head):
        """The token of a reaped chain (its head if it had none), forgotten by the queue."""
        if not self._has_token[head]:
            return head
        token = self._tokens[head]
        self._tokens[head] = None
        self._has_token[head] = 0
        return token

    def reset(self):
        """Zero the three ring areas and start over with every descriptor free."""
        cdef uint32_t i
        self._bind()
        layout = self.layout
        (_, ndesc), (_, navail), (_, nused) = layout.areas()
        memset(self.q.desc, 0, ndesc)
        memset(self.q.avail, 0, navail)
        memset(self.q.used, 0, nused)
        for i in range(self.q.size):
            self.q.next[i] = (i + 1) % self.q.size
        self.q.free_head = 0
        self.q.num_free = self.q.size
        memset(self.q.inflight, 0, self.q.size)
        self._tokens = [None] * self.q.size
        memset(self._has_token, 0, self.q.size)
        self.q.avail_idx = 0
        self.q.published = 0
        self.q.last_used = 0
        self.q.used_shadow = 0
        self.q.avail_flags = 0
        self.q.interrupts_enabled = True
        self.q.avail_wrap = 1
        self.q.used_wrap = 1
        self.q.added = 0
        self.q.order_head = self.q.order_len = 0
        self.q.skip_head = self.q.skip_count = 0
        self.broken = False
        self.error = None

    @property
    def size(self):
        return self.q.size

    @property
    def num_free(self):
        return self.q.num_free

    @property
    def avail_idx(self):
        return self.q.avail_idx

    @property
    def last_used_idx(self):
        return self.q.last_used

    @property
    def indirect_max(self):
        return self.q.indirect_max

    @property
    def indirect_threshold(self):
        return self.q.indirect_threshold

    @property
    def in_flight(self):
        """Chains added and not yet reaped."""
        cdef uint32_t i, n = 0
        for i in range(self.q.size):
            n += self.q.inflight[i]
        return n

    # -- adding --------------------------------------------------------------------------------------------
    cdef _add_error(self, int code, uint32_t bad, const uint64_t *addrs, const long long *lens, uint32_t nseg,
                    list len_list=None):
        if len_list is not None:
            length = len_list[bad] if bad < len(len_list) else 0
        elif lens != NULL:
            length = lens[bad]
        if code == A_EMPTY:
            raise ValueError("a chain needs at least one buffer")
        if code == A_LEN:
            raise ValueError(f"buffer length {length} is not between 1 and 2**32 - 1")
        if code == A_ORDER:
            raise ValueError("device-readable buffers must come before device-writable ones")
        if code == A_ADDR:
            raise AddressError(f"buffer {addrs[bad]:#x} (+{length}) is outside guest memory")
        if code == A_WLEN:
            raise ValueError("the chain's writable length exceeds 2**32 - 1")
        if code == A_LONG:
            raise ValueError(f"a chain of {nseg} buffers is longer than the queue size {self.q.size}")
        raise QueueFull(f"{bad} descriptors needed, {self.q.num_free} free")

    def add(self, out=(), in_=(), token=None):
        """Make one chain available: ``out`` buffers the device reads, then ``in_`` buffers it writes.

        Returns the head index. ``token`` (default: the head) comes back from ``pop_used``. The avail index is
        published by ``kick_needed``.
        """
        cdef uint64_t addrs_s[8]
        cdef long long lens_s[8]
        cdef uint8_t wr_s[8]
        cdef uint64_t *addrs = addrs_s
        cdef long long *lens = lens_s
        cdef uint8_t *wr = wr_s
        cdef unsigned char *block = NULL
        cdef uint32_t k, bad = 0, nseg
        cdef uint16_t head = 0
        cdef int code
        self._check()
        nseg = len(out) + len(in_)
        if nseg > 8:
            block = <unsigned char *>malloc(nseg * (sizeof(uint64_t) + sizeof(long long) + 1))
            if block == NULL:
                raise MemoryError()
            addrs = <uint64_t *>block
            lens = <long long *>(block + nseg * sizeof(uint64_t))
            wr = block + nseg * (sizeof(uint64_t) + sizeof(long long))
        try:
            k = _parse_buffers(out, 0, addrs, lens, wr, 0)
            _parse_buffers(in_, 1, addrs, lens, wr, k)
            code = drv_add(&self.q, &self.mem.map, addrs, lens, wr, nseg, &head, &bad)
            if code:
                self._add_error(code, bad, addrs, lens, nseg)
        finally:
            free(block)
        if token is not None:
            self._tokens[head] = token
            self._has_token[head] = 1
        return head

    def add_many(self, addrs, lens, writable, chain_segs, heads=None):
        """Add chains from flat segment arrays; returns how many were added (stops early when the ring is full).

        Chain k takes the next ``chain_segs[k]`` segments (or ``chain_segs`` each, if an int); a segment is
        (``addrs[i]``, ``lens[i]``) and device-writable where ``writable[i]`` is true. Head indices go into
        ``heads`` if given.
        """
        cdef cnp.ndarray a = _int_array(addrs, np.uint64)
        cdef cnp.ndarray l = _int_array(lens, np.int64)
        cdef cnp.ndarray w = _int_array(writable, np.bool_)
        cdef cnp.ndarray counts
        cdef cnp.ndarray out_heads
        cdef Py_ssize_t nsegs_total = cnp.PyArray_DIM(a, 0), nchains, c, start = 0, done = 0
        cdef long long each = 0
        cdef const long long *cp = NULL
        cdef uint16_t *hp
        cdef uint32_t nseg, bad = 0
        cdef int code = 0
        self._check()
        if not cnp.PyArray_DIM(l, 0) == nsegs_total == cnp.PyArray_DIM(w, 0):
            raise ValueError("addrs, lens and writable differ in length")
        if isinstance(chain_segs, int):
            each = chain_segs
            if each < 1 or nsegs_total % each:
                raise ValueError("the segments do not split into chains of chain_segs each")
            nchains = nsegs_total // each
        else:
            counts = _int_array(chain_segs, np.int64)
            cp = <const long long *>cnp.PyArray_DATA(counts)
            nchains = cnp.PyArray_DIM(counts, 0)
            if counts.sum() != nsegs_total or (nchains and counts.min() < 0):
                raise ValueError("chain_segs does not add up to the number of segments")
        if heads is not None and len(heads) < nchains:
            raise ValueError("heads is shorter than the number of chains")
        direct = heads is not None and _is_out_array(heads, cnp.NPY_UINT16)
        out_heads = heads if direct else np.empty(nchains, np.uint16)
        hp = <uint16_t *>cnp.PyArray_DATA(out_heads)
        cdef const uint64_t *ap = <const uint64_t *>cnp.PyArray_DATA(a)
        cdef const long long *lp = <const long long *>cnp.PyArray_DATA(l)
        cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(w)
        cdef PyThreadState *_ts = gil_release_if(nchains >= NOGIL_MIN)  # the loop below touches no Python object
        for c in range(nchains):
            nseg = <uint32_t>(each if cp == NULL else cp[c])
            if self.q.num_free < drv_needed(&self.q, nseg):
                break
            code = drv_add(&self.q, &self.mem.map, ap + start, lp + start, wp + start, nseg, &hp[done], &bad)
            if code:
                break
            start += nseg
            done += 1
        gil_restore(_ts)
        if heads is not None and not direct:
            for c in range(done):
                heads[c] = hp[c]
        if code:
            self._add_error(code, bad, ap + start, lp + start, nseg)
        return done

    def add_batch(self, Batch batch not None, count):
        """Add the first ``count`` chains described in ``batch`` (``nsegs`` and the ``seg_*`` arrays); their heads
        go into ``batch.heads``. Returns how many were added (stops early when the ring is full)."""
        cdef Py_ssize_t n = count, k, done = 0
        cdef uint32_t start = 0, nseg = 0, bad = 0
        cdef int code = 0
        cdef bint overrun = False
        if not 0 <= n <= batch.capacity:
            raise ValueError(f"count {n} is outside the batch's capacity {batch.capacity}")
        self._check()
        cdef PyThreadState *_ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
        for k in range(n):
            nseg = batch.nsegs_p[k]
            if <Py_ssize_t>start + nseg > batch.max_segments:
                overrun = True
                break
            if self.q.num_free < drv_needed(&self.q, nseg):
                break
            code = drv_add(&self.q, &self.mem.map, batch.seg_addr_p + start, batch.seg_len_p + start,
                           batch.seg_writable_p + start, nseg, &batch.heads_p[k], &bad)
            if code:
                break
            start += nseg
            done += 1
        gil_restore(_ts)
        batch.count = done
        if overrun:
            raise ValueError(f"chain {done} runs past the batch's {batch.max_segments} segments")
        if code:
            lens = [batch.seg_len_p[start + k] for k in range(nseg)]
            self._add_error(code, bad, batch.seg_addr_p + start, NULL, nseg, lens)
        return done

    def reap_batch(self, Batch batch not None):
        """Reap up to ``batch.capacity`` used buffers into ``batch.heads`` and ``batch.lens``; returns the count."""
        cdef Py_ssize_t n = 0, cap = batch.capacity, i
        cdef uint64_t a = 0, b = 0
        cdef int r = 0
        self._check()
        cdef PyThreadState *_ts = gil_release_if(cap >= NOGIL_MIN)  # the loop below touches no Python object
        while n < cap:
            r = drv_reap_one(&self.q, &batch.heads_p[n], &batch.lens_p[n], &a, &b)
            if r <= 0:
                break
            n += 1
        if n:
            drv_after_reap(&self.q)
        gil_restore(_ts)
        batch.count = n
        for i in range(n):
            if self._has_token[batch.heads_p[i]]:
                self._drop_token(batch.heads_p[i])
        if r < 0:
            self._fail_used(-r, a, b)
        return n

    # -- kicking -------------------------------------------------------------------------------------------
    def kick_needed(self):
        """Publish the avail index; True if the device asked to be notified of what was added since the last call."""
        self._check()
        return drv_kick_needed(&self.q)

    # -- reaping -------------------------------------------------------------------------------------------
    def get_used(self):
        """The next (token, written length) the device returned, or None."""
        cdef uint16_t head = 0
        cdef uint32_t written = 0
        cdef uint64_t a = 0, b = 0
        self._check()
        cdef int r = drv_reap_one(&self.q, &head, &written, &a, &b)
        if r == 0:
            return None
        if r < 0:
            self._fail_used(-r, a, b)
        drv_after_reap(&self.q)
        return self._drop_token(head), written

    def pop_used(self, max_count=None):
        """Every (token, written length) the device returned so far (at most ``max_count``)."""
        cdef uint16_t head = 0
        cdef uint32_t written = 0
        cdef uint64_t a = 0, b = 0
        cdef int r
        cdef Py_ssize_t limit = -1 if max_count is None else max_count
        self._check()
        out = []
        while limit < 0 or len(out) < limit:
            r = drv_reap_one(&self.q, &head, &written, &a, &b)
            if r == 0:
                break
            if r < 0:
                self._fail_used(-r, a, b)
            out.append((self._drop_token(head), written))
        if out:
            drv_after_reap(&self.q)
        return out

    def pop_used_into(self, heads, lens):
        """Reap up to ``len(heads)`` used buffers into the arrays ``heads`` and ``lens``; returns the count."""
        cdef cnp.ndarray h, l
        cdef uint16_t *hp
        cdef uint32_t *lp
        cdef Py_ssize_t want = len(heads), n = 0, i
        cdef uint64_t a = 0, b = 0
        cdef int r = 0
        self._check()
        if len(lens) < want:
            raise ValueError("lens is shorter than heads")
        direct_h = _is_out_array(heads, cnp.NPY_UINT16)
        direct_l = _is_out_array(lens, cnp.NPY_UINT32)
        h = heads if direct_h else np.empty(want, np.uint16)
        l = lens if direct_l else np.empty(want, np.uint32)
        hp = <uint16_t *>cnp.PyArray_DATA(h)
        lp = <uint32_t *>cnp.PyArray_DATA(l)
        cdef PyThreadState *_ts = gil_release_if(want >= NOGIL_MIN)  # the loop below touches no Python object
        while n < want:
            r = drv_reap_one(&self.q, &hp[n], &lp[n], &a, &b)
            if r <= 0:
                break
            n += 1
        if n:
            drv_after_reap(&self.q)
        gil_restore(_ts)
        for i in range(n):
            if self._has_token[hp[i]]:
                self._drop_token(hp[i])
            if not direct_h:
                heads[i] = hp[i]
            if not direct_l:
                lens[i] = lp[i]
        if r < 0:
            self._fail_used(-r, a, b)
        return n

    # -- interrupts ----------------------------------------------------------------------------------------
    def disable_interrupts(self):
        """Ask the device not to interrupt (the driver polls)."""
        self._check()
        self.q.interrupts_enabled = False
        if self.q.packed:
            pk_set_event(<unsigned char *>self.q.avail, 0, EVENT_DISABLE)
            return
        if self.q.event_idx:
            # used_event one behind what we have seen: the device's used index will not cross it again soon.
            vring_write_shared_u16(&self.q.avail[2 + self.q.size], <uint16_t>(self.q.last_used - 1))
        else:
            self.q.avail_flags |= AVAIL_F_NO_INTERRUPT
            vring_write_shared_u16(&self.q.avail[0], self.q.avail_flags)  # avail->flags

    def enable_interrupts(self):
        """Ask for an interrupt on the next used buffer; True if some are already there (reap before sleeping)."""
        self._check()
        self.q.interrupts_enabled = True
        if self.q.packed:
            pk_arm_event(<unsigned char *>self.q.avail, self.q.event_idx, self.q.last_used, self.q.used_wrap)
            vring_fence_store_then_check()
            return self.q.skip_count > 0 or pk_is_used(pk_flags(self.q.desc, self.q.last_used), self.q.used_wrap)
        if self.q.event_idx:
            vring_write_shared_u16(&self.q.avail[2 + self.q.size], self.q.last_used)  # avail->used_event
        else:
            self.q.avail_flags &= ~AVAIL_F_NO_INTERRUPT
            vring_write_shared_u16(&self.q.avail[0], self.q.avail_flags)  # avail->flags
        # The store above must be visible before we read used->idx again, or an interrupt can be lost.
        vring_fence_store_then_check()
        return vring_observe_idx(<uint16_t *>(self.q.used + 2)) != self.q.last_used


# ---------------------------------------------------------------------------------------------------------------
# Packed queues: the same classes over the packed layout (the C functions dispatch on q.packed)
# ---------------------------------------------------------------------------------------------------------------
cdef class PackedDeviceQueue(DeviceQueue):
    """The device's end of a packed virtqueue. Same methods as DeviceQueue; ``head`` is the buffer id."""

    def __init__(self, GuestMemory mem, layout, features=0, *, max_indirect=DEFAULT_MAX_INDIRECT):
        if not isinstance(layout, PackedLayout):
            raise TypeError("a packed queue needs a PackedLayout")
        self.q.packed = True
        super().__init__(mem, layout, features, max_indirect=max_indirect)


cdef class PackedDriverQueue(DriverQueue):
    """The driver's end of a packed virtqueue. Same methods as DriverQueue; heads are buffer ids."""

    def __init__(self, GuestMemory mem, layout, features=0, *, indirect_area=None, indirect_max=16,
                 indirect_threshold=2):
        if not isinstance(layout, PackedLayout):
            raise TypeError("a packed queue needs a PackedLayout")
        self.q.packed = True
        self.q.in_order = bool(features & Feature.IN_ORDER)
        super().__init__(mem, layout, features, indirect_area=indirect_area, indirect_max=indirect_max,
                         indirect_threshold=indirect_threshold)


# ---------------------------------------------------------------------------------------------------------------
# The C floor: the request cycle with no Python in the loop (benchmarks measure the Python-facing APIs against it)
# ---------------------------------------------------------------------------------------------------------------
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


def run_cycles(DriverQueue drv not None, DeviceQueue dev not None, Batch shape not None, long long n,
               int batch=32):
    """Run ``n`` request cycles entirely in C and return the nanoseconds they took.

    Each round the driver adds ``batch`` chains shaped like chain 0 of ``shape`` (drv_add), publishes and checks
    for a kick (drv_kick_needed); the device pops them (dev_pop), returns each with its writable length
    (dev_put_used), publishes the used index once and checks for an interrupt (dev_notify_needed); the driver
    reaps them (drv_reap_one). The same functions, on the same rings, as the Python-facing calls use.
    """
    cdef ChainError err
    cdef uint16_t head = 0
    cdef uint32_t written = 0, bad = 0, nseg = shape.nsegs_p[0]
    cdef uint64_t a = 0, b = 0
    cdef long long done = 0, start, elapsed
    cdef int k, r = 0, round_size
    if batch < 1 or nseg < 1 or nseg > shape.max_segments:
        raise ValueError("need batch >= 1 and a first chain in shape")
    if dev.mem is not drv.mem or dev.layout != drv.layout:
        raise ValueError("the driver and the device must share one ring")
    drv._check()
    dev._check()
    with nogil:
        start = now_ns()
        while done < n:
            round_size = <int>min(<long long>batch, n - done)
            for k in range(round_size):
                r = drv_add(&drv.q, &drv.mem.map, shape.seg_addr_p, shape.seg_len_p, shape.seg_writable_p, nseg,
                            &head, &bad)
                if r:
                    break
            if r:
                break
            drv_kick_needed(&drv.q)
            for k in range(round_size):
                r = dev_pop(&dev.q, &dev.mem.map, &head, &err)
                if r != 1:
                    break
                dev_put_used(&dev.q, head, dev.q.writable_len)
            if r != 1:
                break
            dev_after_pop(&dev.q)
            dev_publish(&dev.q)
            dev_notify_needed(&dev.q)
            for k in range(round_size):
                r = drv_reap_one(&drv.q, &head, &written, &a, &b)
                if r != 1:
                    break
            if r != 1:
                break
            drv_after_reap(&drv.q)
            r = 0
            done += round_size
        elapsed = now_ns() - start
    if done < n:
        raise RuntimeError(f"the C cycle stopped after {done} requests (code {r}): is the ring in use or too small?")
    return elapsed
