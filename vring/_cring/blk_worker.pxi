# The virtio-blk executor: a worker thread's whole loop in C, without the GIL. It waits (poll) for a kick, an I/O
# completion or its stop eventfd; pops chains with the engine's device functions (dev_peek / dev_commit), parses
# each request by the rules of vring.devices.blk (Request.parse, BlkDevice._serve), submits the I/O with the
# chain's guest buffers as the iovecs (io_uring, a thread pool, or synchronously), and as completions come back,
# in any order, writes each status byte, returns the chains (dev_put_used, dev_publish) and interrupts the driver
# when it asks (dev_notify_needed).

from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t preadv(int fd, const iovec *iov, int n, long offset)
    ssize_t pwritev2(int fd, const iovec *iov, int n, long offset, int flags)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long n, int timeout)
    enum: POLLIN

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum: EFD_NONBLOCK
    enum: EFD_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    ssize_t c_read "read"(int fd, void *buf, size_t n)
    ssize_t c_write "write"(int fd, const void *buf, size_t n)
    ssize_t pwrite(int fd, const void *buf, size_t n, long offset)
    int fdatasync(int fd)
    int c_close "close"(int fd)

cdef extern from "<fcntl.h>" nogil:
    int fallocate(int fd, int mode, long offset, long length)
    enum: FALLOC_FL_KEEP_SIZE
    enum: FALLOC_FL_PUNCH_HOLE

cdef extern from "<errno.h>" nogil:
    int errno
    enum: EINTR
    enum: EIO
    enum: EINVAL

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **out, size_t alignment, size_t size)

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)

cdef extern from "_cring/uring.h" nogil:
    ctypedef struct vring_uring:
        pass
    enum: VRING_URING_BUILT
    enum: RWF_DSYNC
    vring_uring *vring_uring_new(unsigned entries, int *err)
    int vring_uring_fd(vring_uring *ring)
    void vring_uring_free(vring_uring *ring)
    int vring_uring_rw(vring_uring *ring, int write, int fd, const iovec *iov, unsigned n, uint64_t offset,
                       int rw_flags, uint64_t data)
    int vring_uring_fdatasync(vring_uring *ring, int fd, uint64_t data)
    int vring_uring_submit(vring_uring *ring)
    int vring_uring_reap(vring_uring *ring, uint64_t *data, int *res)

# virtio-blk's wire values (spec 5.2.6), the same as vring.devices.blk's (tests/test_blk_worker.py compares them).
cdef enum:
    BLK_T_IN = 0
    BLK_T_OUT = 1
    BLK_T_FLUSH = 4
    BLK_T_GET_ID = 8
    BLK_T_DISCARD = 11
    BLK_T_WRITE_ZEROES = 13
    BLK_S_OK = 0
    BLK_S_IOERR = 1
    BLK_S_UNSUPP = 2
    BLK_HEADER_BYTES = 16
    BLK_ID_BYTES = 20
    BLK_SECTOR = 512
    BLK_DISCARD_SEG_BYTES = 16
    BLK_MAX_DISCARD_SEG = 32
    BLK_MAX_DISCARD_SECTORS = 1 << 22
    BLK_WZ_UNMAP = 1
    BLK_IOV_MAX = 1024               # what preadv / io_uring take at most in one call
BLK_WIRE = {"T_IN": BLK_T_IN, "T_OUT": BLK_T_OUT, "T_FLUSH": BLK_T_FLUSH, "T_GET_ID": BLK_T_GET_ID,
            "T_DISCARD": BLK_T_DISCARD, "T_WRITE_ZEROES": BLK_T_WRITE_ZEROES, "S_OK": BLK_S_OK,
            "S_IOERR": BLK_S_IOERR, "S_UNSUPP": BLK_S_UNSUPP, "ID_BYTES": BLK_ID_BYTES, "SECTOR": BLK_SECTOR,
            "MAX_DISCARD_SEG": BLK_MAX_DISCARD_SEG, "MAX_DISCARD_SECTORS": BLK_MAX_DISCARD_SECTORS,
            "WZ_UNMAP": BLK_WZ_UNMAP}

cdef enum:
    AIO_SYNC = 0                     # preadv / pwritev in the worker's own loop
    AIO_THREADS = 1                  # a pool of threads doing the same, many requests at once
    AIO_URING = 2                    # io_uring
