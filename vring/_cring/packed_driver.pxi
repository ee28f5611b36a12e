# The driver side of a packed ring (spec 2.8), in C: write chains into the descriptor ring, decide on kicks, reap
# and check the used descriptors the device wrote in their place (in order, with IN_ORDER), ask for interrupts.

cdef inline void packed_drv_bind(DrvQueue *q, unsigned char *desc, unsigned char *driver_event,
                                 unsigned char *device_event) noexcept nogil:
    q.packed_ring.desc = <vring_packed_desc *>desc
    q.packed_ring.driver_event = <vring_event_suppress *>driver_event
    q.packed_ring.device_event = <vring_event_suppress *>device_event


cdef inline void packed_drv_reset(DrvQueue *q) noexcept nogil:
    q.packed_ring.avail_wrap = 1
    q.packed_ring.used_wrap = 1
    q.packed_ring.added = 0
    q.packed_ring.order_head = q.packed_ring.order_len = 0
    q.packed_ring.skip_head = q.packed_ring.skip_count = 0


cdef inline void packed_drv_check_invariants(DrvQueue *q) noexcept nogil:
    cdef uint32_t i, ids_in_flight = 0
    vring_assert(q.packed_ring.avail_wrap <= 1 and q.packed_ring.used_wrap <= 1, "wrap counters are 0 or 1")
    vring_assert(q.avail_idx < q.size and q.last_used < q.size, "packed ring slots avail_idx, last_used < size")
    vring_assert(q.packed_ring.order_len <= q.size and q.packed_ring.skip_count <= q.size,
                 "in-order queues hold at most size buffers")
    for i in range(q.size):
        ids_in_flight += q.inflight[i]
    # Every buffer id not in flight is on the free list.
    drv_check_free_list(q, q.size - ids_in_flight)


cdef inline int packed_drv_add(DrvQueue *q, MemMap *m, const uint64_t *addrs, const seg_len_t *lens,
                               const uint8_t *wr, uint32_t nseg, uint16_t *head_out, uint32_t *bad) noexcept nogil:
    """Make one chain available in the packed ring: 0, or an ADD_* code. Checks first, then writes: the rest of
    the chain, then the head, whose flags (release) make the whole chain available at once."""
    cdef uint64_t wlen = 0
    cdef bint seen_w = False, indirect
    cdef uint32_t k, needed
    cdef uint16_t buffer_id, flags, head_flags = 0, pos
    cdef uint8_t wrap
    cdef vring_packed_desc *ring = q.packed_ring.desc
    cdef unsigned char *table
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
        return ADD_WRITABLE_TOO_LARGE
    buffer_id = q.free_head
    q.free_head = q.next[buffer_id]
    if indirect:
        table = q.indirect_host + <uint64_t>buffer_id * q.indirect_max * DESC_SIZE
        for k in range(nseg):  # entries are sequential: no NEXT, no id
            packed_write_desc(table + DESC_SIZE * k, addrs[k], <uint32_t>lens[k], 0,
                              DESC_F_WRITE if wr[k] else 0)
        head_addr = q.indirect_area + <uint64_t>buffer_id * q.indirect_max * DESC_SIZE
        head_len = nseg * DESC_SIZE
        head_flags = DESC_F_INDIRECT
    else:
        pos = q.avail_idx
        wrap = q.packed_ring.avail_wrap
        for k in range(nseg):
            flags = (DESC_F_WRITE if wr[k] else 0) | (DESC_F_NEXT if k < nseg - 1 else 0)
            if k == 0:
                head_addr = addrs[0]
                head_len = <uint32_t>lens[0]
                head_flags = flags
            else:  # the rest of the chain goes in first, flags and all
                flags |= PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED
                packed_write_desc(<unsigned char *>&ring[pos], addrs[k], <uint32_t>lens[k], buffer_id, flags)
            packed_advance(&pos, &wrap, 1, q.size)
    ring[q.avail_idx].addr = head_addr
    packed_publish_desc(&ring[q.avail_idx], head_len, buffer_id,
                        head_flags | (PACKED_DESC_F_AVAIL if q.packed_ring.avail_wrap else PACKED_DESC_F_USED))
    packed_advance(&q.avail_idx, &q.packed_ring.avail_wrap, needed, q.size)
    q.num_free -= needed
    q.packed_ring.added += needed
    q.ndesc[buffer_id] = <uint16_t>needed
    q.wlen[buffer_id] = <uint32_t>wlen
    q.inflight[buffer_id] = 1
    if q.packed_ring.in_order:
        q.packed_ring.order[(q.packed_ring.order_head + q.packed_ring.order_len) % q.size] = buffer_id
        q.packed_ring.order_len += 1
    head_out[0] = buffer_id
    return 0


