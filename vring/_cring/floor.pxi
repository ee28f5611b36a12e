# The C floor: the request cycle with no Python in the loop (benchmarks measure the Python-facing APIs against it).

cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


def run_cycles(DriverQueue drv not None, DeviceQueue dev not None, Batch shape not None, long long n,
               int batch=32):
    """Run ``n`` request cycles entirely in C and return the nanoseconds they took.

    Each round the driver adds ``batch`` chains shaped like chain 0 of ``shape`` (drv_add), publishes and checks
    for a kick (drv_kick_needed); the device pops them (dev_pop), returns each with its writable length
    (dev_put_used), publishes the used index once and checks for an interrupt (dev_notify_needed); the driver
    reaps them (drv_reap_one). The same functions, on the same rings, as the Python-facing calls use.
    """
    cdef ChainError err
    cdef uint16_t head = 0
    cdef uint32_t written = 0, bad = 0, nseg = shape.nsegs_p[0]
    cdef uint64_t a = 0, b = 0
    cdef long long done = 0, start, elapsed
    cdef int k, r = 0, round_size
    cdef MemMap held
    if batch < 1 or nseg < 1 or nseg > shape.max_segments:
        raise ValueError("need batch >= 1 and a first chain in shape")
    if dev.mem is not drv.mem or dev.layout != drv.layout:
        raise ValueError("the driver and the device must share one ring")
    drv._check()
    dev._check()
    drv_enter(&drv.q)
    dev_enter(&dev.q)
    held = drv.mem._hold()  # one GuestMemory (checked above); regions may change meanwhile
    with nogil:
        start = now_ns()
        while done < n:
            round_size = <int>min(<long long>batch, n - done)
            for k in range(round_size):
                r = drv_add(&drv.q, &held, shape.seg_addr_p, shape.seg_len_p, shape.seg_writable_p, nseg,
                            &head, &bad)
                if r:
                    break
            if r:
                break
            drv_kick_needed(&drv.q)
            for k in range(round_size):
                r = dev_pop(&dev.q, &held, &head, &err)
                if r != 1:
                    break
                dev_put_used(&dev.q, head, dev.q.writable_len)
            if r != 1:
                break
            dev_after_pop(&dev.q)
            dev_publish(&dev.q)
            dev_notify_needed(&dev.q)
            for k in range(round_size):
                r = drv_reap_one(&drv.q, &head, &written, &a, &b)
                if r != 1:
                    break
            if r != 1:
                break
            drv_after_reap(&drv.q)
            r = 0
            done += round_size
        elapsed = now_ns() - start
    drv.mem._release(&held)
    dev_exit(&dev.q)
    drv_exit(&drv.q)
    if done < n:
        raise RuntimeError(f"the C cycle stopped after {done} requests (code {r}): is the ring in use or too small?")
    return elapsed
