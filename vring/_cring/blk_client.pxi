# virtio-blk requests at depth with no Python per request (vring.drivers.blk_stream drives it): build each request
# in a preallocated slot of guest memory, add it, kick, sleep on the call eventfd, reap, check the status byte and
# the data's per-sector pattern, record the latency. One call runs one queue; it releases the GIL throughout, so
# two queues on two threads use two cores.

from libc.errno cimport errno, EINTR, EAGAIN, EBADF, EIO

cdef enum:
    BLK_SLOT_META = 32               # per slot: the header, then the status byte at +16
    BLK_UNWRITTEN = 0xff             # the status we prime: the device must overwrite it

# How a stream ended (blk_stream's first result): vring.drivers.blk_stream words each one.
cdef enum:
    STREAM_DONE = 0
    STREAM_STATUS = 1                # a request completed with a status other than OK
    STREAM_DATA = 2                  # a read returned bytes other than the pattern
    STREAM_TIMEOUT = 3               # nothing completed for the timeout
    STREAM_FD = 4                    # writing the kick, or polling or reading the call eventfd, failed (errno;
                                     # EBADF: the call fd is closed, EIO: it is hung up or in error)
    STREAM_ADD = 5                   # drv_add refused a request (an ADD_* code)
    STREAM_USED = 6                  # the device broke the used ring (a CHECK_USED_* code)

ctypedef struct BlkStream:
    DrvQueue *q
    MemMap *m
    int kick_fd
    int call_fd
    bint writing                     # T_OUT carrying the pattern; otherwise T_IN, checked against it if verify
    bint verify
    uint64_t seed
    uint32_t block                   # bytes per request, a multiple of 512
    uint32_t depth
    const uint64_t *sectors          # first sector of each request
    long long n
    long long *lat_ns                # per request: submit to reap
    long long stop_ns                # no request is added after this (monotonic), 0: none
    long long timeout_ns             # STREAM_TIMEOUT once nothing completes for this long
    long long last_progress          # when something last completed (or the loop started)
    uint64_t area_gpa                # slot k: data at area + block*k, header at area + block*depth + 32*k
    unsigned char *area
    uint32_t *slot_of_head           # per head of the ring
    uint32_t *free_slots             # a stack of the slots not in flight
    uint32_t nfree
    long long *req_of_slot
    long long *start_of_slot
    long long added                  # requests added (the first ``added`` of ``sectors``)
    long long done                   # requests reaped
    uint32_t peak                    # most requests in flight at once
    int failure                      # a STREAM_* code
    long long fail_req               # the request it is about
    uint64_t fail_sector
    uint64_t detail                  # status, byte offset in the sector, errno or an engine code
    uint64_t got                     # the byte read, or the value the engine's check saw
    uint64_t want                    # the byte expected, or the bound it was checked against


cdef inline uint64_t pattern_word(uint64_t seed, uint64_t sector, uint32_t i) noexcept nogil:
    """Word ``i`` (of 64, little-endian) of ``sector``: the sector number, the seed, then a mix of both (the same
    formula as vring.drivers.blk_pattern and bench/c)."""
    if i == 0:
        return sector
    if i == 1:
        return seed
    return (sector * <uint64_t>0x9E3779B97F4A7C15 + i) ^ seed


