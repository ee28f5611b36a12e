# The device side of a packed ring (spec 2.8), in C: read and check the chains the driver made available in the
# descriptor ring, write used descriptors in their place, decide on interrupts, ask for kicks.

cdef inline void packed_dev_bind(DevQueue *q, unsigned char *desc, unsigned char *driver_event,
                                 unsigned char *device_event) noexcept nogil:
    q.packed_ring.desc = <vring_packed_desc *>desc
    q.packed_ring.driver_event = <vring_event_suppress *>driver_event
    q.packed_ring.device_event = <vring_event_suppress *>device_event


cdef inline void packed_dev_reset(DevQueue *q) noexcept nogil:
    q.packed_ring.avail_wrap = 1
    q.packed_ring.used_wrap = 1
    q.packed_ring.pushed = 0


cdef inline void packed_dev_check_invariants(DevQueue *q) noexcept nogil:
    cdef uint32_t i
    vring_assert(q.last_avail < q.size and q.used_idx < q.size, "packed ring slots last_avail, used_idx < size")
    vring_assert(q.packed_ring.avail_wrap <= 1 and q.packed_ring.used_wrap <= 1, "wrap counters are 0 or 1")
    for i in range(q.size):
        vring_assert(not q.inflight[i] or 1 <= q.packed_ring.ndesc[i] <= q.size,
                     "a buffer in flight took between 1 and size slots")