BLK_AIO_MODES = {"sync": AIO_SYNC, "threads": AIO_THREADS, "io_uring": AIO_URING}

cdef enum:
    BLK_POOL_THREADS = 16            # threads of an AIO_THREADS worker's pool (fewer for small queues)
    BLK_URING_MAX_ENTRIES = 4096     # submission slots of an io_uring (the completion ring has twice that)

cdef enum:
    OP_READ = 1
    OP_WRITE = 2
    OP_FLUSH = 3


ctypedef struct BlkReq:
    BlkReq *next                     # the free list, the pool's queue or a list of completions
    uint32_t ring                    # position of its ring in the worker
    uint16_t head
    uint8_t op                       # OP_*, 0 for a request answered when parsed
    uint8_t status                   # the status of a request answered when parsed
    uint8_t *status_ptr              # the chain's last writable byte
    uint32_t written                 # bytes the used element reports once the request succeeds
    uint64_t offset                  # in the image
    uint32_t length                  # data bytes
    uint32_t done                    # data bytes moved so far (a short read or write goes on from there)
    iovec *iov                       # the chain's data buffers in guest memory
    int niov
    int iov_cap
    iovec bounce                     # an aligned copy of the data (O_DIRECT with unaligned guest buffers)
    long long result                 # bytes moved, or -errno


ctypedef struct BlkIo:               # what executing a request needs: shared with the pool's threads
    int fd
    bint writeback                   # else every write is made durable before it completes
    uint32_t align                   # O_DIRECT's alignment (0: buffered I/O)
    pthread_mutex_t lock             # the pool's
    pthread_cond_t wake
    BlkReq *queue_head
    BlkReq *queue_tail
    BlkReq *completed
    bint exiting
    int done_fd                      # the pool's threads write it on each completion


ctypedef struct BlkRing:
    DevQueue *q
    MemMap held
    int kick
    int call
    uint32_t inflight                # requests submitted and not completed
    bint broken
    bint pushed                      # used elements written since the last publish
    bint armed                       # notifications enabled: the driver kicks
    ChainError err


cdef inline void blk_iov_skip(iovec **iov, int *n, size_t skip) noexcept nogil:
    """Advance an iovec array past ``skip`` bytes (it is the request's own copy: modified in place)."""
    while n[0] and skip >= iov[0][0].iov_len:
        skip -= iov[0][0].iov_len
        iov[0] += 1
        n[0] -= 1
    if n[0] and skip:
        iov[0][0].iov_base = <unsigned char *>iov[0][0].iov_base + skip
        iov[0][0].iov_len -= skip


cdef inline void blk_exec(BlkIo *io, BlkReq *r) noexcept nogil:
    """Do ``r``'s I/O synchronously from ``r.done`` on; ``r.result`` = the data bytes moved in all, or -errno."""
    cdef iovec *iov
    cdef int n
    cdef ssize_t got
    if r.op == OP_FLUSH:
        r.result = 0 if fdatasync(io.fd) == 0 else -errno
        return
    if r.bounce.iov_base != NULL:
        iov = &r.bounce
        n = 1
    else:
        iov = r.iov
        n = r.niov
    blk_iov_skip(&iov, &n, r.done)
    while r.done < r.length:
        if r.op == OP_READ:
            got = preadv(io.fd, iov, n, <long>(r.offset + r.done))
        else:
            got = pwritev2(io.fd, iov, n, <long>(r.offset + r.done), 0 if io.writeback else RWF_DSYNC)
        if got < 0:
            if errno == EINTR:
                continue
            r.result = -errno
            return
        if got == 0:
            r.result = -EIO  # past the end of the image: it shrank under us
            return
        r.done += got
        blk_iov_skip(&iov, &n, got)
    r.result = r.done


cdef void *blk_pool_thread(void *arg) noexcept nogil:
    """One thread of the pool: take a request, execute it, hand it back, until the pool exits."""
    cdef BlkIo *io = <BlkIo *>arg
    cdef BlkReq *r
    cdef uint64_t one = 1
    while True:
        pthread_mutex_lock(&io.lock)
        while io.queue_head == NULL and not io.exiting:
            pthread_cond_wait(&io.wake, &io.lock)
        r = io.queue_head
        if r == NULL:
            pthread_mutex_unlock(&io.lock)
            return NULL
        io.queue_head = r.next
        if io.queue_head == NULL:
            io.queue_tail = NULL
        pthread_mutex_unlock(&io.lock)
        blk_exec(io, r)
        pthread_mutex_lock(&io.lock)
        r.next = io.completed
        io.completed = r
        pthread_mutex_unlock(&io.lock)
        c_write(io.done_fd, &one, 8)  # a full counter (EAGAIN) still wakes the worker


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


