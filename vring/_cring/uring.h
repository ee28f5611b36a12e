/* The few io_uring operations the virtio-blk worker uses (blk_worker.pxi), over liburing when the build found it
 * (VRING_HAVE_LIBURING, set by setup.py), else stubs that fail with ENOSYS so that the worker falls back. */
#ifndef VRING_URING_H
#define VRING_URING_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002 /* linux/fs.h: the write is durable (as O_DSYNC) when it completes */
#endif

#ifdef VRING_HAVE_LIBURING
#include <liburing.h>

#define VRING_URING_BUILT 1
typedef struct io_uring vring_uring;

/* A ring of ``entries`` submissions; NULL with *err = an errno. Its fd (vring_uring_fd) polls readable while a
 * completion waits. */
static inline vring_uring *vring_uring_new(unsigned entries, int *err)
{
    vring_uring *ring = calloc(1, sizeof *ring);
    int rc;
    if (ring == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    rc = io_uring_queue_init(entries, ring, 0);
    if (rc < 0) {
        free(ring);
        *err = -rc;
        return NULL;
    }
    return ring;
}

static inline int vring_uring_fd(vring_uring *ring)
{
    return ring->ring_fd;
}

static inline void vring_uring_free(vring_uring *ring)
{
    if (ring != NULL) {
        io_uring_queue_exit(ring);
        free(ring);
    }
}

/* Queue a readv/writev (0), or -EBUSY when the submission ring is full (submit, then try again). */
static inline int vring_uring_rw(vring_uring *ring, int write, int fd, const struct iovec *iov, unsigned n,
                                 uint64_t offset, int rw_flags, uint64_t data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL)
        return -EBUSY;
    if (write)
        io_uring_prep_writev(sqe, fd, iov, n, offset);
    else
        io_uring_prep_readv(sqe, fd, iov, n, offset);
    sqe->rw_flags = rw_flags;
    io_uring_sqe_set_data(sqe, (void *)(uintptr_t)data);
    return 0;
}

/* Queue an fdatasync (0), or -EBUSY. */
static inline int vring_uring_fdatasync(vring_uring *ring, int fd, uint64_t data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data(sqe, (void *)(uintptr_t)data);
    return 0;
}

/* Hand the queued submissions to the kernel: how many, or -errno. */
static inline int vring_uring_submit(vring_uring *ring)
{
    return io_uring_submit(ring);
}

/* Take one completion: 1 with its data and result (bytes or -errno), 0 when there is none. */
static inline int vring_uring_reap(vring_uring *ring, uint64_t *data, int *res)
{
    struct io_uring_cqe *cqe;
    if (io_uring_peek_cqe(ring, &cqe) != 0)
        return 0;
    *data = (uint64_t)(uintptr_t)io_uring_cqe_get_data(cqe);
    *res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return 1;
}

#else /* built without liburing */

#define VRING_URING_BUILT 0
typedef struct vring_uring vring_uring;

static inline vring_uring *vring_uring_new(unsigned entries, int *err)
{
    (void)entries;
    *err = ENOSYS;
    return NULL;
}

static inline int vring_uring_fd(vring_uring *ring) { (void)ring; return -1; }

static inline void vring_uring_free(vring_uring *ring) { (void)ring; }

static inline int vring_uring_rw(vring_uring *ring, int write, int fd, const struct iovec *iov, unsigned n,
                                 uint64_t offset, int rw_flags, uint64_t data)
{
    (void)ring, (void)write, (void)fd, (void)iov, (void)n, (void)offset, (void)rw_flags, (void)data;
    return -ENOSYS;
}

static inline int vring_uring_fdatasync(vring_uring *ring, int fd, uint64_t data)
{
    (void)ring, (void)fd, (void)data;
    return -ENOSYS;
}

static inline int vring_uring_submit(vring_uring *ring) { (void)ring; return -ENOSYS; }

static inline int vring_uring_reap(vring_uring *ring, uint64_t *data, int *res)
{
    (void)ring, (void)data, (void)res;
    return 0;
}

#endif
#endif
