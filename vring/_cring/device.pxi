# The device's end of a queue as Python sees it: DeviceQueue, over the generic C operations of dispatch.pxi (the
# packed subclass, PackedDeviceQueue, is in packed_queues.pxi).

cdef inline int dev_pop(DevQueue *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Pop the next chain into q.segs: 1 popped, 0 nothing available, or minus the failed check's code."""
    cdef int r = dev_peek(q, m, head_out, err)
    if r == 1:
        dev_commit(q, head_out[0])
    return r


cdef inline int dev_check_push(DevQueue *q, uint64_t head, uint64_t written) noexcept nogil:
    """0 if the device may return ``head`` with ``written`` bytes, else a PUSH_* code."""
    if head >= q.size or q.inflight[head] != HEAD_HELD:
        return PUSH_HEAD_NOT_HELD
    if written > q.inflight_wlen[head]:
        return PUSH_WRITTEN_TOO_LARGE
    return 0


ctypedef fused push_head_t:
    long long
    uint16_t

ctypedef fused push_len_t:
    long long
    uint32_t


cdef int dev_push_all(DevQueue *q, const push_head_t *heads, const push_len_t *lens, Py_ssize_t n,
                      Py_ssize_t *bad) noexcept nogil:
    """Check every (head, written) first, then return them all and publish once.

    0, or a PUSH_* code with ``bad`` = the offending entry; nothing is written on an error.
    """
    cdef Py_ssize_t i, j
    cdef int code = 0
    for i in range(n):
        bad[0] = i
        if heads[i] < 0 or heads[i] >= q.size:
            code = PUSH_HEAD_NOT_HELD
        elif q.inflight[heads[i]] == HEAD_MARKED:  # held: only its length or the repetition can be wrong
            code = (PUSH_WRITTEN_TOO_LARGE if lens[i] < 0 or <uint64_t>lens[i] > q.inflight_wlen[heads[i]]
                    else PUSH_PUSHED_TWICE)
        elif lens[i] < 0:
            code = PUSH_HEAD_NOT_HELD if q.inflight[heads[i]] != HEAD_HELD else PUSH_WRITTEN_TOO_LARGE
        else:
            code = dev_check_push(q, <uint64_t>heads[i], <uint64_t>lens[i])
        if code:
            for j in range(i):
                q.inflight[heads[j]] = HEAD_HELD
            return code
        q.inflight[heads[i]] = HEAD_MARKED  # seen in this batch (still in flight)
    for i in range(n):
        q.inflight[heads[i]] = HEAD_HELD
        dev_put_used(q, <uint16_t>heads[i], <uint32_t>lens[i])
    if n:
        dev_publish(q)
    return 0


cdef class DeviceQueue:
    """The device's end of a split virtqueue (what QEMU or a vhost-user backend does). Trusts nothing it reads.

    One caller per queue at a time: the queue is not thread-safe. While a batch call runs with the GIL released
    (``pop_batch``, ``push_batch``, ``push_many``), nothing else may use the queue; its GuestMemory's regions may
    change (the batch keeps working on them as they were when it started, see GuestMemory).
    A debug build (``VRING_DEBUG=1``) aborts when a second caller enters.
    """

    def __cinit__(self):
        memset(&self.q, 0, sizeof(DevQueue))

    def __dealloc__(self):
        self._detach()
        rec_free(&self.q.rec)
        free(self.q.inflight)
        free(self.q.inflight_wlen)
        free(self.q.segs)

    def __init__(self, GuestMemory mem, layout, features=0, *, max_indirect=DEFAULT_MAX_INDIRECT):
        if not isinstance(layout, SplitLayout):
            raise caller_error("layout-kind", kind="split", layout="SplitLayout", given=type(layout).__name__)
        self._setup(mem, layout, features, max_indirect)

    cdef int _setup(self, GuestMemory mem, layout, features, max_indirect) except -1:
        """What both layouts' __init__ do once the layout's kind is checked."""
        if max_indirect < 1:
            raise caller_error("max-indirect")
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
        self.q.segs_cap = 16
        self.q.segs = <Seg *>malloc(self.q.segs_cap * sizeof(Seg))
        if self.q.inflight == NULL or self.q.inflight_wlen == NULL or self.q.segs == NULL:
            raise MemoryError()
        self._reset()
        return 0

    cdef int _bind(self) except -1:
        """Translate the ring areas again if guest memory changed since the last call."""
        cdef unsigned char *desc
        cdef unsigned char *driver_area
        cdef unsigned char *device_area
        if self._generation == self.mem.generation:
            return 0
        (gdesc, ndesc), (gdriver, ndriver), (gdevice, ndevice) = self.layout.areas()
        bind_area(self.mem, gdesc, ndesc, &desc)
        bind_area(self.mem, gdriver, ndriver, &driver_area)
        bind_area(self.mem, gdevice, ndevice, &device_area)
        dev_bind(&self.q, desc, driver_area, device_area)
        self._generation = self.mem.generation
        return 0

    cdef int _check(self) except -1:
        if self.broken:
            raise broken_error("device", self.error)
        if self._generation != self.mem.generation:
            self._bind()
        return 0

    cdef _fail(self, ChainError *err):
        if err.reason == CHAIN_NO_MEMORY:
            raise MemoryError()
        e = _chain_check_error(err.reason, err.head, err.index, err.in_indirect, err.a, err.b)
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

    cdef _reset(self):
        self._detach()
        rec_free(&self.q.rec)
        self.q.last_avail = 0
        self.q.used_idx = 0
        self.broken = False
        self.error = None
        self.q.notify_enabled = True
        self.q.signalled_valid = False
        memset(self.q.inflight, 0, self.q.size)
        dev_reset(&self.q)

    def reset(self):
        """Forget everything (device reset): indices back to 0, no chain in flight, not broken, no inflight
        record kept."""
        dev_enter(&self.q)
        try:
            self._reset()
        finally:
            dev_exit(&self.q)

    @property
    def state(self):
        return QueueState(self.q.last_avail, self.q.used_idx)

    def restore(self, state):
        """Resume at a saved state; a ``used_idx`` of None is read from the used ring (vhost-user takeover).

        StateError, and the queue unchanged, if the ring cannot be in that state (see QueueState.checked_split).
        """
        state = QueueState(*state)
        dev_enter(&self.q)
        try:
            self._bind()
            state = self._checked_state(state)
            self._reset()
            self._restore_indices(state)
        finally:
            dev_exit(&self.q)

    cdef object _checked_state(self, state):
        return state.checked_split(self.q.size, vring_observe_idx(split_avail_idx(self.q.split.avail)))

    cdef int _restore_indices(self, state) except -1:
        self.q.last_avail = state.last_avail_idx
        self.q.split.avail_shadow = self.q.last_avail
        if state.used_idx is None:
            self.q.used_idx = vring_read_shared_u16(split_used_idx(self.q.split.used))
        else:
            self.q.used_idx = state.used_idx
        return 0

    # -- inflight record (vhost-user "Inflight I/O tracking", inflight.pxi) --------------------------------------
    def attach_inflight(self, region):
        """Keep the inflight record in ``region`` (one queue's region of vhost-user's inflight buffer, at least
        ``inflight_region_size(size, packed)`` bytes, held until ``detach_inflight`` or ``reset``) on every pop and
        push. A fresh (zeroed) region is initialised at the queue's position: returns 0. Else the record a device
        left is checked (InflightError, the queue unchanged), repaired, and the queue resumes where it says: the
        chains it had in flight are popped again first, in the order they were first popped; returns their number.
        A queue that holds chains refuses (ValueError): attach before popping.
        """
        dev_enter(&self.q)
        try:
            self._check()
            return attach_record(self, region)
        finally:
            dev_exit(&self.q)

    cdef uint16_t *_ndesc_table(self):
        return NULL  # a split chain takes no ring slots of its own

    cdef uint32_t _pending_slots(self):
        return self.q.rec.left

    cdef object _init_record(self, view):
        return init_split(view, self.q.size, self.q.used_idx, self.q.last_avail)

    cdef object _recover_record(self, view):
        return recover_split(view, self.q.size, vring_read_shared_u16(split_used_idx(self.q.split.used)),
                             vring_observe_idx(split_avail_idx(self.q.split.avail)))

    cdef _resume(self, found):
        self.q.used_idx = found.used_idx
        self.q.last_avail = self.q.split.avail_shadow = found.last_avail_idx

    cdef _detach(self):
        self.q.rec.region = NULL
        self._region_view = None

    def detach_inflight(self):
        """Stop keeping the inflight record (the region is the caller's again); chains still to resubmit stay
        in flight, as the device still holds them."""
        dev_enter(&self.q)
        try:
            self._detach()
        finally:
            dev_exit(&self.q)

    @property
    def inflight_pending(self):
        """Chains the inflight record said were in flight that pops have not returned again yet."""
        return self.q.rec.left

    # -- popping -------------------------------------------------------------------------------------------
    def avail_pending(self):
        """How many chains the driver has made available that the device has not popped (0 if broken).

        A packed ring counts the descriptors made available from ``last_avail_idx`` on.
        """
        dev_enter(&self.q)
        try:
            if self.broken:
                return 0
            self._bind()
            return self._pending_slots() + dev_avail_pending(&self.q)
        finally:
            dev_exit(&self.q)

    def pop(self):
        """The next available chain, or None. Raises MalformedChain (and latches broken) on bad driver input."""
        cdef ChainError err
        cdef uint16_t head = 0
        cdef int r
        dev_enter(&self.q)
        try:
            self._check()
            r = dev_pop(&self.q, &self.mem.map, &head, &err)
            if r == 0:
                return None
            if r < 0:
                self._fail(&err)
            dev_after_pop(&self.q)
            return make_chain(&self.q, head, self.mem._views)
        finally:
            dev_exit(&self.q)

    def pop_many(self, n):
        """Up to ``n`` available chains."""
        cdef ChainError err
        cdef uint16_t head = 0
        cdef int r
        cdef Py_ssize_t want = n
        dev_enter(&self.q)
        try:
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
        finally:
            dev_exit(&self.q)

    # -- pushing -------------------------------------------------------------------------------------------
    cdef _push_error(self, int code, object head, object written):
        if code == PUSH_HEAD_NOT_HELD:
            raise caller_error("head-not-held", head=head)
        if code == PUSH_PUSHED_TWICE:
            raise caller_error("pushed-twice", head=head)
        raise caller_error("written-too-large", written=written, writable=self.q.inflight_wlen[head])

    def push(self, head, written=0):
        """Return the chain at ``head`` to the driver with ``written`` bytes written into its writable part."""
        cdef long long h, w
        dev_enter(&self.q)
        try:
            self._check()
            try:
                h = head
                w = written
            except (OverflowError, TypeError):
                head, written = int(head), int(written)  # huge, negative or not an int: the checks below word it
                h = head if -1 <= head < 1 << 62 else -1
                w = written if -1 <= written < 1 << 62 else -1
            if h < 0 or h >= self.q.size or self.q.inflight[h] != HEAD_HELD:
                self._push_error(PUSH_HEAD_NOT_HELD, head, written)
            if w < 0 or w > self.q.inflight_wlen[h]:
                self._push_error(PUSH_WRITTEN_TOO_LARGE, head, written)
            dev_put_used(&self.q, <uint16_t>h, <uint32_t>w)
            dev_publish(&self.q)
        finally:
            dev_exit(&self.q)

    def push_many(self, heads, lens):
        """Return several chains; the used index is published once, after all their elements."""
        cdef cnp.ndarray h, l
        cdef Py_ssize_t n, i = 0
        cdef const long long *hp
        cdef const long long *lp
        cdef int code = 0
        cdef PyThreadState *_ts
        cdef MemMap held
        dev_enter(&self.q)
        try:
            self._check()
            h = _int_array(heads, np.int64, "heads", "int64")
            l = _int_array(lens, np.int64, "lens", "int64")
            n = cnp.PyArray_DIM(h, 0)
            hp = <const long long *>cnp.PyArray_DATA(h)
            lp = <const long long *>cnp.PyArray_DATA(l)
            if cnp.PyArray_DIM(l, 0) != n:
                raise caller_error("push-lengths")
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
            code = dev_push_all(&self.q, hp, lp, n, &i)
            gil_restore(_ts)
            self.mem._release(&held)
            if code:
                self._push_error(code, hp[i], lp[i])
        finally:
            dev_exit(&self.q)

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
        cdef PyThreadState *_ts
        cdef MemMap held
        dev_enter(&self.q)
        try:
            self._check()
            batch.seg_start_p[0] = 0
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(cap >= NOGIL_MIN)  # the loop below touches no Python object
            while n < cap:
                r = dev_peek(&self.q, &held, &head, &err)
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
            self.mem._release(&held)
            batch.count = n
            if r < 0:
                self._fail(&err)
            if too_big:
                raise caller_error("batch-chain-too-long", nseg=self.q.nseg, max_segments=max_seg)
            return n
        finally:
            dev_exit(&self.q)

    def push_batch(self, Batch batch not None, count=None):
        """Return the first ``count`` (default ``batch.count``) chains of ``batch`` with ``batch.lens`` bytes
        written; the used index is published once."""
        cdef Py_ssize_t n = batch.count if count is None else count, i
        cdef int code = 0
        cdef PyThreadState *_ts
        cdef MemMap held
        dev_enter(&self.q)
        try:
            if not 0 <= n <= batch.capacity:
                raise caller_error("batch-count", count=n, capacity=batch.capacity)
            self._check()
            held = self.mem._hold()  # regions may change meanwhile: the loop walks this table
            _ts = gil_release_if(n >= NOGIL_MIN)  # the loop below touches no Python object
            code = dev_push_all(&self.q, batch.heads_p, batch.lens_p, n, &i)
            gil_restore(_ts)
            self.mem._release(&held)
            if code:
                self._push_error(code, batch.heads_p[i], batch.lens_p[i])
        finally:
            dev_exit(&self.q)

    # -- notifications -------------------------------------------------------------------------------------
    def notify_needed(self):
        """Whether the driver wants an interrupt for what was pushed since the last call."""
        dev_enter(&self.q)
        try:
            self._check()
            return dev_notify_needed(&self.q)
        finally:
            dev_exit(&self.q)

    def enable_notifications(self):
        """Ask the driver to kick again; returns True if chains are already available (handle them first)."""
        dev_enter(&self.q)
        try:
            self._check()
            self.q.notify_enabled = True
            return dev_enable_notifications(&self.q) or self.q.rec.left != 0
        finally:
            dev_exit(&self.q)

    def disable_notifications(self):
        """Tell the driver kicks are not needed (the device polls); with EVENT_IDX avail_event just stops moving."""
        dev_enter(&self.q)
        try:
            self._check()
            self.q.notify_enabled = False
            dev_disable_notifications(&self.q)
        finally:
            dev_exit(&self.q)
