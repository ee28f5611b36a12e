# The virtio-blk executor: a worker thread's whole loop in C, without the GIL. It waits (poll) for a kick, an I/O
# completion or its stop eventfd; pops chains with the engine's device functions (dev_peek / dev_commit), parses
# each request by the rules of vring.devices.blk (Request.parse, BlkDevice._serve), submits the I/O with the
# chain's guest buffers as the iovecs (io_uring, a thread pool, or synchronously), and as completions come back,
# in any order, writes each status byte, returns the chains (dev_put_used, dev_publish) and interrupts the driver
# when it asks (dev_notify_needed).

cdef enum:
    # Chains popped from a ring per round of the loop: the first answers go out (and the driver refills) while
    # the rest are served, instead of a whole ring's worth answered at once. 8 measured best here: 4 doubled the
    # 1x32 IOPS again but lost the second queue's gain, 32 left the driver waiting (bench/blk_matrix.py).
    BLK_POP_ROUND = 8
BLK_EXECUTOR_POP_ROUND = BLK_POP_ROUND  # for a model of the loop (fuzz/fuzz_blk_worker.py pops in these rounds)

ctypedef struct BlkRing:
    DevQueue *q
    MemMap held
    int kick
    int call
    uint32_t inflight                # requests submitted and not completed
    bint broken
    bint reported                    # its position was returned by run (or it came broken)
    bint pushed                      # used elements written since the last publish
    bint armed                       # notifications enabled (by this loop): the driver kicks
    ChainError err


