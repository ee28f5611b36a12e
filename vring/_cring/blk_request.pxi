# One virtio-blk request in C: found in the chain dev_peek walked (the header in the readable part, the status
# byte the last writable one) and checked by the rules of vring.devices.blk (Request.parse, BlkDevice._serve),
# the same statuses included; what needs no I/O (bad requests, GET_ID, discard, write-zeroes) is answered here.

cdef inline bint blk_range_ok(uint64_t sector, uint64_t length, uint64_t size, uint64_t capacity) noexcept nogil:
    """BlkDevice._range_ok: whole sectors, inside the image (sector checked first: sector * 512 cannot wrap)."""
    if length % BLK_SECTOR or sector > capacity:
        return False
    return sector * BLK_SECTOR + length <= size


cdef inline unsigned char *blk_seg_host(MemMap *m, Seg *s) noexcept nogil:
    return m.regions[s.region].host + s.offset


cdef inline void blk_copy_out(MemMap *m, DevQueue *q, uint32_t first, uint32_t skip, unsigned char *dst,
                              uint32_t n) noexcept nogil:
    """Copy ``n`` bytes of the chain's segments from segment ``first``, ``skip`` bytes in, into ``dst``."""
    cdef uint32_t i = first, take
    cdef Seg *s
    while n and i < q.nseg:
        s = &q.segs[i]
        if skip >= s.len:
            skip -= s.len
            i += 1
            continue
        take = min(n, s.len - skip)
        vring_copy_once(dst, blk_seg_host(m, s) + skip, take)
        dst += take
        n -= take
        skip = 0
        i += 1


cdef inline int blk_grow_iov(BlkReq *r, int need) noexcept nogil:
    cdef iovec *grown
    if need <= r.iov_cap:
        return 0
    grown = <iovec *>realloc(r.iov, need * sizeof(iovec))
    if grown == NULL:
        return -1
    r.iov = grown
    r.iov_cap = need
    return 0


cdef inline void blk_answer(BlkReq *req, uint8_t status, uint32_t written) noexcept nogil:
    """``req`` needs no (more) I/O: its status and the length its used element reports."""
    req.op = 0
    req.status = status
    req.written = written


cdef inline void blk_tell(BlkReq *req, uint8_t notice, long long value) noexcept nogil:
    """Something ``req``'s answer does not tell the driver, for the device's log (NOTICE_*)."""
    req.notice = notice
    req.notice_value = value


