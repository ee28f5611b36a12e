# The one place that reads ``q.packed``: each generic queue operation goes to its split or packed C function (as
# Linux's virtio_ring.c does with its "generic functions"). The queue classes and the C floor call only these.

# -- device side -------------------------------------------------------------------------------------------------
cdef inline void dev_bind(DevQueue *q, unsigned char *desc, unsigned char *driver_area,
                          unsigned char *device_area) noexcept nogil:
    """Point the queue at its three areas: descriptors, then the driver's and the device's area."""
    if q.packed:
        packed_dev_bind(q, desc, driver_area, device_area)
    else:
        split_dev_bind(q, desc, driver_area, device_area)


cdef inline void dev_reset(DevQueue *q) noexcept nogil:
    if q.packed:
        packed_dev_reset(q)
    else:
        split_dev_reset(q)


cdef inline void dev_check_invariants(DevQueue *q) noexcept nogil:
    if q.packed:
        packed_dev_check_invariants(q)
    else:
        split_dev_check_invariants(q)


cdef inline int dev_peek(DevQueue *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Read and check the next chain into q.segs without taking it: 1 found, 0 nothing available, or minus the
    failed check's code."""
    return packed_dev_peek(q, m, head_out, err) if q.packed else split_dev_peek(q, m, head_out, err)


cdef inline void dev_commit(DevQueue *q, uint16_t head) noexcept nogil:
    """Take the chain dev_peek found: it is in flight until pushed."""
    if q.packed:
        packed_dev_commit(q, head)
    else:
        split_dev_commit(q, head)


cdef inline void dev_after_pop(DevQueue *q) noexcept nogil:
    if q.packed:
        packed_dev_after_pop(q)
    else:
        split_dev_after_pop(q)


cdef inline void dev_put_used(DevQueue *q, uint16_t head, uint32_t written) noexcept nogil:
    if q.packed:
        packed_dev_put_used(q, head, written)
    else:
        split_dev_put_used(q, head, written)


cdef inline void dev_publish(DevQueue *q) noexcept nogil:
    """Make what dev_put_used wrote visible (a packed ring published each used descriptor by its flags already)."""
    if not q.packed:
        split_dev_publish(q)


cdef inline bint dev_notify_needed(DevQueue *q) noexcept nogil:
    return packed_dev_notify_needed(q) if q.packed else split_dev_notify_needed(q)


cdef inline uint32_t dev_avail_pending(DevQueue *q) noexcept nogil:
    return packed_dev_avail_pending(q) if q.packed else split_dev_avail_pending(q)


cdef inline bint dev_enable_notifications(DevQueue *q) noexcept nogil:
    return packed_dev_enable_notifications(q) if q.packed else split_dev_enable_notifications(q)


cdef inline void dev_disable_notifications(DevQueue *q) noexcept nogil:
    if q.packed:
        packed_dev_disable_notifications(q)
    else:
        split_dev_disable_notifications(q)


# -- driver side -------------------------------------------------------------------------------------------------
cdef inline void drv_bind(DrvQueue *q, unsigned char *desc, unsigned char *driver_area,
                          unsigned char *device_area) noexcept nogil:
    """Point the queue at its three areas: descriptors, then the driver's and the device's area."""
    if q.packed:
        packed_drv_bind(q, desc, driver_area, device_area)
    else:
        split_drv_bind(q, desc, driver_area, device_area)


cdef inline void drv_reset(DrvQueue *q) noexcept nogil:
    if q.packed:
        packed_drv_reset(q)
    else:
        split_drv_reset(q)


cdef inline void drv_check_invariants(DrvQueue *q) noexcept nogil:
    if q.packed:
        packed_drv_check_invariants(q)
    else:
        split_drv_check_invariants(q)


cdef inline int drv_add(DrvQueue *q, MemMap *m, const uint64_t *addrs, const seg_len_t *lens, const uint8_t *wr,
                        uint32_t nseg, uint16_t *head_out, uint32_t *bad) noexcept nogil:
    """Add one chain: 0, or an ADD_* code (``bad`` = the offending segment where there is one)."""
    if q.packed:
        return packed_drv_add(q, m, addrs, lens, wr, nseg, head_out, bad)
    return split_drv_add(q, m, addrs, lens, wr, nseg, head_out, bad)


cdef inline bint drv_kick_needed(DrvQueue *q) noexcept nogil:
    return packed_drv_kick_needed(q) if q.packed else split_drv_kick_needed(q)


cdef inline int drv_reap_one(DrvQueue *q, uint16_t *head, uint32_t *written, uint64_t *a, uint64_t *b) noexcept nogil:
    """1 reaped one, 0 nothing, or minus a CHECK_USED_* code (``a``, ``b`` = the values the check compared)."""
    return packed_drv_reap_one(q, head, written, a, b) if q.packed else split_drv_reap_one(q, head, written, a, b)


cdef inline void drv_after_reap(DrvQueue *q) noexcept nogil:
    if q.packed:
        packed_drv_after_reap(q)
    else:
        split_drv_after_reap(q)


cdef inline void drv_disable_interrupts(DrvQueue *q) noexcept nogil:
    if q.packed:
        packed_drv_disable_interrupts(q)
    else:
        split_drv_disable_interrupts(q)


cdef inline bint drv_enable_interrupts(DrvQueue *q) noexcept nogil:
    return packed_drv_enable_interrupts(q) if q.packed else split_drv_enable_interrupts(q)