cdef class BlkWorker:
    """A virtio-blk device's executor for a group of rings (vring.vhost_user.worker.Executor).

    ``rings`` are (device queue, kick fd, call fd); ``fd`` is the image (opened O_DIRECT when ``align`` is not 0:
    guest buffers not aligned to it are bounced), ``size`` its bytes; ``serial`` is what GET_ID answers;
    ``punch_holes`` is false for a block device (discard and write-zeroes then write zeros, as BlkDevice does).
    ``aio`` is a BLK_AIO_MODES key. ``run`` serves until ``stop_fd`` is readable (see its docstring).
    """

    cdef BlkRing *rings
    cdef int nrings
    cdef list queues
    cdef BlkReq *reqs
    cdef uint32_t nreqs
    cdef BlkReq *free_list
    cdef BlkReq *answered            # completed in the loop itself (parsed with an answer, or done synchronously)
    cdef BlkIo *io
    cdef pthread_t threads[BLK_POOL_THREADS]
    cdef int nthreads
    cdef vring_uring *uring
    cdef int mode
    cdef bint read_only
    cdef bint punch_holes              # discard and write-zeroes may punch holes (a file, not a block device)
    cdef uint64_t size
    cdef unsigned char serial[BLK_ID_BYTES]
    cdef uint32_t serial_len
    cdef int stop_fd
    cdef bint stopping
    cdef uint32_t inflight
    cdef pollfd *fds
    cdef readonly unsigned long long completed_out_of_order  # completions that overtook an earlier submission
    cdef uint64_t submit_seq
    cdef uint64_t last_done_seq        # the latest submission number completed so far
    cdef uint64_t *seq                 # per request: its submission number

    def __cinit__(self):
        self.io = <BlkIo *>calloc(1, sizeof(BlkIo))
        if self.io == NULL:
            raise MemoryError()
        self.io.done_fd = -1
        pthread_mutex_init(&self.io.lock, NULL)
        pthread_cond_init(&self.io.wake, NULL)

    def __init__(self, rings, int fd, unsigned long long size, *, bint read_only=False, bint writeback=True,
                 unsigned int align=0, bytes serial=b"", aio="io_uring", int stop_fd=-1, bint punch_holes=True):
        cdef int err = 0, i
        cdef DeviceQueue queue
        cdef uint32_t total = 0, entries = 1
        if aio not in BLK_AIO_MODES:
            raise ValueError(f"aio must be one of {', '.join(BLK_AIO_MODES)}, not {aio!r}")
        if align & (align - 1):
            raise ValueError(f"align must be a power of two, not {align}")
        self.mode = BLK_AIO_MODES[aio]
        self.io.fd = fd
        self.io.writeback = writeback
        self.io.align = align
        self.read_only = read_only
        self.punch_holes = punch_holes
        self.size = size - size % BLK_SECTOR
        self.serial_len = min(len(serial), BLK_ID_BYTES)
        memcpy(self.serial, <const char *>serial, self.serial_len)
        self.stop_fd = stop_fd
        self.queues = []
        rings = list(rings)
        self.rings = <BlkRing *>calloc(max(1, len(rings)), sizeof(BlkRing))
        self.fds = <pollfd *>calloc(len(rings) + 2, sizeof(pollfd))
        if self.rings == NULL or self.fds == NULL:
            raise MemoryError()
        for queue, kick, call in rings:
            i = self.nrings
            self.rings[i].q = &queue.q
            self.rings[i].kick = kick
            self.rings[i].call = call
            self.rings[i].broken = queue.broken
            self.rings[i].armed = queue.q.notify_enabled
            self.queues.append(queue)
            self.nrings += 1
            total += queue.q.size
        self.nreqs = total
        self.reqs = <BlkReq *>calloc(max(1, total), sizeof(BlkReq))
        self.seq = <uint64_t *>calloc(max(1, total), sizeof(uint64_t))
        if self.reqs == NULL or self.seq == NULL:
            raise MemoryError()
        for i in range(<int>total):
            self.reqs[i].next = self.free_list
            self.free_list = &self.reqs[i]
        if self.mode == AIO_URING:
            while entries < min(total, <uint32_t>BLK_URING_MAX_ENTRIES):
                entries <<= 1
            self.uring = vring_uring_new(entries, &err)
            if self.uring == NULL:
                raise OSError(err, f"io_uring: {strerror(err).decode()}")
        elif self.mode == AIO_THREADS:
            self.io.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.io.done_fd < 0:
                raise OSError(errno, strerror(errno).decode())
            for i in range(min(<int>total, BLK_POOL_THREADS)):
                if pthread_create(&self.threads[i], NULL, blk_pool_thread, self.io) != 0:
                    break
                self.nthreads += 1
            if self.nthreads == 0:
                raise OSError(EIO, "no thread of the I/O pool could start")

    def __dealloc__(self):
        self._close()
        if self.io != NULL:
            pthread_mutex_destroy(&self.io.lock)
            pthread_cond_destroy(&self.io.wake)
            free(self.io)

    cdef void _close(self) noexcept:
        """End the pool's threads and the io_uring, free the requests. Only with nothing in flight."""
        cdef uint32_t i
        if self.nthreads:
            pthread_mutex_lock(&self.io.lock)
            self.io.exiting = True
            pthread_cond_broadcast(&self.io.wake)
            pthread_mutex_unlock(&self.io.lock)
            with nogil:
                for i in range(<uint32_t>self.nthreads):
                    pthread_join(self.threads[i], NULL)
            self.nthreads = 0
        vring_uring_free(self.uring)
        self.uring = NULL
        if self.io != NULL and self.io.done_fd >= 0:
            c_close(self.io.done_fd)
            self.io.done_fd = -1
        if self.reqs != NULL:
            for i in range(self.nreqs):
                free(self.reqs[i].iov)
                free(self.reqs[i].bounce.iov_base)
        free(self.reqs)
        self.reqs = NULL
        free(self.seq)
        self.seq = NULL
        free(self.rings)
        self.rings = NULL
        free(self.fds)
        self.fds = NULL
        self.nrings = 0

    def close(self):
        """Release the pool, the io_uring and the requests (after ``run`` returned None)."""
        if self.inflight:
            raise RuntimeError(f"{self.inflight} requests are still in flight")
        self._close()

    @property
    def inflight_count(self):
        return self.inflight

    def failure(self, int position):
        """The error that stopped ring ``position`` (which ``run`` returned); latches its queue broken."""
        if not 0 <= position < self.nrings or not self.rings[position].broken:
            raise ValueError(f"ring {position} did not fail")
        try:
            (<DeviceQueue>self.queues[position])._fail(&self.rings[position].err)
        except Exception as exc:
            return exc
        raise AssertionError("a failed ring raises")

    def run(self):
        """Serve the rings without the GIL until the stop eventfd is readable: then finish what is in flight,
        push it, signal, and return None. A malformed ring is no longer served: ``run`` returns its position
        (``failure`` says why), its requests in flight are completed but not pushed, and the caller calls
        ``run`` again for the others."""
        cdef int i, r
        cdef DeviceQueue queue
        if self.rings == NULL:
            raise RuntimeError("the worker is closed")
        for i in range(self.nrings):
            queue = self.queues[i]
            if not self.rings[i].broken:
                queue._check()  # rebinds the ring if guest memory changed
            self.rings[i].held = queue.mem._hold()
            dev_enter(self.rings[i].q)
        with nogil:
            r = self._serve_loop()
        for i in range(self.nrings):
            dev_exit(self.rings[i].q)
            (<DeviceQueue>self.queues[i]).mem._release(&self.rings[i].held)
        return None if r < 0 else r

    # -- the loop --------------------------------------------------------------------------------------------
    cdef int _serve_loop(self) noexcept nogil:
        """-1 once stopped and drained, or the position of a ring found malformed."""
        cdef int i, nfds, failed = -1
        cdef uint64_t count
        cdef bint progress
        while True:
            progress = self._reap_completions() > 0
            if not self.stopping:
                for i in range(self.nrings):
                    if not self.rings[i].broken and self._pop_ring(i):
                        progress = True
                        if self.rings[i].broken and failed < 0:
                            failed = i
                self._submit_uring()
            progress = self._finish_answered() or progress
            self._publish_rings()
            if failed >= 0:
                return failed
            if self.stopping and self.inflight == 0:
                return -1
            if progress:
                continue
            if not self.stopping and self._arm_rings():
                continue  # the driver added chains while we were deciding to sleep
            nfds = 0
            # io_uring's own fd polls readable while a completion waits; the pool writes an eventfd; a
            # synchronous worker has nothing to wait for (-1: poll skips it)
            self.fds[nfds].fd = vring_uring_fd(self.uring) if self.mode == AIO_URING else self.io.done_fd
            self.fds[nfds].events = POLLIN
            nfds += 1
            if not self.stopping:  # once stopping, only completions matter (the stop fd stays readable)
                self.fds[nfds].fd = self.stop_fd
                self.fds[nfds].events = POLLIN
                nfds += 1
                for i in range(self.nrings):
                    if not self.rings[i].broken:
                        self.fds[nfds].fd = self.rings[i].kick
                        self.fds[nfds].events = POLLIN
                        nfds += 1
            for i in range(nfds):
                self.fds[i].revents = 0
            if poll(self.fds, nfds, -1) < 0 and errno != EINTR:
                return -1  # cannot happen with valid fds; nothing better to do than stop
            if self.fds[0].revents and self.mode == AIO_THREADS:
                c_read(self.io.done_fd, &count, 8)
            if not self.stopping:
                if self.fds[1].revents:
                    self.stopping = True
                nfds = 2
                for i in range(self.nrings):
                    if not self.rings[i].broken:
                        if self.fds[nfds].revents:
                            c_read(self.rings[i].kick, &count, 8)  # non-blocking: EAGAIN if raced
                            self._disarm_ring(i)
                        nfds += 1

    cdef bint _arm_rings(self) noexcept nogil:
        """Ask every ring's driver to kick again; True if one already has chains (serve them first)."""
        cdef int i
        cdef bint pending = False
        for i in range(self.nrings):
            if not self.rings[i].broken and not self.rings[i].armed:
                self.rings[i].armed = True
                self.rings[i].q.notify_enabled = True
                if dev_enable_notifications(self.rings[i].q):
                    pending = True
        return pending

    cdef void _disarm_ring(self, int i) noexcept nogil:
        """A kick came: the worker looks at the ring until it is idle, without more kicks."""
        if self.rings[i].armed:
            self.rings[i].armed = False
            self.rings[i].q.notify_enabled = False
            dev_disable_notifications(self.rings[i].q)

    cdef bint _pop_ring(self, int i) noexcept nogil:
        """Pop and start every chain available on ring ``i`` (as many as there are free requests); True if one
        was. A malformed chain marks the ring broken."""
        cdef BlkRing *ring = &self.rings[i]
        cdef BlkReq *req
        cdef uint16_t head = 0
        cdef int r
        cdef bint popped = False
        while self.free_list != NULL:
            r = dev_peek(ring.q, &ring.held, &head, &ring.err)
            if r < 0:
                ring.broken = True
                return True
            if r == 0:
                break
            dev_commit(ring.q, head)
            popped = True
            req = self.free_list
            self.free_list = req.next
            req.next = NULL
            req.ring = i
            req.head = head
            ring.inflight += 1
            self.inflight += 1
            self._parse_and_start(ring, req)
        if popped:
            dev_after_pop(ring.q)
        return popped

    cdef void _answer(self, BlkReq *req, uint8_t status, uint32_t written) noexcept nogil:
        """The request is answered without I/O (or its I/O is done): completed at the end of this round."""
        req.op = 0
        req.status = status
        req.written = written
        req.next = self.answered
        self.answered = req

    cdef void _parse_and_start(self, BlkRing *ring, BlkReq *req) noexcept nogil:
        """Parse the chain just popped into ``req`` (Request.parse) and serve it (BlkDevice._serve)."""
        cdef DevQueue *q = ring.q
        cdef Seg *last
        cdef unsigned char header[BLK_HEADER_BYTES]
        cdef uint32_t rtype, first_w = 0, data_len
        cdef uint64_t sector
        if q.writable_len < 1:
            req.status_ptr = NULL  # nowhere to answer: completed with nothing written (the Python device logs it)
            self._answer(req, BLK_S_IOERR, 0)
            return
        while first_w < q.nseg and not q.segs[first_w].writable:
            first_w += 1
        last = &q.segs[q.nseg - 1]
        req.status_ptr = blk_seg_host(&ring.held, last) + last.len - 1
        if q.readable_len < BLK_HEADER_BYTES:
            self._answer(req, BLK_S_IOERR, 1)
            return
        blk_copy_out(&ring.held, q, 0, 0, header, BLK_HEADER_BYTES)
        memcpy(&rtype, header, 4)
        memcpy(&sector, header + 8, 8)
        if rtype == BLK_T_IN or rtype == BLK_T_GET_ID:
            data_len = q.writable_len - 1
            if rtype == BLK_T_GET_ID:
                self._get_id(ring, req, first_w, data_len)
                return
            if not blk_range_ok(sector, data_len, self.size, self.size // BLK_SECTOR):
                self._answer(req, BLK_S_IOERR, 1)
                return
            req.op = OP_READ
            if self._data_iov(ring, req, first_w, 0, data_len) < 0:
                self._answer(req, BLK_S_IOERR, 1)
                return
            req.written = data_len + 1
        elif rtype == BLK_T_OUT:
            data_len = q.readable_len - BLK_HEADER_BYTES
            if self.read_only or not blk_range_ok(sector, data_len, self.size, self.size // BLK_SECTOR):
                self._answer(req, BLK_S_IOERR, 1)
                return
            req.op = OP_WRITE
            if self._data_iov(ring, req, 0, BLK_HEADER_BYTES, data_len) < 0:
                self._answer(req, BLK_S_IOERR, 1)
                return
            req.written = 1
        elif rtype == BLK_T_FLUSH:
            if self.read_only:
                self._answer(req, BLK_S_OK, 1)
                return
            req.op = OP_FLUSH
            data_len = 0
            req.written = 1
        elif rtype == BLK_T_DISCARD or rtype == BLK_T_WRITE_ZEROES:
            if self.read_only:
                self._answer(req, BLK_S_IOERR, 1)
            else:
                self._answer(req, self._discard_or_zero(ring, rtype, q.readable_len - BLK_HEADER_BYTES), 1)
            return
        else:
            self._answer(req, BLK_S_UNSUPP, 1)
            return
        req.offset = sector * BLK_SECTOR
        req.length = data_len
        req.done = 0
        req.result = 0
        if data_len == 0 and req.op != OP_FLUSH:
            self._answer(req, BLK_S_OK, req.written)
            return
        self._issue(req)

    cdef int _data_iov(self, BlkRing *ring, BlkReq *req, uint32_t first, uint32_t skip,
                       uint32_t length) noexcept nogil:
        """Point ``req.iov`` at ``length`` bytes of the chain from segment ``first``, ``skip`` bytes in (zero
        copy); with O_DIRECT and a buffer not aligned, an aligned bounce buffer instead. -1 if impossible."""
        cdef DevQueue *q = ring.q
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
            req.iov[n].iov_base = blk_seg_host(&ring.held, s) + skip
            req.iov[n].iov_len = take
            if self.io.align and ((<uintptr_t>req.iov[n].iov_base | take) & (self.io.align - 1)):
                aligned = False
            n += 1
            left -= take
            skip = 0
        req.niov = n
        free(req.bounce.iov_base)
        req.bounce.iov_base = NULL
        if not aligned:
            if posix_memalign(&buf, self.io.align, (length + self.io.align - 1) & ~(self.io.align - 1)) != 0:
                return -1
            req.bounce.iov_base = buf
            req.bounce.iov_len = length
            if req.op == OP_WRITE:
                self._bounce_copy(req, True)
        return 0

    cdef void _bounce_copy(self, BlkReq *req, bint to_bounce) noexcept nogil:
        """Copy between the guest buffers and the bounce buffer (in for a write, out after a read)."""
        cdef unsigned char *b = <unsigned char *>req.bounce.iov_base
        cdef int k
        for k in range(req.niov):
            if to_bounce:
                memcpy(b, req.iov[k].iov_base, req.iov[k].iov_len)
            else:
                memcpy(req.iov[k].iov_base, b, req.iov[k].iov_len)
            b += req.iov[k].iov_len

    cdef void _get_id(self, BlkRing *ring, BlkReq *req, uint32_t first_w, uint32_t length) noexcept nogil:
        """GET_ID: the serial, NUL-padded, into the first min(length, 20) writable bytes."""
        cdef unsigned char ident[BLK_ID_BYTES]
        cdef uint32_t n = min(length, <uint32_t>BLK_ID_BYTES), left, take, i = first_w
        cdef unsigned char *src = ident
        cdef Seg *s
        if length < 1:
            self._answer(req, BLK_S_IOERR, 1)
            return
        memset(ident, 0, BLK_ID_BYTES)
        memcpy(ident, self.serial, self.serial_len)
        left = n
        while left and i < ring.q.nseg:
            s = &ring.q.segs[i]
            take = min(left, s.len)
            memcpy(blk_seg_host(&ring.held, s), src, take)
            src += take
            left -= take
            i += 1
        self._answer(req, BLK_S_OK, n + 1)

    cdef uint8_t _discard_or_zero(self, BlkRing *ring, uint32_t rtype, uint32_t length) noexcept nogil:
        """BlkDevice._discard_or_zero: check every segment first, then punch or zero each (synchronously)."""
        cdef unsigned char payload[BLK_MAX_DISCARD_SEG * BLK_DISCARD_SEG_BYTES]
        cdef uint64_t sector
        cdef uint32_t count, flags, k, nsegs = length // BLK_DISCARD_SEG_BYTES
        if length == 0 or length % BLK_DISCARD_SEG_BYTES or nsegs > BLK_MAX_DISCARD_SEG:
            return BLK_S_IOERR
        blk_copy_out(&ring.held, ring.q, 0, BLK_HEADER_BYTES, payload, length)
        for k in range(nsegs):
            memcpy(&sector, payload + k * 16, 8)
            memcpy(&count, payload + k * 16 + 8, 4)
            memcpy(&flags, payload + k * 16 + 12, 4)
            if count > BLK_MAX_DISCARD_SECTORS or not blk_range_ok(sector, <uint64_t>count * BLK_SECTOR,
                                                                   self.size, self.size // BLK_SECTOR):
                return BLK_S_IOERR
            if rtype == BLK_T_DISCARD and flags:
                return BLK_S_UNSUPP  # the unmap flag is reserved for discard
            if rtype == BLK_T_WRITE_ZEROES and flags & ~(<uint32_t>BLK_WZ_UNMAP):
                return BLK_S_UNSUPP
        for k in range(nsegs):
            memcpy(&sector, payload + k * 16, 8)
            memcpy(&count, payload + k * 16 + 8, 4)
            if rtype == BLK_T_DISCARD:
                self._punch(sector * BLK_SECTOR, <uint64_t>count * BLK_SECTOR)  # best effort: data undefined
            elif self._zero_range(sector * BLK_SECTOR, <uint64_t>count * BLK_SECTOR) < 0:
                return BLK_S_IOERR
        return BLK_S_OK

    cdef bint _punch(self, uint64_t offset, uint64_t length) noexcept nogil:
        if length == 0 or not self.punch_holes:
            return False
        return fallocate(self.io.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, <long>offset, <long>length) == 0

    cdef int _zero_range(self, uint64_t offset, uint64_t length) noexcept nogil:
        """Zeros over [offset, offset + length): a hole where the file system punches one, else written."""
        cdef void *zeros = NULL
        cdef size_t chunk = 1 << 16
        cdef ssize_t n
        if self._punch(offset, length):
            return 0
        if posix_memalign(&zeros, 4096, chunk) != 0:
            return -1
        memset(zeros, 0, chunk)
        while length:
            n = pwrite(self.io.fd, zeros, min(<uint64_t>chunk, length), <long>offset)
            if n <= 0:
                if n < 0 and errno == EINTR:
                    continue
                free(zeros)
                return -1
            offset += n
            length -= n
        free(zeros)
        return 0

    # -- I/O -----------------------------------------------------------------------------------------------
    cdef void _issue(self, BlkReq *req) noexcept nogil:
        """Start ``req``'s I/O by the worker's mode; it completes in _reap (or in this round, synchronously)."""
        cdef int r, attempt
        cdef iovec *iov = &req.bounce if req.bounce.iov_base != NULL else req.iov
        cdef int n = 1 if req.bounce.iov_base != NULL else req.niov
        self.seq[req - self.reqs] = self.submit_seq
        self.submit_seq += 1
        if self.mode == AIO_URING:
            for attempt in range(2):
                if req.op == OP_FLUSH:
                    r = vring_uring_fdatasync(self.uring, self.io.fd, <uint64_t>(req - self.reqs))
                else:
                    r = vring_uring_rw(self.uring, req.op == OP_WRITE, self.io.fd, iov, n, req.offset,
                                       0 if self.io.writeback or req.op != OP_WRITE else RWF_DSYNC,
                                       <uint64_t>(req - self.reqs))
                if r == 0:
                    return
                self._submit_uring()  # the submission ring is full: hand it over and try once more
        elif self.mode == AIO_THREADS:
            req.next = NULL
            pthread_mutex_lock(&self.io.lock)
            if self.io.queue_tail != NULL:
                self.io.queue_tail.next = req
            else:
                self.io.queue_head = req
            self.io.queue_tail = req
            pthread_cond_signal(&self.io.wake)  # one thread for one request
            pthread_mutex_unlock(&self.io.lock)
            return
        blk_exec(self.io, req)  # AIO_SYNC, or io_uring refused it
        self._complete_io(req)

    cdef void _submit_uring(self) noexcept nogil:
        cdef int r
        if self.mode != AIO_URING:
            return
        while True:
            r = vring_uring_submit(self.uring)
            if r >= 0 or r != -EINTR:
                return

    cdef int _reap_completions(self) noexcept nogil:
        """Complete what finished since the last look, in whatever order; returns how many."""
        cdef uint64_t data
        cdef int res, n = 0
        cdef BlkReq *r
        cdef BlkReq *done
        if self.mode == AIO_URING:
            while vring_uring_reap(self.uring, &data, &res):
                r = &self.reqs[data]
                if res > 0 and r.op != OP_FLUSH and r.done + <uint32_t>res < r.length:
                    r.done += res  # short: the rest synchronously
                    blk_exec(self.io, r)
                elif res == 0 and r.op != OP_FLUSH:
                    r.result = -EIO
                else:
                    r.result = res if res < 0 else r.done + (res if r.op != OP_FLUSH else 0)
                self._complete_io(r)
                n += 1
        elif self.mode == AIO_THREADS:
            pthread_mutex_lock(&self.io.lock)
            done = self.io.completed
            self.io.completed = NULL
            pthread_mutex_unlock(&self.io.lock)
            while done != NULL:
                r = done
                done = r.next
                self._complete_io(r)
                n += 1
        return n

    cdef void _complete_io(self, BlkReq *req) noexcept nogil:
        """The I/O of ``req`` finished (``req.result``): the request is answered."""
        cdef uint64_t s = self.seq[req - self.reqs]
        if s < self.last_done_seq:
            self.completed_out_of_order += 1  # an earlier submission completes after a later one did
        else:
            self.last_done_seq = s
        if req.result < 0:
            self._answer(req, BLK_S_IOERR, 1)
            return
        if req.op == OP_READ and req.bounce.iov_base != NULL:
            self._bounce_copy(req, False)
        self._answer(req, BLK_S_OK, req.written)

    cdef bint _finish_answered(self) noexcept nogil:
        """Write the status byte of every answered request and put it in its ring's used ring (a broken ring's
        are dropped); True if there were any."""
        cdef BlkReq *req
        cdef BlkRing *ring
        cdef bint any_done = self.answered != NULL
        while self.answered != NULL:
            req = self.answered
            self.answered = req.next
            ring = &self.rings[req.ring]
            if not ring.broken:
                if req.status_ptr != NULL:
                    req.status_ptr[0] = req.status
                dev_put_used(ring.q, req.head, req.written)
                ring.pushed = True
            ring.inflight -= 1
            self.inflight -= 1
            free(req.bounce.iov_base)
            req.bounce.iov_base = NULL
            req.next = self.free_list
            self.free_list = req
        return any_done

    cdef void _publish_rings(self) noexcept nogil:
        """Publish each ring's used elements once and interrupt its driver if it asks."""
        cdef int i
        cdef uint64_t one = 1
        for i in range(self.nrings):
            if self.rings[i].pushed:
                self.rings[i].pushed = False
                dev_publish(self.rings[i].q)
                if dev_notify_needed(self.rings[i].q) and self.rings[i].call >= 0:
                    c_write(self.rings[i].call, &one, 8)  # non-blocking: a full counter has one pending anyway


def blk_uring_unavailable():
    """Why io_uring cannot be used here (one line), or None if it can."""
    cdef int err = 0
    cdef vring_uring *ring
    if not VRING_URING_BUILT:
        return "vring's core was built without liburing"
    ring = vring_uring_new(2, &err)
    if ring == NULL:
        return f"io_uring_setup failed: {strerror(err).decode()}"
    vring_uring_free(ring)
    return None
