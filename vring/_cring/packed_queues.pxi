# The packed queues as Python sees them: the device's and the driver's classes over the packed layout. They keep
# every method of DeviceQueue and DriverQueue (device.pxi, driver.pxi), whose generic operations dispatch.pxi
# sends to packed_device.pxi and packed_driver.pxi; here are only what a packed ring adds: its per-id tables, the
# layout it takes, and its wrap counters.

cdef class PackedDeviceQueue(DeviceQueue):
    """The device's end of a packed virtqueue. Same methods and the same one-caller rule as DeviceQueue;
    ``head`` is the buffer id."""

    def __dealloc__(self):
        free(self.q.packed_ring.ndesc)

    def __init__(self, GuestMemory mem, layout, features=0, *, max_indirect=DEFAULT_MAX_INDIRECT):
        if not isinstance(layout, PackedLayout):
            raise caller_error("layout-kind", kind="packed", layout="PackedLayout", given=type(layout).__name__)
        self.q.packed = True
        self.q.packed_ring.ndesc = <uint16_t *>malloc(layout.size * sizeof(uint16_t))
        if self.q.packed_ring.ndesc == NULL:
            raise MemoryError()
        self._setup(mem, layout, features, max_indirect)

    @property
    def state(self):
        return QueueState(self.q.last_avail, self.q.used_idx, self.q.packed_ring.avail_wrap,
                          self.q.packed_ring.used_wrap)

    @property
    def avail_wrap(self):
        """The driver's wrap counter (spec 2.8.1) the device expects on the next available descriptor: 0 or 1."""
        return self.q.packed_ring.avail_wrap

    @property
    def used_wrap(self):
        """The device's wrap counter (spec 2.8.1) for the next used descriptor it writes: 0 or 1."""
        return self.q.packed_ring.used_wrap

    cdef uint16_t *_ndesc_table(self):
        return self.q.packed_ring.ndesc

    cdef uint32_t _pending_slots(self):
        cdef uint32_t i, slots = 0
        for i in range(self.q.rec.pending_pos, self.q.rec.npending):
            slots += self.q.packed_ring.ndesc[self.q.rec.pending[i]]
        return slots

    cdef object _init_record(self, view):
        return init_packed(view, self.q.size, self.q.used_idx, self.q.packed_ring.used_wrap, self.q.last_avail,
                           self.q.packed_ring.avail_wrap)

    cdef object _recover_record(self, view):
        flags = self.mem.view(self.layout.desc, self.layout.desc_bytes).cast("H")[7::8]  # every desc[i].flags
        return recover_packed(view, self.q.size, flags.__getitem__)

    cdef _resume(self, found):
        self.q.used_idx, self.q.packed_ring.used_wrap = found.used_idx, found.used_wrap
        self.q.last_avail, self.q.packed_ring.avail_wrap = found.last_avail_idx, found.avail_wrap

    cdef object _checked_state(self, state):
        return state.checked_packed(self.q.size)

    cdef int _restore_indices(self, state) except -1:
        # Packed indices are ring slots, each with its lap's wrap counter; a used_idx of None means "where the
        # driver's next chain starts".
        self.q.last_avail = state.last_avail_idx
        self.q.packed_ring.avail_wrap = state.avail_wrap
        if state.used_idx is None:
            self.q.used_idx, self.q.packed_ring.used_wrap = self.q.last_avail, self.q.packed_ring.avail_wrap
        else:
            self.q.used_idx, self.q.packed_ring.used_wrap = state.used_idx, state.used_wrap
        return 0


cdef class PackedDriverQueue(DriverQueue):
    """The driver's end of a packed virtqueue. Same methods and the same one-caller rule as DriverQueue; heads
    are buffer ids."""

    def __dealloc__(self):
        free(self.q.packed_ring.order)
        free(self.q.packed_ring.skip_id)
        free(self.q.packed_ring.skip_len)

    def __init__(self, GuestMemory mem, layout, features=0, *, indirect_area=None, indirect_max=16,
                 indirect_threshold=2):
        if not isinstance(layout, PackedLayout):
            raise caller_error("layout-kind", kind="packed", layout="PackedLayout", given=type(layout).__name__)
        self.q.packed = True
        self.q.packed_ring.in_order = bool(features & Feature.IN_ORDER)
        n = layout.size
        self.q.packed_ring.order = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.packed_ring.skip_id = <uint16_t *>malloc(n * sizeof(uint16_t))
        self.q.packed_ring.skip_len = <uint32_t *>malloc(n * sizeof(uint32_t))
        if (self.q.packed_ring.order == NULL or self.q.packed_ring.skip_id == NULL
                or self.q.packed_ring.skip_len == NULL):
            raise MemoryError()
        self._setup(mem, layout, features, indirect_area, indirect_max, indirect_threshold)

    @property
    def avail_wrap(self):
        """The driver's wrap counter (spec 2.8.1) for the next descriptor it makes available: 0 or 1."""
        return self.q.packed_ring.avail_wrap

    @property
    def used_wrap(self):
        """The device's wrap counter (spec 2.8.1) the driver expects on the next used descriptor: 0 or 1."""
        return self.q.packed_ring.used_wrap