cdef bint blk_parse(BlkIo *io, DevQueue *q, MemMap *m, BlkReq *req) noexcept nogil:
    """Parse the chain dev_peek just walked (``q.segs``) into ``req``, as Request.parse does, and serve what needs
    no I/O as BlkDevice._serve does (``blk_answer``); True if ``req`` is an I/O to issue."""
    cdef Seg *last
    cdef unsigned char header[BLK_HEADER_BYTES]
    cdef uint32_t rtype, first_w = 0, data_len
    cdef uint64_t sector
    if q.writable_len < 1:
        req.status_ptr = NULL  # nowhere to answer: completed with nothing written
        blk_answer(req, BLK_S_IOERR, 0)
        blk_tell(req, NOTICE_NO_STATUS, 0)
        return False
    while first_w < q.nseg and not q.segs[first_w].writable:
        first_w += 1
    last = &q.segs[q.nseg - 1]
    req.status_ptr = blk_seg_host(m, last) + last.len - 1
    if q.readable_len < BLK_HEADER_BYTES:
        blk_answer(req, BLK_S_IOERR, 1)
        blk_tell(req, NOTICE_SHORT_HEADER, q.readable_len)
        return False
    blk_copy_out(m, q, 0, 0, header, BLK_HEADER_BYTES)
    memcpy(&rtype, header, 4)
    memcpy(&sector, header + 8, 8)
    if rtype == BLK_T_IN or rtype == BLK_T_GET_ID:
        data_len = q.writable_len - 1
        if rtype == BLK_T_GET_ID:
            blk_get_id(io, q, m, req, first_w, data_len)
            return False
        if not blk_range_ok(sector, data_len, io.size, io.size // BLK_SECTOR):
            blk_answer(req, BLK_S_IOERR, 1)
            return False
        req.op = OP_READ
        if blk_data_iov(io, q, m, req, first_w, 0, data_len) < 0:
            blk_answer(req, BLK_S_IOERR, 1)
            return False
        req.written = data_len + 1
    elif rtype == BLK_T_OUT:
        data_len = q.readable_len - BLK_HEADER_BYTES
        if io.read_only or not blk_range_ok(sector, data_len, io.size, io.size // BLK_SECTOR):
            blk_answer(req, BLK_S_IOERR, 1)
            return False
        req.op = OP_WRITE
        if blk_data_iov(io, q, m, req, 0, BLK_HEADER_BYTES, data_len) < 0:
            blk_answer(req, BLK_S_IOERR, 1)
            return False
        req.written = 1
    elif rtype == BLK_T_FLUSH:
        if io.read_only:
            blk_answer(req, BLK_S_OK, 1)
            return False
        req.op = OP_FLUSH
        data_len = 0
        req.written = 1
    elif rtype == BLK_T_DISCARD or rtype == BLK_T_WRITE_ZEROES:
        if io.read_only:
            blk_answer(req, BLK_S_IOERR, 1)
        else:
            blk_answer(req, blk_discard_or_zero(io, q, m, req, rtype, q.readable_len - BLK_HEADER_BYTES), 1)
        return False
    else:
        blk_answer(req, BLK_S_UNSUPP, 1)
        return False
    req.offset = sector * BLK_SECTOR
    req.length = data_len
    req.done = 0
    req.result = 0
    if data_len == 0 and req.op == OP_WRITE and not io.writeback:
        req.op = OP_FLUSH  # nothing to write, but writethrough makes it durable, as BlkDevice._serve does
    if data_len == 0 and req.op != OP_FLUSH:
        blk_answer(req, BLK_S_OK, req.written)
        return False
    return True


cdef int blk_data_iov(BlkIo *io, DevQueue *q, MemMap *m, BlkReq *req, uint32_t first, uint32_t skip,
                      uint32_t length) noexcept nogil:
    """Point ``req.iov`` at ``length`` bytes of the chain from segment ``first``, ``skip`` bytes in (zero
    copy); with O_DIRECT and a buffer not aligned, an aligned bounce buffer instead. -1 if impossible."""
    cdef uint32_t i = first, left = length, take
    cdef int n = 0
    cdef bint aligned = True
    cdef Seg *s
    cdef void *buf = NULL
    if blk_grow_iov(req, <int>min(q.nseg, <uint32_t>BLK_IOV_MAX)) < 0:
        return -1
    while left and i < q.nseg:
        s = &q.segs[i]
        i += 1
        if skip >= s.len:
            skip -= s.len
            continue
        if n == BLK_IOV_MAX:
            return -1
        take = min(left, s.len - skip)
        req.iov[n].iov_base = blk_seg_host(m, s) + skip
        req.iov[n].iov_len = take
        if io.align and ((<uintptr_t>req.iov[n].iov_base | take) & (io.align - 1)):
            aligned = False
        n += 1
        left -= take
        skip = 0
    req.niov = n
    free(req.bounce.iov_base)
    req.bounce.iov_base = NULL
    if not aligned:
        if posix_memalign(&buf, io.align, (length + io.align - 1) & ~(io.align - 1)) != 0:
            return -1
        req.bounce.iov_base = buf
        req.bounce.iov_len = length
        if req.op == OP_WRITE:
            blk_bounce_copy(req, True)
    return 0

cdef void blk_bounce_copy(BlkReq *req, bint to_bounce) noexcept nogil:
    """Copy between the guest buffers and the bounce buffer (in for a write, out after a read)."""
    cdef unsigned char *b = <unsigned char *>req.bounce.iov_base
    cdef int k
    for k in range(req.niov):
        if to_bounce:
            memcpy(b, req.iov[k].iov_base, req.iov[k].iov_len)
        else:
            memcpy(req.iov[k].iov_base, b, req.iov[k].iov_len)
        b += req.iov[k].iov_len

cdef void blk_get_id(BlkIo *io, DevQueue *q, MemMap *m, BlkReq *req, uint32_t first_w,
                     uint32_t length) noexcept nogil:
    """GET_ID: the serial, NUL-padded, into the first min(length, 20) writable bytes."""
    cdef unsigned char ident[BLK_ID_BYTES]
    cdef uint32_t n = min(length, <uint32_t>BLK_ID_BYTES), left, take, i = first_w
    cdef unsigned char *src = ident
    cdef Seg *s
    if length < 1:
        blk_answer(req, BLK_S_IOERR, 1)
        return
    memset(ident, 0, BLK_ID_BYTES)
    memcpy(ident, io.serial, io.serial_len)
    left = n
    while left and i < q.nseg:
        s = &q.segs[i]
        take = min(left, s.len)
        memcpy(blk_seg_host(m, s), src, take)
        src += take
        left -= take
        i += 1
    blk_answer(req, BLK_S_OK, n + 1)

cdef uint8_t blk_discard_or_zero(BlkIo *io, DevQueue *q, MemMap *m, BlkReq *req, uint32_t rtype,
                                 uint32_t length) noexcept nogil:
    """BlkDevice._discard_or_zero: check every segment first, then punch or zero each (synchronously); a write
    that fails is told as an I/O error."""
    cdef unsigned char payload[BLK_MAX_DISCARD_SEG * BLK_DISCARD_SEG_BYTES]
    cdef uint64_t sector
    cdef uint32_t count, flags, k, nsegs = length // BLK_DISCARD_SEG_BYTES
    cdef int failed
    if length == 0 or length % BLK_DISCARD_SEG_BYTES or nsegs > BLK_MAX_DISCARD_SEG:
        return BLK_S_IOERR
    blk_copy_out(m, q, 0, BLK_HEADER_BYTES, payload, length)
    for k in range(nsegs):
        memcpy(&sector, payload + k * 16, 8)
        memcpy(&count, payload + k * 16 + 8, 4)
        memcpy(&flags, payload + k * 16 + 12, 4)
        if count > BLK_MAX_DISCARD_SECTORS or not blk_range_ok(sector, <uint64_t>count * BLK_SECTOR,
                                                               io.size, io.size // BLK_SECTOR):
            return BLK_S_IOERR
        if rtype == BLK_T_DISCARD and flags:
            return BLK_S_UNSUPP  # the unmap flag is reserved for discard
        if rtype == BLK_T_WRITE_ZEROES and flags & ~(<uint32_t>BLK_WZ_UNMAP):
            return BLK_S_UNSUPP
    for k in range(nsegs):
        memcpy(&sector, payload + k * 16, 8)
        memcpy(&count, payload + k * 16 + 8, 4)
        if rtype == BLK_T_DISCARD:
            blk_punch(io, sector * BLK_SECTOR, <uint64_t>count * BLK_SECTOR)  # best effort: data undefined
        else:
            failed = blk_zero_range(io, sector * BLK_SECTOR, <uint64_t>count * BLK_SECTOR)
            if failed:
                blk_tell(req, NOTICE_IO_ERROR, failed)
                return BLK_S_IOERR
    return BLK_S_OK

cdef bint blk_punch(BlkIo *io, uint64_t offset, uint64_t length) noexcept nogil:
    if length == 0 or not io.punch_holes:
        return False
    return fallocate(io.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, <long>offset, <long>length) == 0

cdef int blk_zero_range(BlkIo *io, uint64_t offset, uint64_t length) noexcept nogil:
    """Zeros over [offset, offset + length): a hole where the file system punches one, else written. 0, or the
    errno of the failure."""
    cdef void *zeros = NULL
    cdef size_t chunk = 1 << 16
    cdef ssize_t n
    cdef int failed = 0
    if blk_punch(io, offset, length):
        return 0
    if posix_memalign(&zeros, 4096, chunk) != 0:
        return ENOMEM
    memset(zeros, 0, chunk)
    while length:
        n = pwrite(io.zero_fd, zeros, min(<uint64_t>chunk, length), <long>offset)
        if n < 0 and errno == EINTR:
            continue
        if n <= 0:
            failed = errno if n < 0 else EIO  # no progress is an error too, never a loop
            break
        offset += n
        length -= n
    free(zeros)
    return failed
