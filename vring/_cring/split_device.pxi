# The device side of a split ring (spec 2.7), in C: walk and check the chains the driver made available, return
# them through the used ring, decide on interrupts, ask for kicks.

cdef inline void split_dev_bind(DevQueue *q, unsigned char *desc, unsigned char *avail,
                                unsigned char *used) noexcept nogil:
    q.split.desc = <vring_desc *>desc
    q.split.avail = <uint16_t *>avail
    q.split.used = used


cdef inline void split_dev_reset(DevQueue *q) noexcept nogil:
    q.split.avail_shadow = 0
    q.split.used_flags = 0
    q.split.signalled_used = 0


cdef inline void split_dev_check_invariants(DevQueue *q) noexcept nogil:
    # The avail index read last is never more than a ring ahead (the avail-index-jump check refuses that).
    vring_assert(<uint16_t>(q.split.avail_shadow - q.last_avail) <= q.size, "avail_shadow - last_avail <= size")


cdef inline int split_dev_walk(DevQueue *q, MemMap *m, uint16_t head, ChainError *err) noexcept nogil:
    """Walk the chain at ``head`` into q.segs; 0, or the failed check's code (with ``err`` filled in)."""
    cdef uint64_t words[2]
    cdef uint64_t addr
    cdef uint32_t length
    cdef uint16_t flags, nxt
    cdef const vring_desc *table = q.split.desc
    cdef const unsigned char *indirect_table
    cdef uint32_t limit = q.size  # entries of the table being walked
    cdef uint32_t index = head
    cdef uint32_t count = 0
    cdef bint in_indirect = False
    cdef bint seen_writable = False
    cdef uint64_t readable_len = 0, writable_len = 0
    cdef int r
    q.nseg = 0
    q.was_indirect = False
    while True:
        count += 1
        if count > limit:
            return dev_fail(err, CHECK_CHAIN_LOOP, head, index, in_indirect, limit, 0)
        # struct virtq_desc, read once: every check and every use below works on these local copies.
        vring_load_desc_once(words, &table[index])
        addr = words[0]
        length = <uint32_t>words[1]
        flags = <uint16_t>(words[1] >> 32)
        nxt = <uint16_t>(words[1] >> 48)
        if flags & DESC_F_INDIRECT:
            r = dev_open_indirect(q, m, addr, length, flags, head, index, in_indirect, &indirect_table, err)
            if r:
                return r
            table = <const vring_desc *>indirect_table
            limit = length // sizeof(vring_desc)
            index = 0
            count = 0
            in_indirect = True
            continue
        r = dev_piece(q, m, addr, length, (flags & DESC_F_WRITE) != 0, &readable_len, &writable_len,
                      &seen_writable)
        if r:
            return dev_fail_piece(err, r, head, index, in_indirect, addr, length)
        if not flags & DESC_F_NEXT:
            q.readable_len = <uint32_t>readable_len
            q.writable_len = <uint32_t>writable_len
            return 0
        if nxt >= limit:
            return dev_fail(err, CHECK_NEXT_OUT_OF_RANGE, head, index, in_indirect, nxt, limit)
        index = nxt


cdef inline int split_dev_peek(DevQueue *q, MemMap *m, uint16_t *head_out, ChainError *err) noexcept nogil:
    """Read and check the next chain into q.segs without taking it: 1 found, 0 nothing available, or minus the
    failed check's code."""
    cdef uint16_t avail_idx
    cdef uint16_t head = 0
    cdef int r
    if q.rec.left:  # a chain an inflight record gave back: walked from its head like any other
        head = q.rec.pending[q.rec.pending_pos]
    else:
        if q.split.avail_shadow == q.last_avail:
            # Everything seen so far is consumed: look at avail->idx again (acquire: ring entries after it).
            avail_idx = vring_observe_idx(split_avail_idx(q.split.avail))
            if avail_idx == q.last_avail:
                return 0
            if <uint16_t>(avail_idx - q.last_avail) > q.size:
                return -dev_fail(err, CHECK_AVAIL_INDEX_JUMP, 0, 0, False, avail_idx, q.last_avail)
            q.split.avail_shadow = avail_idx
        head = vring_read_shared_u16(split_avail_entry(q.split.avail, q.size, q.last_avail))  # once
        if head >= q.size:
            return -dev_fail(err, CHECK_HEAD_OUT_OF_RANGE, head, 0, False, q.size, 0)
        if q.inflight[head]:
            return -dev_fail(err, CHECK_HEAD_IN_FLIGHT, head, head, False, 0, 0)
    r = split_dev_walk(q, m, head, err)  # one call, so that the compiler inlines it
    if r:
        return -r
    head_out[0] = head
    return 1


