# Guest memory: guest-physical regions -> host buffers, and the bounds-checked lookups every translation goes
# through.
cdef inline TableHead *table_head(Region *regions) noexcept nogil:
    return (<TableHead *>regions) - 1


cdef Region *table_new(Py_ssize_t n):
    """A region table of ``n`` entries (at least one slot) behind a zeroed TableHead, or NULL."""
    cdef TableHead *head = <TableHead *>malloc(sizeof(TableHead) + max(1, n) * sizeof(Region))
    if head == NULL:
        return NULL
    head.holders = 0
    head.retired = 0
    return <Region *>(head + 1)


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

    Regions may be added and removed while a queue's batch call runs in another thread with the GIL released:
    the region table is immutable once published and a change replaces it whole. A batch works on the table (and
    the regions' memory) as it was when the batch started, which stays alive until the batch ends. A queue's ring
    areas are mapped again at its next call.
    """

    def __cinit__(self):
        self.map.regions = table_new(0)
        if self.map.regions == NULL:
            raise MemoryError()
        self.map.n = 0
        self.map.hint = 0
        self._regions = []
        self._views = []
        self._retired = {}
        self.generation = 0

    def __init__(self):
        pass  # refuses arguments: __cinit__ alone would accept and ignore any

    def __dealloc__(self):
        if self.map.regions != NULL:  # no batch can hold it: a running batch keeps its queue, and so us, alive
            free(table_head(self.map.regions))

    def add_region(self, gpa, buffer):
        """Make ``buffer`` (bytearray, mmap, numpy array, ...) the guest memory at ``gpa``."""
        self._insert(gpa, as_byte_view(buffer), buffer)

    def add_region_fd(self, gpa, size, fd, offset=0):
        """Map ``size`` bytes of ``fd`` from ``offset`` (shared, read-write) as the guest memory at ``gpa``."""
        if size <= 0:
            raise caller_error("region-size", size=size)
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
        raise caller_error("no-region", gpa=gpa)

    def _insert(self, gpa, view, owner):
        size = view.nbytes
        if not isinstance(gpa, int) or gpa < 0 or size == 0 or gpa + size - 1 > 0xFFFFFFFFFFFFFFFF:
            raise caller_error("region-range", gpa=gpa, size=size)
        for rgpa, rsize, _, _ in self._regions:
            if gpa < rgpa + rsize and rgpa < gpa + size:
                raise caller_error("region-overlap", gpa=gpa, size=size, other=rgpa,
                                   other_size=rsize)
        self._rebuild(sorted(self._regions + [(gpa, size, view, owner)], key=lambda r: r[0]))

    cdef _rebuild(self, list regions):
        cdef Py_buffer buf
        cdef Region *table = table_new(len(regions))
        cdef TableHead *old = table_head(self.map.regions)
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
            free(table_head(table))
            raise
        if old.holders:  # a batch still walks it: it and the regions' memory live on until the batch lets go
            old.retired = 1
            self._retired[<size_t>old] = self._regions
        else:
            free(old)
        self.map.regions = table
        self.map.n = len(regions)
        self.map.hint = 0
        self._regions = regions
        self._views = [r[2] for r in regions]
        self.generation += 1

    cdef MemMap _hold(self):
        """The region table for a batch about to release the GIL: kept (with the regions' memory) until
        ``_release``, whatever changes meanwhile. Called with the GIL held."""
        table_head(self.map.regions).holders += 1
        return self.map

    cdef void _release(self, MemMap *held):
        """The batch that held ``held`` is done (with the GIL held again)."""
        cdef TableHead *head = table_head(held.regions)
        head.holders -= 1
        if held.regions == self.map.regions:
            self.map.hint = held.hint
        elif head.retired and not head.holders:
            del self._retired[<size_t>head]
            free(head)

    @property
    def regions(self):
        """(guest-physical address, size) of every region, in address order."""
        return [(r[0], r[1]) for r in self._regions]

    def pieces(self, gpa, length):
        """(region index, offset in region, length) pieces covering [gpa, gpa + length), or AddressError."""
        if length < 0 or gpa < 0 or gpa + length - 1 > 0xFFFFFFFFFFFFFFFF:
            raise caller_error("range", gpa=gpa, length=length)
        out = []
        cdef int i
        g = gpa  # a Python int: it may reach 2**64 once the last piece is taken
        while length > 0:
            i = mem_find(&self.map, g)
            if i < 0:
                raise caller_error("outside-memory", gpa=g)
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
            raise caller_error("spans-regions", gpa=gpa, length=length, count=len(pieces))
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
        raise host_alignment_error(gpa)
    out[0] = p
    return 0
