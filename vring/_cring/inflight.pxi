# The inflight record kept on every pop and push (vhost-user.rst, "Inflight I/O tracking"), in C: the stores each
# pop and push makes, in the spec's order with vring_order_record between them, so that a device killed at any
# instruction leaves a record the reconnect procedure repairs; and attaching a record (vring._inflight checks and
# repairs it, the same code as the pure-Python twin's). The links the device follows are its own copy
# (InflightRecord.links): a peer scribbling on the shared region cannot send it outside the region.

cdef inline InflightSplitHeader *split_rec_header(InflightRecord *r) noexcept nogil:
    return <InflightSplitHeader *>r.region


cdef inline InflightSplitEntry *split_rec_entry(InflightRecord *r, uint32_t i) noexcept nogil:
    return <InflightSplitEntry *>(r.region + sizeof(InflightSplitHeader)) + i


cdef inline InflightPackedHeader *packed_rec_header(InflightRecord *r) noexcept nogil:
    return <InflightPackedHeader *>r.region


cdef inline InflightPackedEntry *packed_rec_entry(InflightRecord *r, uint32_t i) noexcept nogil:
    return <InflightPackedEntry *>(r.region + sizeof(InflightPackedHeader)) + i


cdef inline void split_rec_fetched(InflightRecord *r, uint16_t head) noexcept nogil:
    """A chain popped: its fetch order, then (in that order) its entry counts as in flight."""
    cdef InflightSplitEntry *e = split_rec_entry(r, head)
    cdef uint64_t counter = r.counter
    r.counter = counter + 1
    e.counter = counter
    vring_order_record()
    e.inflight = 1


cdef inline void split_rec_used(InflightRecord *r, uint16_t head) noexcept nogil:
    """A used element written: its head joins the list of the last batch (before used->idx is published)."""
    cdef uint16_t previous = r.last_batch_head
    r.links[head] = previous
    r.last_batch_head = head
    r.batch += 1
    split_rec_entry(r, head).next = previous
    split_rec_header(r).last_batch_head = head


cdef inline void split_rec_published(InflightRecord *r, uint16_t used_idx) noexcept nogil:
    """used->idx published: the batch's entries are done, then the record's used_idx says so."""
    # Locals: the fences and the stores to the shared region would otherwise make the compiler reload r's fields.
    cdef InflightSplitEntry *entries = split_rec_entry(r, 0)
    cdef const uint16_t *links = r.links
    cdef uint16_t head = r.last_batch_head
    cdef uint32_t i, batch = r.batch
    r.batch = 0
    vring_order_record()
    for i in range(batch):
        entries[head].inflight = 0
        head = links[head]
    vring_order_record()
    split_rec_header(r).used_idx = used_idx


cdef inline void packed_rec_copy(InflightPackedEntry *e, const vring_packed_desc *desc) noexcept nogil:
    """A ring descriptor {addr; len, id, flags} into the entry's {id, flags, len; addr}: its second 64-bit word
    rotated by 32 bits, then its first."""
    cdef const uint64_t *words = <const uint64_t *>desc
    cdef uint64_t *copy = <uint64_t *>&e.id
    copy[0] = (words[1] >> 32) | (words[1] << 32)
    copy[1] = words[0]


cdef inline void packed_rec_fetched(InflightRecord *r, uint16_t buffer_id, uint32_t ndesc) noexcept nogil:
    """A chain popped: its ``ndesc`` ring descriptors (r.copies) into entries taken from the free list's head,
    which old_free_head moves past once the chain is whole (the commit point: until then the reconnect procedure
    puts the entries back on the free list, whatever else was written). The caller checked that the free list
    holds them."""
    # Locals: the fences and the stores to the shared region would otherwise make the compiler reload r's fields.
    cdef InflightPackedEntry *entries = packed_rec_entry(r, 0)
    cdef const vring_packed_desc *copies = r.copies
    cdef const uint16_t *links = r.links
    cdef uint16_t head = r.free_head, entry, last = head
    cdef InflightPackedEntry *h = &entries[head]
    cdef InflightPackedHeader *hdr = packed_rec_header(r)
    cdef uint64_t counter = r.counter
    cdef uint32_t k
    h.counter = counter
    vring_order_record()
    h.inflight = 1
    packed_rec_copy(h, &copies[0])
    entry = links[head]
    for k in range(1, ndesc):  # the chain's other descriptors, along the free list
        packed_rec_copy(&entries[entry], &copies[k])
        last = entry
        entry = links[entry]
    h.last = last
    h.num = <uint16_t>ndesc
    hdr.free_head = entry
    vring_order_record()
    hdr.old_free_head = entry
    r.counter = counter + 1
    r.last_of[buffer_id] = last
    r.entry_of[buffer_id] = head
    r.free_head = entry
    r.held_slots += ndesc


cdef inline uint16_t packed_rec_used(InflightRecord *r, uint16_t buffer_id, uint32_t ndesc, uint16_t used_idx,
                                     uint8_t used_wrap) noexcept nogil:
    """Before a used descriptor is published (each push a batch of one): the chain's ``ndesc`` entries back on the
    free list, the record's used_idx and wrap counter moved to the slot after it. Returns the chain's head entry,
    now the free list's head."""
    cdef uint16_t head = r.entry_of[buffer_id], last = r.last_of[buffer_id], free_head = r.free_head
    cdef InflightPackedHeader *hdr = packed_rec_header(r)
    r.held_slots -= ndesc
    r.links[last] = free_head
    r.free_head = head
    packed_rec_entry(r, last).next = free_head
    hdr.free_head = head
    vring_order_record()  # free_head differs from old_free_head before the used slot moves (recover_packed)
    hdr.used_idx = used_idx
    hdr.used_wrap_counter = used_wrap
    return head


