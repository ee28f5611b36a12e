# The driver's end of a queue as Python sees it: DriverQueue, over the generic C operations of dispatch.pxi (the
# packed subclass, PackedDriverQueue, is in packed_queues.pxi).

cdef class DriverQueue:
    """The driver's end of a split virtqueue (what a guest kernel does). Trusts nothing the device writes.

    One caller per queue at a time: the queue is not thread-safe. While a batch call runs with the GIL released
    (``add_many``, ``add_batch``, ``reap_batch``, ``pop_used_into``), nothing else may use the queue; its
    GuestMemory's regions may change (the batch keeps working on them as they were when it started, see
    GuestMemory). A debug build (``VRING_DEBUG=1``) aborts when a second caller enters.
    """

    def __cinit__(self):
        memset(&self.q, 0, sizeof(DrvQueue))

    def __dealloc__(self):
        free(self.q.next)
        free(self.q.ndesc)
        free(self.q.wlen)
        free(self.q.inflight)
        free(self._has_token)

    def __init__(self, GuestMemory mem, layout, features=0, *, indirect_area=None, indirect_max=16,
                 indirect_threshold=2):
        if not isinstance(layout, SplitLayout):
            raise caller_error("layout-kind", kind="split", layout="SplitLayout", given=type(layout).__name__)
        self._setup(mem, layout, features, indirect_area, indirect_max, indirect_threshold)

    cdef int _setup(self, GuestMemory mem, layout, features, indirect_area, indirect_max,
                    indirect_threshold) except -1:
        """What both layouts' __init__ do once the layout's kind is checked."""
        if not 1 <= indirect_max <= DEFAULT_MAX_INDIRECT:
            raise caller_error("indirect-max", limit=DEFAULT_MAX_INDIRECT)
        if indirect_threshold < 1:
            raise caller_error("indirect-threshold")
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
        self._has_token = <uint8_t *>malloc(n)
        if (self.q.next == NULL or self.q.ndesc == NULL or self.q.wlen == NULL or self.q.inflight == NULL
                or self._has_token == NULL):
            raise MemoryError()
        self._reset()
        return 0

    @staticmethod
    def indirect_area_bytes(size, indirect_max=16):
        """Bytes of guest memory the indirect tables need: one table of ``indirect_max`` entries per head."""
        return size * indirect_max * 16

    cdef int _bind(self) except -1:
        cdef unsigned char *desc
        cdef unsigned char *driver_area
        cdef unsigned char *device_area
        cdef unsigned char *tables = NULL
        if self._generation == self.mem.generation:
            return 0
        (gdesc, ndesc), (gdriver, ndriver), (gdevice, ndevice) = self.layout.areas()
        bind_area(self.mem, gdesc, ndesc, &desc)
        bind_area(self.mem, gdriver, ndriver, &driver_area)
        bind_area(self.mem, gdevice, ndevice, &device_area)
        if self.indirect_area is not None:
            bind_area(self.mem, self.indirect_area, self.indirect_area_bytes(self.q.size, self.q.indirect_max),
                      &tables)
        drv_bind(&self.q, desc, driver_area, device_area)
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
        e = _used_check_error(code, self.q.last_used, a, b)
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

    cdef _reset(self):
        cdef uint32_t i
        cdef unsigned char *area
        self._bind()
        for gpa, length in self.layout.areas():  # the three areas as the layout sizes them, either kind
            bind_area(self.mem, gpa, length, &area)
            memset(area, 0, length)
        for i in range(self.q.size):
            self.q.next[i] = (i + 1) % self.q.size
        self.q.free_head = 0
        self.q.num_free = self.q.size
        memset(self.q.inflight, 0, self.q.size)
        self._tokens = [None] * self.q.size
        memset(self._has_token, 0, self.q.size)
        self.q.avail_idx = 0
        self.q.last_used = 0
        self.q.interrupts_enabled = True
        drv_reset(&self.q)
        self.broken = False
        self.error = None

    def reset(self):
        """Zero the three ring areas and start over with every descriptor free."""
        drv_enter(&self.q)
        try:
            self._reset()
        finally:
            drv_exit(&self.q)

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
        if code == ADD_EMPTY_CHAIN:
            raise caller_error("empty-chain")
        if code == ADD_BUFFER_LENGTH:
            raise caller_error("buffer-length", length=length)
        if code == ADD_BUFFER_ORDER:
            raise caller_error("buffer-order")
        if code == ADD_BUFFER_OUTSIDE_MEMORY:
            raise caller_error("buffer-outside-memory", addr=addrs[bad], length=length)
        if code == ADD_WRITABLE_TOO_LARGE:
            raise caller_error("writable-too-large")
        if code == ADD_CHAIN_LONGER_THAN_QUEUE:
            raise caller_error("chain-longer-than-queue", nseg=nseg, size=self.q.size)
        raise caller_error("no-free-descriptors", needed=bad, free=self.q.num_free)

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
        drv_enter(&self.q)
        try:
            self._check()
            nseg = len(out) + len(in_)
            if nseg > 8:
                block = <unsigned char *>malloc(nseg * (sizeof(uint64_t) + sizeof(long long) + 1))
                if block == NULL:
                    raise MemoryError()
                addrs = <uint64_t *>block
                lens = <long long *>(block + nseg * sizeof(uint64_t))
                wr = block + nseg * (sizeof(uint64_t) + sizeof(long long))
            k = _parse_buffers(out, 0, addrs, lens, wr, 0)
            _parse_buffers(in_, 1, addrs, lens, wr, k)
            code = drv_add(&self.q, &self.mem.map, addrs, lens, wr, nseg, &head, &bad)
            if code:
                self._add_error(code, bad, addrs, lens, nseg)
            if token is not None:
                self._tokens[head] = token
                self._has_token[head] = 1
            return head
        finally:
            free(block)
            drv_exit(&self.q)

    def add_many(self, addrs, lens, writable, chain_segs, heads=None):
        """Add chains from flat segment arrays; returns how many were added (stops early when the ring is full).

        Chain k takes the next ``chain_segs[k]`` segments (or ``chain_segs`` each, if an int); a segment is
        (``addrs[i]``, ``lens[i]``) and device-writable where ``writable[i]`` is true. Head indices go into
        ``heads`` if given.
        """
        cdef cnp.ndarray a, l, w, counts, out_heads
        cdef Py_ssize_t nsegs_total, nchains, c, start = 0, done = 0
        cdef long long each = 0
        cdef const long long *cp = NULL
        cdef uint16_t *hp
        cdef const uint64_t *ap
        cdef const long long *lp
        cdef const uint8_t *wp
        cdef uint32_t nseg = 0, bad = 0
        cdef int code = 0
        cdef PyThreadState *_ts
        cdef MemMap held
        drv_enter(&self.q)
        try:
            self._check()
            a = _int_array(addrs, np.uint64, "addrs", "uint64")
            l = _int_array(lens, np.int64, "lens", "int64")
            w = _int_array(writable, np.bool_)
            nsegs_total = cnp.PyArray_DIM(a, 0)
            if not cnp.PyArray_DIM(l, 0) == nsegs_total == cnp.PyArray_DIM(w, 0):
                raise caller_error("segment-arrays")
            if isinstance(chain_segs, int):
                if chain_segs < 1 or nsegs_total % chain_segs:
                    raise caller_error("segments-uneven")
                each = chain_segs
                nchains = nsegs_total // each
            else:
                counts = _int_array(chain_segs, np.int64, "chain_segs", "int64")
                cp = <const long long *>cnp.PyArray_DATA(counts)
                nchains = cnp.PyArray_DIM(counts, 0)
                if counts.sum() != nsegs_total or (nchains and counts.min() < 0):
                    raise caller_error("segments-total")
            if heads is not None and len(heads) < nchains:
                raise caller_error("heads-short")
            direct = heads is not None and _is_out_array(heads, cnp.NPY_UINT16)
            out_heads = heads if direct else np.empty(nchains, np.uint16)
            hp = <uint16_t *>cnp.PyArray_DATA(out_heads)
            ap = <const uint64_t *>cnp.PyArray_DATA(a)
            lp = <const long long *>cnp.PyArray_DATA(l)
            wp = <const uint8_t *>cnp.PyArray_DATA(w)
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(nchains >= NOGIL_MIN)  # the loop below touches no Python object
            for c in range(nchains):
                nseg = <uint32_t>(each if cp == NULL else cp[c])
                if self.q.num_free < drv_needed(&self.q, nseg):
                    break
                code = drv_add(&self.q, &held, ap + start, lp + start, wp + start, nseg, &hp[done], &bad)
                if code:
                    break
                start += nseg
                done += 1
            gil_restore(_ts)
            self.mem._release(&held)
            if heads is not None and not direct:
                for c in range(done):
                    heads[c] = hp[c]
            if code:
                self._add_error(code, bad, ap + start, lp + start, nseg)
            return done
        finally:
            drv_exit(&self.q)

    def add_batch(self, Batch batch not None, count):
        """Add the first ``count`` chains described in ``batch`` (``nsegs`` and the ``seg_*`` arrays); their heads
        go into ``batch.heads``. Returns how many were added (stops early when the ring is full)."""
        cdef Py_ssize_t n = count, k, done = 0
        cdef uint32_t start = 0, nseg = 0, bad = 0
        cdef int code = 0
        cdef bint overrun = False
        cdef PyThreadState *_ts
        cdef MemMap held
        drv_enter(&self.q)
        try:
            if not 0 <= n <= batch.capacity:
                raise caller_error("batch-count", count=n, capacity=batch.capacity)
            self._check()
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
            for k in range(n):
                nseg = batch.nsegs_p[k]
                if <Py_ssize_t>start + nseg > batch.max_segments:
                    overrun = True
                    break
                if self.q.num_free < drv_needed(&self.q, nseg):
                    break
                code = drv_add(&self.q, &held, batch.seg_addr_p + start, batch.seg_len_p + start,
                               batch.seg_writable_p + start, nseg, &batch.heads_p[k], &bad)
                if code:
                    break
                start += nseg
                done += 1
            gil_restore(_ts)
            self.mem._release(&held)
            batch.count = done
            if overrun:
                raise caller_error("batch-chain-segments", chain=done, max_segments=batch.max_segments)
            if code:
                lens = [batch.seg_len_p[start + k] for k in range(nseg)]
                self._add_error(code, bad, batch.seg_addr_p + start, NULL, nseg, lens)
            return done
        finally:
            drv_exit(&self.q)

    def reap_batch(self, Batch batch not None):
        """Reap up to ``batch.capacity`` used buffers into ``batch.heads`` and ``batch.lens``; returns the count."""
        cdef Py_ssize_t n = 0, cap = batch.capacity, i
        cdef uint64_t a = 0, b = 0
        cdef int r = 0
        cdef PyThreadState *_ts
        cdef MemMap held
        drv_enter(&self.q)
        try:
            self._check()
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(cap >= NOGIL_MIN)  # the loop below touches no Python object
            while n < cap:
                r = drv_reap_one(&self.q, &batch.heads_p[n], &batch.lens_p[n], &a, &b)
                if r <= 0:
                    break
                n += 1
            if n and r >= 0:  # after a malformed entry the queue is broken: nothing more goes into the ring
                drv_after_reap(&self.q)
            gil_restore(_ts)
            self.mem._release(&held)
            batch.count = n
            for i in range(n):
                if self._has_token[batch.heads_p[i]]:
                    self._drop_token(batch.heads_p[i])
            if r < 0:
                self._fail_used(-r, a, b)
            return n
        finally:
            drv_exit(&self.q)

    # -- kicking -------------------------------------------------------------------------------------------
    def kick_needed(self):
        """Publish the avail index; True if the device asked to be notified of what was added since the last call."""
        drv_enter(&self.q)
        try:
            self._check()
            return drv_kick_needed(&self.q)
        finally:
            drv_exit(&self.q)

    # -- reaping -------------------------------------------------------------------------------------------
    def get_used(self):
        """The next (token, written length) the device returned, or None."""
        cdef uint16_t head = 0
        cdef uint32_t written = 0
        cdef uint64_t a = 0, b = 0
        cdef int r
        drv_enter(&self.q)
        try:
            self._check()
            r = drv_reap_one(&self.q, &head, &written, &a, &b)
            if r == 0:
                return None
            if r < 0:
                self._fail_used(-r, a, b)
            drv_after_reap(&self.q)
            return self._drop_token(head), written
        finally:
            drv_exit(&self.q)

    def pop_used(self, max_count=None):
        """Every (token, written length) the device returned so far (at most ``max_count``)."""
        cdef uint16_t head = 0
        cdef uint32_t written = 0
        cdef uint64_t a = 0, b = 0
        cdef int r
        cdef Py_ssize_t limit = -1 if max_count is None else max_count
        drv_enter(&self.q)
        try:
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
        finally:
            drv_exit(&self.q)

    def pop_used_into(self, heads, lens):
        """Reap up to ``len(heads)`` used buffers into the arrays ``heads`` and ``lens``; returns the count."""
        cdef cnp.ndarray h, l
        cdef uint16_t *hp
        cdef uint32_t *lp
        cdef Py_ssize_t want, n = 0, i
        cdef uint64_t a = 0, b = 0
        cdef int r = 0
        cdef PyThreadState *_ts
        cdef MemMap held
        drv_enter(&self.q)
        try:
            want = len(heads)
            self._check()
            if len(lens) < want:
                raise caller_error("lens-short")
            direct_h = _is_out_array(heads, cnp.NPY_UINT16)
            direct_l = _is_out_array(lens, cnp.NPY_UINT32)
            h = heads if direct_h else np.empty(want, np.uint16)
            l = lens if direct_l else np.empty(want, np.uint32)
            hp = <uint16_t *>cnp.PyArray_DATA(h)
            lp = <uint32_t *>cnp.PyArray_DATA(l)
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(want >= NOGIL_MIN)  # the loop below touches no Python object
            while n < want:
                r = drv_reap_one(&self.q, &hp[n], &lp[n], &a, &b)
                if r <= 0:
                    break
                n += 1
            if n and r >= 0:  # after a malformed entry the queue is broken: nothing more goes into the ring
                drv_after_reap(&self.q)
            gil_restore(_ts)
            self.mem._release(&held)
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
        finally:
            drv_exit(&self.q)

    # -- interrupts ----------------------------------------------------------------------------------------
    def disable_interrupts(self):
        """Ask the device not to interrupt (the driver polls)."""
        drv_enter(&self.q)
        try:
            self._check()
            self.q.interrupts_enabled = False
            drv_disable_interrupts(&self.q)
        finally:
            drv_exit(&self.q)

    def enable_interrupts(self):
        """Ask for an interrupt on the next used buffer; True if some are already there (reap before sleeping)."""
        drv_enter(&self.q)
        try:
            self._check()
            self.q.interrupts_enabled = True
            return drv_enable_interrupts(&self.q)
        finally:
            drv_exit(&self.q)
