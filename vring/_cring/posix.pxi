# The POSIX calls the virtio-blk worker and client loops make without the GIL (poll, eventfds, vectored I/O).
from libc.errno cimport errno as _errno, EOPNOTSUPP as _EOPNOTSUPP

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t preadv(int fd, const iovec *iov, int n, long offset)
    ssize_t preadv2(int fd, const iovec *iov, int n, long offset, int flags)
    enum: RWF_NOWAIT
    ssize_t pwritev2(int fd, const iovec *iov, int n, long offset, int flags)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long n, int timeout)
    enum: POLLIN
    enum: POLLOUT
    enum: POLLERR
    enum: POLLHUP
    enum: POLLNVAL

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


# A peer's eventfd shares its file description with the peer (SCM_RIGHTS), O_NONBLOCK included: the peer may clear
# the flag we set. So a read asks RWF_NOWAIT itself, and a write first asks poll whether the counter has room.
cdef inline uint64_t peer_eventfd_take(int fd) noexcept nogil:
    """Consume a peer's eventfd counter, never waiting: 0 if nothing was signalled."""
    cdef uint64_t value = 0
    cdef iovec iov
    cdef pollfd p
    iov.iov_base = &value
    iov.iov_len = 8
    if preadv2(fd, &iov, 1, -1, RWF_NOWAIT) == 8:
        return value
    if _errno == _EOPNOTSUPP:  # a kernel whose eventfd has no RWF_NOWAIT: read only what poll shows
        p.fd = fd
        p.events = POLLIN
        if poll(&p, 1, 0) == 1 and p.revents & POLLIN and c_read(fd, &value, 8) == 8:
            return value
    return 0


cdef inline void peer_eventfd_signal(int fd) noexcept nogil:
    """Add 1 to a peer's eventfd unless its counter is full (the peer then has a notification pending anyway)."""
    cdef uint64_t one = 1
    cdef pollfd p
    p.fd = fd
    p.events = POLLOUT
    if poll(&p, 1, 0) == 1 and p.revents & POLLOUT:
        c_write(fd, &one, 8)