cdef class BlkWorker:
    """A virtio-blk device's executor for a group of rings (vring.vhost_user.worker.Executor).

    ``rings`` are (device queue, kick fd, call fd); ``fd`` is the image (opened O_DIRECT when ``align`` is not 0:
    guest buffers not aligned to it are bounced), ``zero_fd`` the image through the page cache for write-zeroes
    (default ``fd``), ``size`` its bytes; ``serial`` is what GET_ID answers;
    ``punch_holes`` is false for a block device (discard and write-zeroes then write zeros, as BlkDevice does).
    ``aio`` is a BLK_AIO_MODES key. ``run`` serves until ``stop_fd`` is readable (see its docstring).
    ``poll_ns``: how long at most the loop, run dry with no I/O in flight, keeps looking at the rings
    (notifications still off) before it sleeps in poll(); 0 sleeps at once. Within that, the window adapts, as
    QEMU's adaptive polling: it doubles after a sleep shorter than ``poll_ns`` (the work came soon: looking
    longer would have caught it without a wake-up) and halves after a longer one. ``notice(kind, position, head, value)``, if given, is called (with the GIL, from the loop) for what a
    request's answer does not tell the driver: ``kind`` a BLK_NOTICES value, ``position`` the ring's, ``head``
    the chain's, ``value`` the readable bytes of a short header or the errno of a failed I/O.
    """

    cdef BlkRing *rings
    cdef int nrings
    cdef list queues
    cdef BlkReq *reqs
    cdef uint32_t nreqs
    cdef BlkReq *free_list
    cdef BlkReq *answered            # completed in the loop itself (parsed with an answer, or done synchronously)
    cdef BlkReq *answered_tail       # its last: the used ring gets them in the order they were answered
    cdef BlkIo *io
    cdef pthread_t threads[BLK_POOL_THREADS]
    cdef int nthreads
    cdef vring_uring *uring
    cdef int mode
    cdef int stop_fd
    cdef bint stopping
    cdef uint32_t inflight
    cdef pollfd *fds
    cdef readonly unsigned long long completed_out_of_order  # completions that overtook an earlier submission
    cdef uint64_t submit_seq
    cdef uint64_t last_done_seq        # the latest submission number completed so far
    cdef uint64_t *seq                 # per request: its submission number
    cdef bint unsubmitted              # io_uring refused a submission (busy): retried each round
    cdef long long poll_ns             # how long an idle loop looks before it sleeps: adapted, up to poll_max_ns
    cdef long long poll_max_ns
    cdef object notice                 # the notice callback, or None

    def __cinit__(self):
        self.io = <BlkIo *>calloc(1, sizeof(BlkIo))
        if self.io == NULL:
            raise MemoryError()
        self.io.done_fd = -1
        pthread_mutex_init(&self.io.lock, NULL)
        pthread_cond_init(&self.io.wake, NULL)

    def __init__(self, rings, int fd, unsigned long long size, *, bint read_only=False, bint writeback=True,
                 unsigned int align=0, bytes serial=b"", aio="io_uring", int stop_fd=-1, bint punch_holes=True,
                 notice=None, int zero_fd=-1, long long poll_ns=0):
        cdef int err = 0, i
        cdef DeviceQueue queue
        cdef uint32_t total = 0, entries = 1
        if aio not in BLK_AIO_MODES:
            raise ValueError(f"aio must be one of {', '.join(BLK_AIO_MODES)}, not {aio!r}")
        if align & (align - 1):
            raise ValueError(f"align must be a power of two, not {align}")
        self.mode = BLK_AIO_MODES[aio]
        self.io.fd = fd
        self.io.zero_fd = fd if zero_fd < 0 else zero_fd
        self.io.writeback = writeback
        self.io.align = align
        self.io.read_only = read_only
        self.io.punch_holes = punch_holes
        self.io.size = size - size % BLK_SECTOR
        self.io.serial_len = min(len(serial), BLK_ID_BYTES)
        memcpy(self.io.serial, <const char *>serial, self.io.serial_len)
        self.stop_fd = stop_fd
        self.notice = notice
        self.poll_max_ns = max(0, poll_ns)
        self.poll_ns = self.poll_max_ns // 4
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
            self.rings[i].reported = queue.broken
            # Not armed, whatever the queue believes: the first idle round writes the ring's flags (or its event
            # suppression), which a worker stopped while disarmed, or the back-end before a restart, left off.
            self.rings[i].armed = False
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
        for i in range(self.nrings):  # every check first: one that raises leaves nothing held
            queue = self.queues[i]
            if not self.rings[i].broken:
                queue._check()  # rebinds the ring if guest memory changed
        for i in range(self.nrings):
            self.rings[i].held = (<DeviceQueue>self.queues[i]).mem._hold()
            dev_enter(self.rings[i].q)
        with nogil:
            r = self._serve_loop()
        for i in range(self.nrings):
            dev_exit(self.rings[i].q)
            (<DeviceQueue>self.queues[i]).mem._release(&self.rings[i].held)
        return None if r < 0 else r

    # -- the loop --------------------------------------------------------------------------------------------
    cdef int _serve_loop(self) noexcept nogil:
        """-1 once stopped and drained, or the position of a ring found malformed (one at a time: each is
        returned once)."""
        cdef int i, nfds, failed
        cdef uint64_t count
        cdef bint progress
        cdef long long slept
        while True:
            progress = self._reap_completions() > 0
            if not self.stopping:
                for i in range(self.nrings):
                    if not self.rings[i].broken and self._pop_ring(i):
                        progress = True
            self._submit_uring()  # stopping too: what is queued must reach the kernel to complete
            progress = self._finish_answered() or progress
            self._publish_rings()
            failed = self._unreported_failure()
            if failed >= 0:
                return failed
            if self.stopping and self.inflight == 0:
                return -1
            if progress:
                continue
            if not self.stopping and self.inflight == 0 and self._look_briefly():
                continue  # a driver that keeps its ring busy needs no kick, and we need no wake-up
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
            # A refused submission is retried in a millisecond; otherwise nothing happens until an fd says so.
            slept = now_ns()
            if poll(self.fds, nfds, 1 if self.unsubmitted else -1) < 0:
                if errno != EINTR:
                    poll(NULL, 0, 10)  # ENOMEM, say: look at every ring again shortly, never spin
                continue
            if self.inflight == 0:  # a wait for the driver (one for the disk says nothing of it)
                self._adapt_polling(now_ns() - slept)
            if self.fds[0].revents and self.mode == AIO_THREADS:
                c_read(self.io.done_fd, &count, 8)
            if not self.stopping:
                if self.fds[1].revents:
                    self.stopping = True
                nfds = 2
                for i in range(self.nrings):
                    if not self.rings[i].broken:
                        if self.fds[nfds].revents:
                            peer_eventfd_take(self.rings[i].kick)
                            self._disarm_ring(i)
                        nfds += 1

    cdef bint _look_briefly(self) noexcept nogil:
        """Look at the rings for up to ``poll_ns`` before sleeping (with no I/O in flight: a wait for the disk
        is not worth a CPU), True as soon as there is work. A wake-up from poll() costs tens of microseconds on
        an idle machine; this is what keeps a ring with one request at a time from paying it on every request."""
        cdef int i
        cdef long long deadline
        if self.poll_ns == 0:
            return False
        deadline = now_ns() + self.poll_ns
        while True:
            for i in range(self.nrings):
                if not self.rings[i].broken and dev_avail_pending(self.rings[i].q):
                    return True
            if now_ns() >= deadline:
                return False
            sched_yield()  # a thread of the driver's waiting for this CPU gets it (then the look costs nothing)

    cdef void _adapt_polling(self, long long slept) noexcept nogil:
        """After a sleep of ``slept`` ns: poll longer next time if the work came within the longest window,
        shorter if not."""
        if slept <= self.poll_max_ns:
            self.poll_ns = min(self.poll_max_ns, max(2 * self.poll_ns, 1000))
        else:
            self.poll_ns //= 2

    cdef int _unreported_failure(self) noexcept nogil:
        """The position of a ring found malformed and not yet returned by run (now marked returned), or -1."""
        cdef int i
        for i in range(self.nrings):
            if self.rings[i].broken and not self.rings[i].reported:
                self.rings[i].reported = True
                return i
        return -1

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
        """Pop and start the chains available on ring ``i``, up to BLK_POP_ROUND (and as many as there are free
        requests); True if one was. A malformed chain marks the ring broken."""
        cdef BlkRing *ring = &self.rings[i]
        cdef BlkReq *req
        cdef uint16_t head = 0
        cdef int r
        cdef bint popped = False
        cdef uint32_t n = 0
        while self.free_list != NULL and n < BLK_POP_ROUND:
            n += 1
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
            req.notice = NOTICE_NONE
            ring.inflight += 1
            self.inflight += 1
            if blk_parse(self.io, ring.q, &ring.held, req):
                self._issue(req)
            else:
                self._answer(req)
        if popped:
            dev_after_pop(ring.q)
        return popped

    cdef void _answer(self, BlkReq *req) noexcept nogil:
        """``req`` is answered (blk_answer): its status goes to the guest at the end of this round, after those
        answered before it (synchronous I/O returns the chains in the order the driver made them available)."""
        req.next = NULL
        if self.answered_tail != NULL:
            self.answered_tail.next = req
        else:
            self.answered = req
        self.answered_tail = req
        if req.notice != NOTICE_NONE:
            self._tell(req)

    cdef void _tell(self, BlkReq *req) noexcept nogil:
        """Hand ``req``'s notice to the callback: a rare path (a malformed request, a failed I/O), so the GIL is
        taken for it. What the callback raises is printed as unraisable (this is noexcept); the loop goes on."""
        cdef uint8_t notice = req.notice
        req.notice = NOTICE_NONE
        with gil:
            if self.notice is not None:
                self.notice(notice, req.ring, req.head, req.notice_value)

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
        """Hand what is queued to the kernel; if it refuses for now (-EBUSY, -EAGAIN: completions to reap
        first), the entries stay queued and ``unsubmitted`` has the loop try again shortly."""
        cdef int r
        if self.mode != AIO_URING:
            return
        while True:
            r = vring_uring_submit(self.uring)
            if r != -EINTR:
                self.unsubmitted = r < 0
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
                if res == -EAGAIN or res == -EINTR:
                    blk_exec(self.io, r)  # the kernel would not do it now: synchronously, from r.done
                elif res > 0 and r.op != OP_FLUSH and r.done + <uint32_t>res < r.length:
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
            blk_answer(req, BLK_S_IOERR, 1)
            blk_tell(req, NOTICE_IO_ERROR, -req.result)
        else:
            if req.op == OP_READ and req.bounce.iov_base != NULL:
                blk_bounce_copy(req, False)
            blk_answer(req, BLK_S_OK, req.written)
        self._answer(req)

    cdef bint _finish_answered(self) noexcept nogil:
        """Write the status byte of every answered request and put it in its ring's used ring (a broken ring's
        are dropped); True if there were any."""
        cdef BlkReq *req
        cdef BlkRing *ring
        cdef bint any_done = self.answered != NULL
        self.answered_tail = NULL
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
                    peer_eventfd_signal(self.rings[i].call)
