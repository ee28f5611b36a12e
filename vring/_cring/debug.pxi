# What each public queue method does on entry and exit. In a debug build (VRING_DEBUG) it asserts one caller at a
# time and checks the queue's invariants, those both layouts share here and each layout's own (its *_check_invariants
# function); in a normal build it compiles to nothing.

cdef inline void dev_check_common_invariants(DevQueue *q) noexcept nogil:
    """Debug builds: the invariants of the state both layouts share, then the layout's own."""
    cdef uint32_t i
    if q.inflight == NULL:  # never initialised: nothing to check
        return
    vring_assert(q.nseg <= q.segs_cap, "nseg <= segs_cap")
    for i in range(q.size):
        vring_assert(q.inflight[i] == HEAD_FREE or q.inflight[i] == HEAD_HELD or q.inflight[i] == HEAD_PENDING,
                     "a head is in flight (1) or not (0), or to be popped again (3)")
    dev_check_invariants(q)


cdef inline void dev_enter(DevQueue *q) noexcept nogil:
    """On entry to each public method. Debug builds: one caller at a time, and the invariants hold."""
    vring_debug_enter(&q.busy, "device queue")
    if VRING_DEBUG_BUILD:
        dev_check_common_invariants(q)


cdef inline void dev_exit(DevQueue *q) noexcept nogil:
    """On exit from each public method, whatever it raised."""
    if VRING_DEBUG_BUILD:
        dev_check_common_invariants(q)
    vring_debug_exit(&q.busy)


cdef inline void drv_check_common_invariants(DrvQueue *q) noexcept nogil:
    """Debug builds: the invariants of the state both layouts share, then the layout's own."""
    cdef uint32_t i, taken = 0
    if q.inflight == NULL:  # never initialised: nothing to check
        return
    vring_assert(q.num_free <= q.size, "num_free <= size")
    for i in range(q.size):
        vring_assert(q.inflight[i] <= 1, "a head is in flight (1) or not (0)")
        if q.inflight[i]:
            taken += q.ndesc[i]
    vring_assert(taken + q.num_free == q.size, "the slots of the chains in flight and num_free make the ring")
    drv_check_invariants(q)


cdef inline void drv_enter(DrvQueue *q) noexcept nogil:
    """On entry to each public method. Debug builds: one caller at a time, and the invariants hold."""
    vring_debug_enter(&q.busy, "driver queue")
    if VRING_DEBUG_BUILD:
        drv_check_common_invariants(q)


cdef inline void drv_exit(DrvQueue *q) noexcept nogil:
    """On exit from each public method, whatever it raised."""
    if VRING_DEBUG_BUILD:
        drv_check_common_invariants(q)
    vring_debug_exit(&q.busy)


if VRING_DEBUG_BUILD:
    def _debug_corrupt(queue, what):
        """Debug builds only: break one invariant of ``queue`` on purpose, for the tests of the assertions.

        Driver queues: ``"num_free"`` or ``"free_head"``; device queues: ``"inflight"`` or ``"avail_shadow"``
        (split). The queue's next public call must then abort, naming the invariant.
        """
        cdef DriverQueue drv
        cdef DeviceQueue dev
        if isinstance(queue, DriverQueue) and what in ("num_free", "free_head"):
            drv = queue
            if what == "num_free":
                drv.q.num_free = drv.q.size + 1
            else:
                drv.q.free_head = <uint16_t>drv.q.size
        elif isinstance(queue, DeviceQueue) and what in ("inflight", "avail_shadow"):
            dev = queue
            if what == "inflight":
                dev.q.inflight[0] = 2
            else:
                dev.q.split.avail_shadow = <uint16_t>(dev.q.last_avail + dev.q.size + 1)
        else:
            raise ValueError(f"no invariant {what!r} to break in {type(queue).__name__}")
