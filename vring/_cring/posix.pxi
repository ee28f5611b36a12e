# The POSIX calls the virtio-blk worker and client loops make without the GIL (poll, eventfds, vectored I/O).

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
