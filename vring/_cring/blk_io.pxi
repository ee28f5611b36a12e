# The virtio-blk worker's I/O (blk_worker.pxi has its loop): a request and how it is executed synchronously, the
# thread pool's threads, and whether io_uring works. The POSIX declarations are in posix.pxi, the wire values in
# blk_wire.pxi.

from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc

cdef extern from "<fcntl.h>" nogil:
    int fallocate(int fd, int mode, long offset, long length)
    enum: FALLOC_FL_KEEP_SIZE
    enum: FALLOC_FL_PUNCH_HOLE

cdef extern from "<errno.h>" nogil:
    int errno
    enum: EINTR
    enum: EIO
    enum: ENOMEM
    enum: EAGAIN
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

cdef enum:                           # what a request's answer does not tell, for the device's log (BLK_NOTICES)
    NOTICE_NONE = 0
    NOTICE_NO_STATUS = 1             # no writable byte: completed with nothing written
    NOTICE_SHORT_HEADER = 2          # value: the readable bytes
    NOTICE_IO_ERROR = 3              # value: the errno of the failed I/O
BLK_NOTICES = {"no-status": NOTICE_NO_STATUS, "short-header": NOTICE_SHORT_HEADER, "io-error": NOTICE_IO_ERROR}


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
    uint8_t notice                   # NOTICE_*: told to the device's notice callback once answered
    long long notice_value


ctypedef struct BlkIo:               # the image, how requests on it are served, and the pool of threads doing it
    int fd
    int zero_fd                      # the image through the page cache: write-zeroes' writes need no alignment
    uint64_t size                    # bytes (whole sectors)
    bint read_only
    bint writeback                   # else every write is made durable before it completes
    bint punch_holes                 # discard and write-zeroes may punch holes (a file, not a block device)
    uint32_t align                   # O_DIRECT's alignment (0: buffered I/O)
    unsigned char serial[BLK_ID_BYTES]   # what GET_ID answers
    uint32_t serial_len
    pthread_mutex_t lock             # the pool's
    pthread_cond_t wake
    BlkReq *queue_head
    BlkReq *queue_tail
    BlkReq *completed
    bint exiting
    int done_fd                      # the pool's threads write it on each completion


cdef inline void blk_iov_skip(iovec **iov, int *n, size_t skip) noexcept nogil:
    """Advance an iovec array past ``skip`` bytes (modified in place: the request's own array of guest buffers,
    which nothing reads after its I/O, or a copy of its bounce buffer's)."""
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
    cdef iovec bounce
    cdef int n
    cdef ssize_t got
    if r.op == OP_FLUSH:
        r.result = 0 if fdatasync(io.fd) == 0 else -errno
        return
    if r.bounce.iov_base != NULL:
        bounce = r.bounce  # skipped on a copy: the request's own must keep pointing at its allocation
        iov = &bounce
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
