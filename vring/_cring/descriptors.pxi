# What the device side shares between split and packed rings: the checks of a chain's buffers and of an
# indirect descriptor, and the translation of each buffer into segments of guest memory regions.

cdef inline int dev_fail(ChainError *err, int reason, uint32_t head, uint32_t index, bint in_indirect,
                         uint64_t a, uint64_t b) noexcept nogil:
    err.reason = reason
    err.head = head
    err.index = index
    err.in_indirect = in_indirect
    err.a = a
    err.b = b
    return reason


cdef inline int dev_add_seg(DevQueue *q, uint64_t gpa, uint64_t offset, uint32_t length, int region,
                            bint writable) noexcept nogil:
    cdef Seg *grown
    if q.nseg == q.segs_cap:
        grown = <Seg *>realloc(q.segs, 2 * q.segs_cap * sizeof(Seg))
        if grown == NULL:
            return -1
        q.segs = grown
        q.segs_cap *= 2
    q.segs[q.nseg].gpa = gpa
    q.segs[q.nseg].offset = offset
    q.segs[q.nseg].len = length
    q.segs[q.nseg].region = <uint16_t>region
    q.segs[q.nseg].writable = writable
    q.nseg += 1
    return 0


cdef int dev_translate(DevQueue *q, MemMap *m, uint64_t gpa, uint64_t length, bint writable) noexcept nogil:
    """Append [gpa, gpa + length) to q.segs, one piece per region crossed: 0, CHECK_BUFFER_OUTSIDE_MEMORY or
    CHAIN_NO_MEMORY."""
    cdef int r
    cdef uint64_t offset, piece
    if gpa + (length - 1) < gpa:  # wraps past 2**64
        return CHECK_BUFFER_OUTSIDE_MEMORY
    while length:
        r = mem_find(m, gpa)
        if r < 0:
            return CHECK_BUFFER_OUTSIDE_MEMORY
        offset = gpa - m.regions[r].gpa
        piece = m.regions[r].size - offset
        if piece > length:
            piece = length
        if dev_add_seg(q, gpa, offset, <uint32_t>piece, r, writable) < 0:
            return CHAIN_NO_MEMORY
        gpa += piece
        length -= piece
    return 0


cdef inline int dev_piece(DevQueue *q, MemMap *m, uint64_t addr, uint32_t length, bint writable,
                          uint64_t *readable_len, uint64_t *writable_len, bint *seen_writable) noexcept nogil:
    """Check one buffer of a chain and append its pieces to q.segs: 0, or the failed check's code.

    The same checks in the same order for split and packed rings, direct and indirect descriptors.
    """
    cdef Region *region
    cdef uint64_t offset
    cdef Seg *seg
    if length == 0:
        return CHECK_ZERO_LENGTH
    if writable:
        seen_writable[0] = True
        writable_len[0] += length
    elif seen_writable[0]:
        return CHECK_READABLE_AFTER_WRITABLE
    else:
        readable_len[0] += length
    if readable_len[0] + writable_len[0] > U32_MAX:
        return CHECK_CHAIN_TOO_LARGE
    # Translate. Fast path: the buffer lies inside the region of the last hit and the scratch has room.
    region = &m.regions[m.hint] if m.hint < m.n else NULL
    offset = addr - region.gpa if region != NULL else 0
    if region != NULL and offset < region.size and length <= region.size - offset and q.nseg < q.segs_cap:
        seg = &q.segs[q.nseg]
        seg.gpa = addr
        seg.offset = offset
        seg.len = length
        seg.region = <uint16_t>m.hint
        seg.writable = writable
        q.nseg += 1
        return 0
    return dev_translate(q, m, addr, length, writable)


cdef inline int dev_fail_piece(ChainError *err, int reason, uint32_t head, uint32_t index, bint in_indirect,
                               uint64_t addr, uint32_t length) noexcept nogil:
    # Only the memory check names the buffer; the others say which descriptor.
    if reason == CHECK_BUFFER_OUTSIDE_MEMORY:
        return dev_fail(err, reason, head, index, in_indirect, addr, length)
    return dev_fail(err, reason, head, index, in_indirect, 0, 0)


cdef inline int dev_open_indirect(DevQueue *q, MemMap *m, uint64_t addr, uint32_t length, uint16_t flags,
                                  uint32_t head, uint32_t index, bint in_indirect, const unsigned char **table,
                                  ChainError *err) noexcept nogil:
    """Check an indirect descriptor, both layouts: 0 with ``table`` the host address of its table (and the chain
    marked indirect), or the failed check's code (with ``err`` filled in). The same checks in the same order for
    split and packed rings."""
    if not q.indirect:
        return dev_fail(err, CHECK_INDIRECT_NOT_NEGOTIATED, head, index, in_indirect, 0, 0)
    if in_indirect:
        return dev_fail(err, CHECK_NESTED_INDIRECT, head, index, in_indirect, 0, 0)
    if flags & DESC_F_NEXT:
        return dev_fail(err, CHECK_INDIRECT_WITH_NEXT, head, index, in_indirect, 0, 0)
    if length == 0:
        return dev_fail(err, CHECK_INDIRECT_LEN_ZERO, head, index, in_indirect, 0, 0)
    if length % DESC_SIZE:
        return dev_fail(err, CHECK_INDIRECT_LEN_UNALIGNED, head, index, in_indirect, length, 0)
    if length // DESC_SIZE > q.max_indirect:
        return dev_fail(err, CHECK_INDIRECT_TOO_LARGE, head, index, in_indirect, length, q.max_indirect)
    table[0] = mem_ptr(m, addr, length)
    if table[0] == NULL or addr + (length - 1) < addr:
        return dev_fail(err, CHECK_INDIRECT_OUTSIDE_MEMORY, head, index, in_indirect, addr, length)
    q.was_indirect = True
    return 0