cdef inline void pattern_fill(unsigned char *data, uint64_t seed, uint64_t sector, uint32_t nsectors) noexcept nogil:
    cdef uint32_t s, i
    cdef uint64_t word
    for s in range(nsectors):
        for i in range(BLK_SECTOR // 8):
            word = pattern_word(seed, sector + s, i)
            memcpy(data + s * BLK_SECTOR + i * 8, &word, 8)


cdef inline bint pattern_check(BlkStream *s, const unsigned char *data, uint64_t sector, long long req) noexcept nogil:
    """True if ``data`` holds the pattern; otherwise the first wrong byte goes into ``s`` as STREAM_DATA."""
    cdef uint32_t k, i, b
    cdef uint64_t want, got
    for k in range(s.block // BLK_SECTOR):
        for i in range(BLK_SECTOR // 8):
            want = pattern_word(s.seed, sector + k, i)
            memcpy(&got, data + k * BLK_SECTOR + i * 8, 8)
            if got == want:
                continue
            for b in range(8):
                if <uint8_t>(got >> (8 * b)) != <uint8_t>(want >> (8 * b)):
                    break
            s.failure = STREAM_DATA
            s.fail_req = req
            s.fail_sector = sector + k
            s.detail = i * 8 + b
            s.got = <uint8_t>(got >> (8 * b))
            s.want = <uint8_t>(want >> (8 * b))
            return False
    return True


cdef inline int stream_add(BlkStream *s) noexcept nogil:
    """Build and add the next request in a free slot: 1 added, 0 refused (``s.failure`` says why)."""
    cdef uint64_t addrs[3]
    cdef uint32_t lens[3]
    cdef uint8_t wr[3]
    cdef uint32_t header[4]
    cdef uint32_t slot = s.free_slots[s.nfree - 1]
    cdef uint32_t bad = 0
    cdef uint16_t head = 0
    cdef uint64_t sector = s.sectors[s.added]
    cdef unsigned char *meta = s.area + <uint64_t>s.block * s.depth + BLK_SLOT_META * slot
    cdef uint64_t meta_gpa = s.area_gpa + <uint64_t>s.block * s.depth + BLK_SLOT_META * slot
    cdef int code
    header[0] = BLK_T_OUT if s.writing else BLK_T_IN
    header[1] = 0
    memcpy(&header[2], &sector, 8)
    memcpy(meta, header, BLK_HEADER_BYTES)
    meta[BLK_HEADER_BYTES] = BLK_UNWRITTEN
    if s.writing:
        pattern_fill(s.area + <uint64_t>s.block * slot, s.seed, sector, s.block // BLK_SECTOR)
    addrs[0] = meta_gpa
    lens[0] = BLK_HEADER_BYTES
    wr[0] = 0
    addrs[1] = s.area_gpa + <uint64_t>s.block * slot
    lens[1] = s.block
    wr[1] = 0 if s.writing else 1
    addrs[2] = meta_gpa + BLK_HEADER_BYTES
    lens[2] = 1
    wr[2] = 1
    code = drv_add(s.q, s.m, addrs, lens, wr, 3, &head, &bad)
    if code:
        s.failure = STREAM_ADD
        s.fail_req = s.added
        s.fail_sector = sector
        s.detail = <uint64_t>code
        s.got = bad
        return 0
    s.nfree -= 1
    s.slot_of_head[head] = slot
    s.req_of_slot[slot] = s.added
    s.start_of_slot[slot] = now_ns()
    s.added += 1
    return 1


cdef inline int stream_reap(BlkStream *s) noexcept nogil:
    """Reap every completed request: how many, or -1 when the device broke the ring (STREAM_USED)."""
    cdef uint16_t head = 0
    cdef uint32_t written = 0, slot
    cdef uint64_t a = 0, b = 0
    cdef long long req
    cdef int r, reaped = 0
    cdef uint8_t status
    while True:
        r = drv_reap_one(s.q, &head, &written, &a, &b)
        if r == 0:
            break
        if r < 0:
            s.failure = STREAM_USED
            s.detail = <uint64_t>-r
            s.got = a
            s.want = b
            return -1
        slot = s.slot_of_head[head]
        req = s.req_of_slot[slot]
        s.lat_ns[req] = now_ns() - s.start_of_slot[slot]
        status = s.area[<uint64_t>s.block * s.depth + BLK_SLOT_META * slot + BLK_HEADER_BYTES]
        if s.failure == STREAM_DONE:
            if status != 0:
                s.failure = STREAM_STATUS
                s.fail_req = req
                s.fail_sector = s.sectors[req]
                s.detail = status
            elif s.verify and not s.writing:
                pattern_check(s, s.area + <uint64_t>s.block * slot, s.sectors[req], req)
        s.free_slots[s.nfree] = slot
        s.nfree += 1
        s.done += 1
        reaped += 1
    if reaped:
        drv_after_reap(s.q)
    return reaped


cdef inline int stream_wait(BlkStream *s) noexcept nogil:
    """Sleep on the call eventfd until the device may have returned something: 0, or -1 (``s.failure`` set)."""
    cdef pollfd pfd
    cdef uint64_t count = 0
    cdef long long left, deadline = s.last_progress + s.timeout_ns  # a device that only signals is no progress
    cdef int r
    # Re-arm interrupts and look again before sleeping, or a completion between the two would be missed.
    s.q.interrupts_enabled = True
    if drv_enable_interrupts(s.q):
        return 0
    pfd.fd = s.call_fd
    pfd.events = POLLIN
    while True:
        left = deadline - now_ns()
        if left <= 0:
            s.failure = STREAM_TIMEOUT
            return -1
        pfd.revents = 0
        r = poll(&pfd, 1, <int>((left + 999999) // 1000000))
        if r > 0:
            # A closed (POLLNVAL) or broken fd stays "ready": polling it again would spin until the timeout.
            if pfd.revents & (POLLERR | POLLNVAL | POLLHUP):
                s.failure = STREAM_FD
                s.detail = EBADF if pfd.revents & POLLNVAL else EIO
                return -1
            # Drain it (non-blocking: a racing reader leaves EAGAIN, harmless); a read that fails otherwise
            # would fail at every wake-up.
            if c_read(s.call_fd, &count, 8) < 0 and errno != EAGAIN and errno != EINTR:
                s.failure = STREAM_FD
                s.detail = <uint64_t>errno
                return -1
            return 0
        if r < 0 and errno != EINTR:
            s.failure = STREAM_FD
            s.detail = <uint64_t>errno
            return -1


cdef int stream_loop(BlkStream *s) noexcept nogil:
    """Keep up to ``depth`` requests in flight until ``n`` are done, the stop time passes or one fails (then drain
    what is in flight, unless the ring itself broke or timed out). Returns ``s.failure``."""
    cdef uint64_t one = 1
    cdef long long in_flight
    cdef int added, reaped
    s.last_progress = now_ns()
    while True:
        added = 0
        while (s.failure == STREAM_DONE and s.added < s.n and s.nfree
               and s.q.num_free >= drv_needed(s.q, 3) and (s.stop_ns == 0 or now_ns() < s.stop_ns)):
            added += stream_add(s)
        in_flight = s.added - s.done
        if in_flight > s.peak:
            s.peak = <uint32_t>in_flight
        if drv_kick_needed(s.q) and c_write(s.kick_fd, &one, 8) != 8 and errno != EAGAIN:
            if s.failure == STREAM_DONE:
                s.failure = STREAM_FD
                s.detail = <uint64_t>errno
            return s.failure
        reaped = stream_reap(s)
        if reaped < 0:
            return s.failure
        if reaped:
            s.last_progress = now_ns()
        if reaped or added:
            continue
        if s.added == s.done:
            return s.failure
        if stream_wait(s) < 0:
            return s.failure


def blk_stream(DriverQueue drv not None, uint64_t area, int kick_fd, int call_fd, sectors, latencies, bint writing,
               uint64_t seed, uint32_t block, uint32_t depth, bint verify, double timeout, double stop_at=0.0):
    """Run ``len(sectors)`` block requests of ``block`` bytes on one queue with up to ``depth`` in flight.

    ``sectors`` (uint64) gives each request's first sector; ``latencies`` (int64, as long) receives each one's
    submit-to-reap time in ns. Writes carry the per-sector pattern of ``seed``; reads are checked against it when
    ``verify``. ``area`` is guest memory for ``depth`` slots (``block`` data bytes each, then 32 bytes each for
    the headers and status bytes). No request is added once ``time.monotonic()`` passes ``stop_at`` (if set).
    Returns (failure code, requests done, most in flight, failed request, sector, detail, got, wanted); a used
    ring the device broke raises the engine's error and breaks the queue, as every driver call does.
    """
    cdef BlkStream s
    cdef cnp.ndarray sec = _int_array(sectors, np.uint64, "sectors", "uint64")
    cdef cnp.ndarray lat = latencies
    cdef MemMap held
    memset(&s, 0, sizeof(s))
    if block == 0 or block % BLK_SECTOR:
        raise ValueError(f"the block size must be a non-zero multiple of {BLK_SECTOR}, not {block}")
    if not 1 <= depth <= drv.q.size:
        raise ValueError(f"depth must be from 1 to the queue size {drv.q.size}, not {depth}")
    if not (lat.dtype == np.int64 and lat.flags.c_contiguous and lat.flags.writeable
            and cnp.PyArray_DIM(lat, 0) >= cnp.PyArray_DIM(sec, 0)):
        raise ValueError("latencies must be a writable contiguous int64 array as long as sectors")
    if drv.q.num_free != drv.q.size:
        raise ValueError("the queue has requests in flight: blk_stream needs it to itself")
    drv._check()
    bind_area(drv.mem, area, <uint64_t>depth * (block + BLK_SLOT_META), &s.area)
    slots = np.empty(drv.q.size + depth, np.uint32)
    per_slot = np.empty((2, depth), np.int64)
    s.slot_of_head = <uint32_t *>cnp.PyArray_DATA(slots)
    s.free_slots = s.slot_of_head + drv.q.size
    for k in range(depth):
        s.free_slots[k] = depth - 1 - k  # slot 0 on top
    s.nfree = depth
    s.req_of_slot = <long long *>cnp.PyArray_DATA(per_slot)
    s.start_of_slot = s.req_of_slot + depth
    s.q = &drv.q
    s.kick_fd = kick_fd
    s.call_fd = call_fd
    s.writing = writing
    s.verify = verify
    s.seed = seed
    s.block = block
    s.depth = depth
    s.sectors = <const uint64_t *>cnp.PyArray_DATA(sec)
    s.n = cnp.PyArray_DIM(sec, 0)
    s.lat_ns = <long long *>cnp.PyArray_DATA(lat)
    s.timeout_ns = <long long>(timeout * 1e9)
    s.area_gpa = area
    if stop_at:
        s.stop_ns = <long long>(stop_at * 1e9)  # time.monotonic() is CLOCK_MONOTONIC, as now_ns
    drv_enter(&drv.q)
    held = drv.mem._hold()  # regions may change meanwhile: the loop walks this table
    s.m = &held
    with nogil:
        stream_loop(&s)
    drv.mem._release(&held)
    drv_exit(&drv.q)
    if s.failure == STREAM_USED:
        drv._fail_used(<int>s.detail, s.got, s.want)
    return s.failure, s.done, s.peak, s.fail_req, s.fail_sector, s.detail, s.got, s.want