cdef inline void split_dev_commit(DevQueue *q, uint16_t head) noexcept nogil:
    q.inflight[head] = HEAD_HELD
    q.inflight_wlen[head] = q.writable_len
    if q.rec.left:  # given back by the record: keeps its entry and its counter
        q.rec.pending_pos += 1
        q.rec.left -= 1
        return
    if q.rec.region != NULL:
        split_rec_fetched(&q.rec, head)
    q.last_avail += 1


cdef inline void split_dev_after_pop(DevQueue *q) noexcept nogil:
    # With EVENT_IDX, ask for a kick once the driver passes what we consumed (as QEMU's virtqueue_pop does),
    # unless the device disabled notifications to poll.
    if q.event_idx and q.notify_enabled:
        vring_write_shared_u16(split_avail_event(q.split.used, q.size), q.last_avail)


cdef inline void split_dev_put_used(DevQueue *q, uint16_t head, uint32_t written) noexcept nogil:
    # used->ring[used_idx % size] = {id, len}; plain stores, published by the release of used->idx.
    cdef vring_used_elem elem
    elem.id = head
    elem.len = written
    memcpy(split_used_elem(q.split.used, q.size, q.used_idx), &elem, sizeof(elem))
    if q.rec.region != NULL:
        split_rec_used(&q.rec, head)  # the list of the last batch, before used->idx is published
    q.inflight[head] = HEAD_FREE
    q.used_idx += 1


cdef inline void split_dev_publish(DevQueue *q) noexcept nogil:
    vring_publish_idx(split_used_idx(q.split.used), q.used_idx)  # release: the elements first
    if q.rec.region != NULL:
        split_rec_published(&q.rec, q.used_idx)


cdef inline bint split_dev_notify_needed(DevQueue *q) noexcept nogil:
    cdef uint16_t new = q.used_idx
    cdef uint16_t old = q.split.signalled_used
    cdef bint valid = q.signalled_valid
    q.split.signalled_used = new
    q.signalled_valid = True
    if valid and new == old:
        return False
    # Our used->idx store must be visible before we read the driver's used_event / flags.
    vring_fence_store_then_check()
    if q.event_idx:
        return not valid or need_event(vring_read_shared_u16(split_used_event(q.split.avail, q.size)), new, old)
    return not (vring_read_shared_u16(split_avail_flags(q.split.avail)) & AVAIL_F_NO_INTERRUPT)


cdef inline uint32_t split_dev_avail_pending(DevQueue *q) noexcept nogil:
    return <uint16_t>(vring_observe_idx(split_avail_idx(q.split.avail)) - q.last_avail)


cdef inline bint split_dev_enable_notifications(DevQueue *q) noexcept nogil:
    if q.event_idx:
        vring_write_shared_u16(split_avail_event(q.split.used, q.size), q.last_avail)
    else:
        q.split.used_flags &= ~USED_F_NO_NOTIFY
        vring_write_shared_u16(split_used_flags(q.split.used), q.split.used_flags)
    # The store above must be visible before we look at avail->idx again, or a kick can be lost.
    vring_fence_store_then_check()
    return vring_observe_idx(split_avail_idx(q.split.avail)) != q.last_avail


cdef inline void split_dev_disable_notifications(DevQueue *q) noexcept nogil:
    # With EVENT_IDX avail_event just stops moving.
    if not q.event_idx:
        q.split.used_flags |= USED_F_NO_NOTIFY
        vring_write_shared_u16(split_used_flags(q.split.used), q.split.used_flags)
