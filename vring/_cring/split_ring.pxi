# Where each field of a split ring lives (spec 2.7), for both sides: the one home of these offsets in C.
#   struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
#   struct virtq_used  { le16 flags; le16 idx; struct virtq_used_elem ring[size]; le16 avail_event; }
# Ring positions are free-running 16-bit indices; the entry of index i is ring[i % size] (size is a power of 2).

cdef inline uint16_t *split_avail_flags(uint16_t *avail) noexcept nogil:
    return &avail[0]


cdef inline uint16_t *split_avail_idx(uint16_t *avail) noexcept nogil:
    return &avail[1]


cdef inline uint16_t *split_avail_entry(uint16_t *avail, uint32_t size, uint16_t idx) noexcept nogil:
    return &avail[2 + (idx & (size - 1))]


cdef inline uint16_t *split_used_event(uint16_t *avail, uint32_t size) noexcept nogil:
    """avail->used_event (EVENT_IDX): the driver wants an interrupt once used->idx passes it."""
    return &avail[2 + size]


cdef inline uint16_t *split_used_flags(unsigned char *used) noexcept nogil:
    return <uint16_t *>used


cdef inline uint16_t *split_used_idx(unsigned char *used) noexcept nogil:
    return <uint16_t *>(used + 2)


cdef inline unsigned char *split_used_elem(unsigned char *used, uint32_t size, uint16_t idx) noexcept nogil:
    return used + 4 + sizeof(vring_used_elem) * (idx & (size - 1))


cdef inline uint16_t *split_avail_event(unsigned char *used, uint32_t size) noexcept nogil:
    """used->avail_event (EVENT_IDX): the device wants a kick once avail->idx passes it."""
    return <uint16_t *>(used + 4 + sizeof(vring_used_elem) * size)