cdef inline int packed_dev_peek(DevQueue *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Read and check the chain at last_avail (or the next one an inflight record gave back) without taking it:
    1, 0 (nothing available) or minus a code. One call of the walker, so that the compiler inlines it."""
    cdef const vring_packed_desc *ring = q.packed_ring.desc
    cdef uint16_t pos = q.last_avail
    cdef uint8_t wrap = q.packed_ring.avail_wrap
    cdef uint8_t expected = HEAD_FREE
    cdef vring_packed_desc *copies = q.rec.copies if q.rec.region != NULL else NULL
    cdef int r
    if q.rec.left:
        r = packed_dev_lay_out_kept(q, &pos, &wrap, err)
        if r:
            return -r
        ring, expected, copies = q.rec.scratch, HEAD_PENDING, NULL
    elif not packed_is_avail(packed_flags(ring, pos), wrap):
        return 0
    r = packed_dev_walk(q, m, ring, pos, wrap, expected, copies, head_out, err)
    # The record's free list has an entry per slot: a driver reusing slots the device holds would run past it.
    if r == 1 and copies != NULL and q.rec.held_slots + q.packed_ring.peeked_ndesc > q.size:
        return -dev_fail(err, CHECK_SLOTS_IN_FLIGHT, pos, (pos + q.packed_ring.peeked_ndesc - 1) % q.size, False,
                         q.packed_ring.peeked_ndesc, q.size - q.rec.held_slots)
    return r


cdef int packed_dev_lay_out_kept(DevQueue *q, uint16_t *pos, uint8_t *wrap, ChainError *err) noexcept nogil:
    """The next chain an inflight record gave back, laid out in q.rec.scratch as a ring (the slot after it never
    available) for the walker, which checks it as any chain the driver makes available; ``wrap``: the lap its head
    says, ``pos``: where it starts. A chain the driver wrote across the ring's end has its later descriptors in
    the next lap: it starts as many slots before the end as it had there, so that the walker's wrap counter flips
    where their flags do. 0, or the failed check's code."""
    cdef uint32_t start = q.rec.kept_start[q.rec.pending_pos]
    cdef uint32_t num = q.rec.kept_start[q.rec.pending_pos + 1] - start
    cdef const vring_packed_desc *kept = &q.rec.kept[start]
    cdef uint16_t head_flags = kept[0].flags
    cdef uint32_t j, first = 0, k
    wrap[0] = (head_flags & PACKED_DESC_F_AVAIL) != 0
    for j in range(1, num):
        if packed_is_avail(kept[j].flags, wrap[0] ^ 1):
            first = q.size - j
            break
    for k in range(num):
        q.rec.scratch[(first + k) % q.size] = kept[k]
    if num < q.size:
        memset(&q.rec.scratch[(first + num) % q.size], 0, sizeof(vring_packed_desc))
    pos[0] = <uint16_t>first
    if not packed_is_avail(head_flags, wrap[0]):
        return dev_fail(err, CHECK_CHAIN_FLAGS, first, first, False, head_flags, wrap[0])
    return 0


cdef inline int packed_dev_walk(DevQueue *q, MemMap *m, const vring_packed_desc *ring, uint16_t pos, uint8_t wrap,
                                uint8_t expected, vring_packed_desc *copies, uint16_t *head_out,
                                ChainError *err) noexcept nogil:
    """Walk and check the chain at ``pos`` of ``ring`` (available in the lap ``wrap``) into q.segs, its buffer id's
    entry of q.inflight being ``expected``; its ring descriptors go to ``copies`` unless NULL. 1 or minus a code."""
    cdef const unsigned char *table
    cdef uint64_t words[2]
    cdef uint64_t addr, readable_len = 0, writable_len = 0
    cdef uint32_t head_pos = pos, count = 0, length, k, entries
    cdef uint16_t flags, buffer_id = 0
    cdef bint seen_writable = False
    cdef int r
    q.nseg = 0
    q.was_indirect = False
    while True:
        if count >= q.size:
            return -dev_fail(err, CHECK_CHAIN_TOO_LONG, head_pos, pos, False, q.size, 0)
        # struct pvirtq_desc, read once: every check and every use below works on these local copies.
        vring_load_desc_once(words, &ring[pos])
        addr = words[0]
        length = <uint32_t>words[1]
        buffer_id = <uint16_t>(words[1] >> 32)
        flags = <uint16_t>(words[1] >> 48)
        if count and not packed_is_avail(flags, wrap):
            return -dev_fail(err, CHECK_CHAIN_FLAGS, head_pos, pos, False, flags, wrap)
        if copies != NULL:
            memcpy(&copies[count], words, sizeof(vring_packed_desc))  # the descriptor as read, whole
        count += 1
        if flags & DESC_F_INDIRECT:
            r = dev_open_indirect(q, m, addr, length, flags, head_pos, pos, False, &table, err)
            if r:
                return -r
            entries = length // DESC_SIZE
            # Entries are sequential. Spec 2.8.7: WRITE is their only valid flag, the others and the buffer id
            # "are reserved and are ignored by the device".
            for k in range(entries):
                vring_load_desc_once(words, table + DESC_SIZE * k)
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
        packed_advance(&pos, &wrap, 1, q.size)
    if buffer_id >= q.size:
        return -dev_fail(err, CHECK_BUFFER_ID_OUT_OF_RANGE, head_pos, pos, False, buffer_id, q.size)
    if q.inflight[buffer_id] != expected:
        return -dev_fail(err, CHECK_BUFFER_ID_IN_FLIGHT, head_pos, pos, False, buffer_id, 0)
    q.readable_len = <uint32_t>readable_len
    q.writable_len = <uint32_t>writable_len
    q.packed_ring.peeked_ndesc = count
    head_out[0] = buffer_id
    return 1


cdef inline void packed_dev_commit(DevQueue *q, uint16_t buffer_id) noexcept nogil:
    cdef uint32_t ndesc = q.packed_ring.peeked_ndesc
    q.inflight[buffer_id] = HEAD_HELD
    q.inflight_wlen[buffer_id] = q.writable_len
    q.packed_ring.ndesc[buffer_id] = <uint16_t>ndesc
    if q.rec.left:  # given back by the record: keeps its entries and counter
        q.rec.pending_pos += 1
        q.rec.left -= 1
        return
    packed_advance(&q.last_avail, &q.packed_ring.avail_wrap, ndesc, q.size)
    if q.rec.region != NULL:
        packed_rec_fetched(&q.rec, buffer_id, ndesc)


cdef inline void packed_dev_after_pop(DevQueue *q) noexcept nogil:
    # With EVENT_IDX, ask for a kick at the next descriptor, in its lap (device event suppression), unless the
    # device disabled notifications to poll.
    if q.event_idx and q.notify_enabled:
        packed_arm_event(q.packed_ring.device_event, True, q.last_avail, q.packed_ring.avail_wrap)


cdef inline void packed_dev_put_used(DevQueue *q, uint16_t buffer_id, uint32_t written) noexcept nogil:
    # The used descriptor takes the place of the chain's first slot: AVAIL = USED = our wrap counter.
    cdef uint16_t flags = ((PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED if q.packed_ring.used_wrap else 0)
                           | (DESC_F_WRITE if written else 0))
    cdef vring_packed_desc *used = &q.packed_ring.desc[q.used_idx]
    cdef uint32_t ndesc = q.packed_ring.ndesc[buffer_id]
    cdef uint16_t head
    packed_advance(&q.used_idx, &q.packed_ring.used_wrap, ndesc, q.size)
    q.packed_ring.pushed += ndesc
    q.inflight[buffer_id] = HEAD_FREE
    if q.rec.region == NULL:
        packed_publish_desc(used, written, buffer_id, flags)
        return
    # Each push a batch of one for the record: the chain's entries back first, then the used descriptor.
    head = packed_rec_used(&q.rec, buffer_id, ndesc, q.used_idx, q.packed_ring.used_wrap)
    packed_publish_desc(used, written, buffer_id, flags)
    packed_rec_done(&q.rec, head, q.used_idx, q.packed_ring.used_wrap)


cdef inline bint packed_dev_notify_needed(DevQueue *q) noexcept nogil:
    cdef uint16_t new = q.used_idx
    cdef uint32_t pushed = q.packed_ring.pushed
    cdef bint valid = q.signalled_valid
    cdef bint wants
    q.packed_ring.pushed = 0
    q.signalled_valid = True
    if valid and not pushed:
        return False
    # Our used descriptors must be visible before we read the driver's event suppression.
    vring_fence_store_then_check()
    wants = packed_event_wants(q.packed_ring.driver_event, q.event_idx, q.size, q.packed_ring.used_wrap, new,
                               <uint16_t>(new - pushed))
    return wants or (not valid and packed_event_flags(q.packed_ring.driver_event) != EVENT_FLAG_DISABLE)


cdef inline uint32_t packed_dev_avail_pending(DevQueue *q) noexcept nogil:
    """Descriptors made available from last_avail on."""
    cdef uint32_t count = 0
    cdef uint16_t pos = q.last_avail
    cdef uint8_t wrap = q.packed_ring.avail_wrap
    while count < q.size and packed_is_avail(packed_flags(q.packed_ring.desc, pos), wrap):
        count += 1
        packed_advance(&pos, &wrap, 1, q.size)
    return count


cdef inline bint packed_dev_enable_notifications(DevQueue *q) noexcept nogil:
    packed_arm_event(q.packed_ring.device_event, q.event_idx, q.last_avail, q.packed_ring.avail_wrap)
    # The store above must be visible before we look at the ring again, or a kick can be lost.
    vring_fence_store_then_check()
    return packed_is_avail(packed_flags(q.packed_ring.desc, q.last_avail), q.packed_ring.avail_wrap)


cdef inline void packed_dev_disable_notifications(DevQueue *q) noexcept nogil:
    packed_set_event(q.packed_ring.device_event, 0, EVENT_FLAG_DISABLE)
