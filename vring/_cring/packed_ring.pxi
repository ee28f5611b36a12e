# What both sides of a packed ring (spec 2.8) read and write the same way: descriptor flags and wrap counters,
# the descriptor stores, and the two event suppression areas (driver_event, device_event).

cdef inline bint packed_is_avail(uint16_t flags, uint8_t wrap) noexcept nogil:
    """Available in lap ``wrap``: AVAIL = wrap and USED = !wrap."""
    return ((flags & PACKED_DESC_F_AVAIL) != 0) == wrap and ((flags & PACKED_DESC_F_USED) != 0) != wrap


cdef inline bint packed_is_used(uint16_t flags, uint8_t wrap) noexcept nogil:
    """Used in lap ``wrap``: AVAIL = USED = wrap."""
    return ((flags & PACKED_DESC_F_AVAIL) != 0) == wrap and ((flags & PACKED_DESC_F_USED) != 0) == wrap


cdef inline uint16_t packed_flags(const vring_packed_desc *ring, uint32_t pos) noexcept nogil:
    # desc[pos].flags, acquire: the descriptor's other fields (and the rest of a chain) are read after it.
    return vring_observe_desc_flags(&ring[pos].flags)


cdef inline void packed_advance(uint16_t *pos, uint8_t *wrap, uint32_t n, uint32_t size) noexcept nogil:
    """Move ``pos`` ``n`` slots on; the lap's wrap counter flips each time the ring's end is passed."""
    cdef uint32_t p = pos[0] + n
    if p >= size:
        p -= size
        wrap[0] ^= 1
    pos[0] = <uint16_t>p


cdef inline void packed_write_desc(unsigned char *dst, uint64_t addr, uint32_t length, uint16_t buffer_id,
                                   uint16_t flags) noexcept nogil:
    """A descriptor the other side cannot see yet (a chain's tail, an indirect table's entry): plain stores,
    published later by the flags of the chain's head. ``dst`` may be unaligned (an indirect table)."""
    cdef vring_packed_desc d
    d.addr = addr
    d.len = length
    d.id = buffer_id
    d.flags = flags
    memcpy(dst, &d, sizeof(d))


cdef inline void packed_publish_desc(vring_packed_desc *desc, uint32_t length, uint16_t buffer_id,
                                     uint16_t flags) noexcept nogil:
    """Make a ring slot count for the other side (a chain's head, a used descriptor): len and id first, then
    its flags with release. The address, if any, is the caller's to store before."""
    desc.len = length
    desc.id = buffer_id
    vring_publish_desc_flags(&desc.flags, flags)


cdef inline uint16_t packed_event_flags(const vring_event_suppress *event) noexcept nogil:
    return vring_read_shared_u16(&event.flags)


cdef inline bint packed_event_wants(const vring_event_suppress *event, bint event_idx, uint32_t size, uint8_t wrap,
                                    uint16_t new, uint16_t old) noexcept nogil:
    """Does the other side's event suppression ask to hear that the index moved from old to new?

    An event offset from the previous lap is moved back by the ring size (mod 2**16), as Linux does.
    """
    cdef uint16_t off_wrap = vring_read_shared_u16(&event.off_wrap)
    cdef uint16_t flags = packed_event_flags(event)
    cdef uint16_t off
    if flags == EVENT_FLAG_DISABLE:
        return False
    if flags != EVENT_FLAG_DESC or not event_idx:
        return True  # ENABLE, or a value the spec reserves: notify rather than risk a lost wake-up
    off = off_wrap & 0x7FFF
    if (off_wrap >> 15) != wrap:
        off -= size
    return need_event(off, new, old)


cdef inline void packed_set_event(vring_event_suppress *event, uint16_t off_wrap, uint16_t flags) noexcept nogil:
    vring_write_shared_u16(&event.off_wrap, off_wrap)
    vring_write_shared_u16(&event.flags, flags)


cdef inline void packed_arm_event(vring_event_suppress *event, bint event_idx, uint32_t pos,
                                  uint8_t wrap) noexcept nogil:
    """Ask the other side to notify: at slot ``pos`` of lap ``wrap`` with EVENT_IDX, else on every change."""
    if event_idx:
        packed_set_event(event, <uint16_t>(pos | (wrap << 15)), EVENT_FLAG_DESC)
    else:
        packed_set_event(event, 0, EVENT_FLAG_ENABLE)
