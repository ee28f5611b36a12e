# The driver side of a split ring (spec 2.7), in C: write chains into the descriptor table and the avail ring,
# decide on kicks, reap and check what the device returned through the used ring, ask for interrupts.

cdef inline void split_drv_bind(DrvQueue *q, unsigned char *desc, unsigned char *avail,
                                unsigned char *used) noexcept nogil:
    q.split.desc = <vring_desc *>desc
    q.split.avail = <uint16_t *>avail
    q.split.used = used


cdef inline void split_drv_reset(DrvQueue *q) noexcept nogil:
    q.split.published = 0
    q.split.used_shadow = 0
    q.split.avail_flags = 0


cdef inline void split_drv_check_invariants(DrvQueue *q) noexcept nogil:
    # Every free descriptor is on the free list.
    drv_check_free_list(q, q.num_free)


cdef inline int split_drv_add(DrvQueue *q, MemMap *m, const uint64_t *addrs, const seg_len_t *lens,
                              const uint8_t *wr, uint32_t nseg, uint16_t *head_out, uint32_t *bad) noexcept nogil:
    """Add one chain: 0, or an ADD_* code (``bad`` = the offending segment where there is one)."""
    cdef uint64_t wlen = 0
    cdef bint seen_w = False, indirect, last
    cdef uint32_t k, needed
    cdef uint16_t head, index, nxt
    cdef vring_desc d
    cdef unsigned char *table = NULL
    cdef long code = drv_reserve(q, nseg, bad)
    if code < 0:
        return <int>-code
    needed = <uint32_t>code
    indirect = drv_indirect_for(q, nseg)
    head = q.free_head
    if indirect:
        table = q.indirect_host + <uint64_t>head * q.indirect_max * sizeof(vring_desc)
    # Check and write in one pass: the slots written are free ones the device cannot see (they are not in the
    # avail ring), so a chain refused halfway leaves nothing behind.
    index = head
    for k in range(nseg):
        code = drv_check_buffer(m, addrs[k], lens[k], wr[k], &seen_w, &wlen)
        if code:
            bad[0] = k
            return <int>code
        last = k == nseg - 1
        d.addr = addrs[k]
        d.len = <uint32_t>lens[k]
        d.flags = (DESC_F_WRITE if wr[k] else 0) | (0 if last else DESC_F_NEXT)
        if indirect:
            d.next = 0 if last else k + 1
            memcpy(table + k * sizeof(vring_desc), &d, sizeof(d))
        else:
            nxt = q.next[index]
            d.next = 0 if last else nxt
            memcpy(&q.split.desc[index], &d, sizeof(d))
            index = nxt
    if wlen > U32_MAX:
        return ADD_WRITABLE_TOO_LARGE
    if indirect:
        d.addr = q.indirect_area + <uint64_t>head * q.indirect_max * sizeof(vring_desc)
        d.len = nseg * sizeof(vring_desc)
        d.flags = DESC_F_INDIRECT
        d.next = 0
        memcpy(&q.split.desc[head], &d, sizeof(d))
        q.free_head = q.next[head]
    else:
        q.free_head = index
    q.num_free -= needed
    q.ndesc[head] = needed
    q.wlen[head] = <uint32_t>wlen
    q.inflight[head] = 1
    # The avail ring entry; published with the index by kick_needed.
    vring_write_shared_u16(split_avail_entry(q.split.avail, q.size, q.avail_idx), head)
    q.avail_idx += 1
    head_out[0] = head
    return 0


cdef inline bint split_drv_kick_needed(DrvQueue *q) noexcept nogil:
    cdef uint16_t new = q.avail_idx
    cdef uint16_t old = q.split.published
    if new == old:
        return False
    vring_publish_idx(split_avail_idx(q.split.avail), new)  # release: descriptors and ring entries visible first
    q.split.published = new
    # The index store must be visible before we read the device's avail_event / flags.
    vring_fence_store_then_check()
    if q.event_idx:
        return need_event(vring_read_shared_u16(split_avail_event(q.split.used, q.size)), new, old)
    return not (vring_read_shared_u16(split_used_flags(q.split.used)) & USED_F_NO_NOTIFY)


cdef inline void split_drv_free_chain(DrvQueue *q, uint16_t head) noexcept nogil:
    cdef uint16_t last = head
    cdef uint32_t k
    for k in range(q.ndesc[head] - 1):
        last = q.next[last]
    q.next[last] = q.free_head
    q.free_head = head
    q.num_free += q.ndesc[head]
    q.inflight[head] = 0


cdef inline int split_drv_reap_one(DrvQueue *q, uint16_t *head, uint32_t *written, uint64_t *a,
                                   uint64_t *b) noexcept nogil:
    """1 reaped one, 0 nothing, or minus a CHECK_USED_* code (``a``, ``b`` = the values the check compared)."""
    cdef uint16_t used_idx
    cdef uint16_t last = q.last_used
    cdef uint16_t outstanding
    cdef vring_used_elem elem
    cdef uint64_t raw
    if q.split.used_shadow == last:
        # Everything seen so far is reaped: look at used->idx again (acquire: elements after it).
        used_idx = vring_observe_idx(split_used_idx(q.split.used))
        if used_idx == last:
            return 0
        outstanding = q.split.published - last
        if <uint16_t>(used_idx - last) > outstanding:
            a[0] = used_idx
            b[0] = outstanding
            return -CHECK_USED_INDEX_JUMP
        q.split.used_shadow = used_idx
    raw = vring_load_used_elem_once(split_used_elem(q.split.used, q.size, last))  # used->ring[], once
    elem.id = <uint32_t>raw
    elem.len = <uint32_t>(raw >> 32)
    a[0] = elem.id
    if elem.id >= q.size:
        b[0] = q.size
        return -CHECK_USED_ID_OUT_OF_RANGE
    if not q.inflight[elem.id]:
        return -CHECK_USED_ID_NOT_IN_FLIGHT
    if elem.len > q.wlen[elem.id]:
        a[0] = elem.len
        b[0] = q.wlen[elem.id]
        return -CHECK_USED_LEN_TOO_LARGE
    split_drv_free_chain(q, <uint16_t>elem.id)
    q.last_used = last + 1
    head[0] = <uint16_t>elem.id
    written[0] = elem.len
    return 1


cdef inline void split_drv_after_reap(DrvQueue *q) noexcept nogil:
    if q.event_idx and q.interrupts_enabled:
        vring_write_shared_u16(split_used_event(q.split.avail, q.size), q.last_used)


cdef inline void split_drv_disable_interrupts(DrvQueue *q) noexcept nogil:
    if q.event_idx:
        # used_event one behind what we have seen: the device's used index will not cross it again soon.
        vring_write_shared_u16(split_used_event(q.split.avail, q.size), <uint16_t>(q.last_used - 1))
    else:
        q.split.avail_flags |= AVAIL_F_NO_INTERRUPT
        vring_write_shared_u16(split_avail_flags(q.split.avail), q.split.avail_flags)


cdef inline bint split_drv_enable_interrupts(DrvQueue *q) noexcept nogil:
    if q.event_idx:
        vring_write_shared_u16(split_used_event(q.split.avail, q.size), q.last_used)
    else:
        q.split.avail_flags &= ~AVAIL_F_NO_INTERRUPT
        vring_write_shared_u16(split_avail_flags(q.split.avail), q.split.avail_flags)
    # The store above must be visible before we read used->idx again, or an interrupt can be lost.
    vring_fence_store_then_check()
    return vring_observe_idx(split_used_idx(q.split.used)) != q.last_used
