# Chain: one descriptor chain the device popped (split or packed ring), as the Python caller sees it.
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


cdef Chain make_chain(DevQueue *q, uint16_t head, list region_views):
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