cdef inline void packed_rec_done(InflightRecord *r, uint16_t head, uint16_t used_idx,
                                 uint8_t used_wrap) noexcept nogil:
    """After the used descriptor is published: the chain (``head``, the free list's head) is no longer in flight,
    then the push is complete."""
    cdef InflightPackedHeader *hdr = packed_rec_header(r)
    vring_order_record()
    packed_rec_entry(r, head).inflight = 0
    vring_order_record()
    hdr.old_free_head = head
    vring_order_record()  # old_free_head equal to free_head says the push is committed before old_used_* move
    hdr.old_used_idx = used_idx
    hdr.old_used_wrap_counter = used_wrap


# -- attaching (with the GIL: once per queue start) --------------------------------------------------------------
assert (sizeof(InflightSplitHeader), sizeof(InflightSplitEntry), sizeof(InflightPackedHeader),
        sizeof(InflightPackedEntry)) == (SPLIT_ENTRIES, SPLIT_ENTRY.size, PACKED_ENTRIES, PACKED_ENTRY.size)


cdef void rec_free(InflightRecord *r) noexcept:
    """Forget the record and the chains still to pop again (the region is released by the queue)."""
    free(r.links)
    free(r.entry_of)
    free(r.last_of)
    free(r.copies)
    free(r.pending)
    free(r.kept)
    free(r.kept_start)
    free(r.scratch)
    memset(r, 0, sizeof(InflightRecord))


cdef int rec_alloc(InflightRecord *r, uint32_t size, bint packed) except -1:
    """Fresh tables for a queue of ``size`` in ``r`` (zeroed, or its old tables freed)."""
    rec_free(r)
    r.links = <uint16_t *>malloc(size * sizeof(uint16_t))
    r.pending = <uint16_t *>malloc(size * sizeof(uint16_t))
    ok = r.links != NULL and r.pending != NULL
    if packed:
        r.entry_of = <uint16_t *>malloc(size * sizeof(uint16_t))
        r.last_of = <uint16_t *>malloc(size * sizeof(uint16_t))
        r.copies = <vring_packed_desc *>malloc(size * sizeof(vring_packed_desc))
        r.kept = <vring_packed_desc *>malloc(size * sizeof(vring_packed_desc))
        r.kept_start = <uint32_t *>malloc((size + 1) * sizeof(uint32_t))
        r.scratch = <vring_packed_desc *>malloc(size * sizeof(vring_packed_desc))
        ok = ok and r.entry_of != NULL and r.last_of != NULL and r.copies != NULL and r.kept != NULL
        ok = ok and r.kept_start != NULL and r.scratch != NULL
    if not ok:
        rec_free(r)
        raise MemoryError()
    return 0


cdef void rec_fill(InflightRecord *r, found, uint8_t *inflight, uint16_t *ndesc) except *:
    """The device's side of a record from what vring._inflight found in it (``ndesc``: packed rings' slots per
    buffer id); the chains it lists as in flight become HEAD_PENDING in ``inflight``."""
    cdef Py_ssize_t i
    cdef uint32_t start = 0
    for i, link in enumerate(found.links):
        r.links[i] = link
    r.counter = found.counter
    r.npending = len(found.pending)
    r.pending_pos = 0
    r.left = r.npending
    for i, head in enumerate(found.pending):
        r.pending[i] = head
        inflight[head] = HEAD_PENDING
    if ndesc == NULL:
        r.last_batch_head = found.last_batch_head
        return
    r.free_head = found.free_head
    for buffer_id, head in found.entry_of.items():
        r.entry_of[buffer_id] = head
        r.last_of[buffer_id] = found.last_of[head]
    for i, buffer_id in enumerate(found.pending):
        ndesc[buffer_id] = found.num[buffer_id]
        r.kept_start[i] = start
        for addr, length, desc_id, flags in found.entries[buffer_id]:
            r.kept[start].addr = addr
            r.kept[start].len = length
            r.kept[start].id = desc_id
            r.kept[start].flags = flags
            start += 1
    r.kept_start[r.npending] = start
    r.held_slots = sum(found.num.values())


cdef object attach_record(DeviceQueue queue, region):
    """DeviceQueue.attach_inflight once the queue is checked: the record checked and repaired by vring._inflight
    (or a fresh one initialised), then the device's side of it; returns the number of chains to pop again."""
    cdef DevQueue *q = &queue.q
    cdef uint32_t i, held = 0
    cdef uint16_t *ndesc = queue._ndesc_table()
    cdef Py_buffer buf
    cdef InflightRecord fresh
    view = region_view(region, q.size, ndesc != NULL)
    for i in range(q.size):
        held += q.inflight[i] != HEAD_FREE
    if held:
        raise caller_error("inflight-busy", held=held)
    # The new tables apart until the record is checked: a record refused leaves the queue with the one it keeps.
    memset(&fresh, 0, sizeof(InflightRecord))
    rec_alloc(&fresh, q.size, ndesc != NULL)
    version = record_version(view)
    try:
        found = queue._recover_record(view) if version else queue._init_record(view)
    except BaseException:
        rec_free(&fresh)
        raise
    queue._detach()
    rec_free(&q.rec)
    q.rec = fresh
    rec_fill(&q.rec, found, q.inflight, ndesc)
    if version:
        queue._resume(found)
    # The view is ours alone: its export of the region's memory (which keeps a bytearray from resizing and an mmap
    # from closing) lasts as long as we keep it.
    PyObject_GetBuffer(view, &buf, PyBUF_WRITABLE)
    q.rec.region = <unsigned char *>buf.buf
    PyBuffer_Release(&buf)
    queue._region_view = view
    return q.rec.npending
