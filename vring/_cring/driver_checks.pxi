# What the driver side shares between split and packed rings: the checks of a chain before it takes ring slots,
# and of the buffers a caller passes.

ctypedef fused seg_len_t:
    long long   # lengths from Python or int64 arrays: may be out of range, checked below
    uint32_t    # lengths from a Batch


cdef inline bint drv_indirect_for(DrvQueue *q, uint32_t nseg) noexcept nogil:
    return q.use_indirect and q.indirect_threshold <= nseg <= q.indirect_max


cdef inline uint32_t drv_needed(DrvQueue *q, uint32_t nseg) noexcept nogil:
    return 1 if drv_indirect_for(q, nseg) else nseg


cdef inline long drv_reserve(DrvQueue *q, uint32_t nseg, uint32_t *bad) noexcept nogil:
    """The checks before a chain of ``nseg`` buffers takes ring slots: the slots it needs, or minus an ADD_*
    code."""
    cdef bint indirect
    cdef uint32_t needed
    if nseg == 0:
        return -ADD_EMPTY_CHAIN
    indirect = drv_indirect_for(q, nseg)
    if not indirect and nseg > q.size:
        return -ADD_CHAIN_LONGER_THAN_QUEUE
    needed = 1 if indirect else nseg
    if q.num_free < needed:
        bad[0] = needed
        return -ADD_NO_FREE_DESCRIPTORS
    return needed


cdef inline int drv_check_buffer(MemMap *m, uint64_t addr, seg_len_t length, bint writable, bint *seen_writable,
                                 uint64_t *writable_len) noexcept nogil:
    """One buffer of a chain the driver adds: 0 or an ADD_* code."""
    if seg_len_t is uint32_t:
        if length == 0:
            return ADD_BUFFER_LENGTH
    else:
        if length < 1 or length > <long long>U32_MAX:
            return ADD_BUFFER_LENGTH
    if writable:
        seen_writable[0] = True
        writable_len[0] += <uint64_t>length
    elif seen_writable[0]:
        return ADD_BUFFER_ORDER
    if not mem_contains(m, addr, <uint64_t>length):
        return ADD_BUFFER_OUTSIDE_MEMORY
    return 0


cdef inline void drv_check_free_list(DrvQueue *q, uint32_t links) noexcept nogil:
    """Debug builds: ``links`` entries on the free list from free_head, each in range and not in flight."""
    cdef uint32_t i
    cdef uint16_t link = q.free_head
    for i in range(links):
        vring_assert(link < q.size and not q.inflight[link], "free-list links in range and not in flight")
        if link >= q.size:
            return
        link = q.next[link]


cdef uint32_t _parse_buffers(seq, uint8_t writable, uint64_t *addrs, long long *lens, uint8_t *wr,
                             uint32_t k) except? 0xFFFFFFFF:
    """(address, length) pairs into the C arrays from slot k; returns the next slot. Values no C type holds get
    the same errors the pure-Python twin raises for them."""
    for item in seq:
        addr, length = item
        try:
            addrs[k] = addr
        except (OverflowError, TypeError):
            raise caller_error("buffer-outside-memory", addr=int(addr), length=int(length)) from None
        try:
            lens[k] = length
        except (OverflowError, TypeError):
            raise caller_error("buffer-length", length=int(length)) from None
        wr[k] = writable
        k += 1
    return k