cdef inline bint packed_drv_kick_needed(DrvQueue *q) noexcept nogil:
    cdef uint32_t added = q.packed_ring.added
    q.packed_ring.added = 0
    if not added:
        return False
    # Our descriptors must be visible before we read the device's event suppression.
    vring_fence_store_then_check()
    return packed_event_wants(q.packed_ring.device_event, q.event_idx, q.size, q.packed_ring.avail_wrap,
                              q.avail_idx, <uint16_t>(q.avail_idx - added))


cdef inline void packed_drv_consume(DrvQueue *q, uint16_t buffer_id) noexcept nogil:
    """Step the used slot past the buffer's slots in the ring."""
    packed_advance(&q.last_used, &q.packed_ring.used_wrap, q.ndesc[buffer_id], q.size)


cdef inline void packed_drv_release(DrvQueue *q, uint16_t buffer_id) noexcept nogil:
    """The buffer's completion is handed back: its slots and its id are free again. Until then its slots count
    as taken, so a free slot always means a free id."""
    q.num_free += q.ndesc[buffer_id]
    q.inflight[buffer_id] = 0
    q.next[buffer_id] = q.free_head
    q.free_head = buffer_id


cdef inline void packed_drv_skip_push(DrvQueue *q, uint16_t buffer_id, uint32_t written) noexcept nogil:
    cdef uint32_t slot = (q.packed_ring.skip_head + q.packed_ring.skip_count) % q.size
    q.packed_ring.skip_id[slot] = buffer_id
    q.packed_ring.skip_len[slot] = written
    q.packed_ring.skip_count += 1


cdef inline int packed_drv_reap_one(DrvQueue *q, uint16_t *head, uint32_t *written, uint64_t *a,
                                    uint64_t *b) noexcept nogil:
    """1 reaped one, 0 nothing, or minus a CHECK_USED_* code."""
    cdef PackedDrvRing *r = &q.packed_ring
    cdef uint64_t words[2]
    cdef uint32_t length
    cdef uint16_t buffer_id, flags, skipped
    if not r.skip_count:
        if not packed_is_used(packed_flags(r.desc, q.last_used), r.used_wrap):
            return 0
        vring_load_desc_once(words, &r.desc[q.last_used])  # the used descriptor, once
        buffer_id = <uint16_t>(words[1] >> 32)
        flags = <uint16_t>(words[1] >> 48)
        # Spec 2.8.4: the length of a used descriptor without WRITE is reserved and ignored by drivers.
        length = <uint32_t>words[1] if flags & DESC_F_WRITE else 0
        if q.num_free == q.size:  # no slot in flight
            a[0] = flags
            return -CHECK_USED_WRAP
        a[0] = buffer_id
        if buffer_id >= q.size:
            b[0] = q.size
            return -CHECK_USED_ID_OUT_OF_RANGE
        if not q.inflight[buffer_id]:
            return -CHECK_USED_ID_NOT_IN_FLIGHT
        if length > q.wlen[buffer_id]:
            a[0] = length
            b[0] = q.wlen[buffer_id]
            return -CHECK_USED_LEN_TOO_LARGE
        if r.in_order:
            # IN_ORDER: one used descriptor may stand for every buffer made available before it.
            while r.order_len and r.order[r.order_head] != buffer_id:
                skipped = r.order[r.order_head]
                r.order_head = (r.order_head + 1) % q.size
                r.order_len -= 1
                packed_drv_consume(q, skipped)
                packed_drv_skip_push(q, skipped, 0)
            r.order_head = (r.order_head + 1) % q.size
            r.order_len -= 1
        packed_drv_consume(q, buffer_id)
        if not r.skip_count:
            packed_drv_release(q, buffer_id)
            head[0] = buffer_id
            written[0] = length
            return 1
        packed_drv_skip_push(q, buffer_id, length)
    head[0] = r.skip_id[r.skip_head]
    written[0] = r.skip_len[r.skip_head]
    r.skip_head = (r.skip_head + 1) % q.size
    r.skip_count -= 1
    packed_drv_release(q, head[0])
    return 1


cdef inline void packed_drv_after_reap(DrvQueue *q) noexcept nogil:
    # With EVENT_IDX, ask for an interrupt at the next used descriptor, in its lap (driver event suppression).
    if q.event_idx and q.interrupts_enabled:
        packed_arm_event(q.packed_ring.driver_event, True, q.last_used, q.packed_ring.used_wrap)


cdef inline void packed_drv_disable_interrupts(DrvQueue *q) noexcept nogil:
    packed_set_event(q.packed_ring.driver_event, 0, EVENT_FLAG_DISABLE)


cdef inline bint packed_drv_enable_interrupts(DrvQueue *q) noexcept nogil:
    packed_arm_event(q.packed_ring.driver_event, q.event_idx, q.last_used, q.packed_ring.used_wrap)
    # The store above must be visible before we look at the ring again, or an interrupt can be lost.
    vring_fence_store_then_check()
    return q.packed_ring.skip_count > 0 or packed_is_used(packed_flags(q.packed_ring.desc, q.last_used),
                                                          q.packed_ring.used_wrap)
