# Batch: reusable arrays for the batch calls of both sides.
cdef class Batch:
    """Arrays for up to ``capacity`` chains and ``max_segments`` buffer segments, reused from call to call.

    Device side: ``DeviceQueue.pop_batch`` fills ``heads``, ``nsegs``, ``seg_start``, the ``seg_*`` arrays and the
    ``readable_len`` / ``writable_len`` totals; the device sets ``lens`` (bytes written) and calls ``push_batch``.
    Driver side: fill ``nsegs`` and the ``seg_*`` arrays (chain k takes the next ``nsegs[k]`` segments), call
    ``DriverQueue.add_batch``, which fills ``heads``; ``reap_batch`` fills ``heads`` and ``lens``.
    ``count`` is how many chains the last call filled. The arrays are bound once: batch calls pass only the batch.
    """

    def __init__(self, capacity, max_segments=None):
        self.capacity, self.max_segments, arrays = batch_arrays(capacity, max_segments)
        self.count = 0
        (self.heads, self.lens, self.nsegs, self.seg_start, self.readable_len, self.writable_len, self.seg_addr,
         self.seg_len, self.seg_writable) = arrays
        self.heads_p = <uint16_t *>cnp.PyArray_DATA(self.heads)
        self.lens_p = <uint32_t *>cnp.PyArray_DATA(self.lens)
        self.nsegs_p = <uint32_t *>cnp.PyArray_DATA(self.nsegs)
        self.seg_start_p = <uint32_t *>cnp.PyArray_DATA(self.seg_start)
        self.readable_p = <uint32_t *>cnp.PyArray_DATA(self.readable_len)
        self.writable_p = <uint32_t *>cnp.PyArray_DATA(self.writable_len)
        self.seg_addr_p = <uint64_t *>cnp.PyArray_DATA(self.seg_addr)
        self.seg_len_p = <uint32_t *>cnp.PyArray_DATA(self.seg_len)
        self.seg_writable_p = <uint8_t *>cnp.PyArray_DATA(self.seg_writable)

    # Not on any hot path: the pure-Python twin's code serves both.
    set_chains = BatchMethods.set_chains
    segments = BatchMethods.segments


# The array arguments of the *_many / *_into calls: used as they are when they already have the C layout.
cdef inline cnp.ndarray _int_array(obj, dtype, str name=None, str ctype=None):
    """``obj`` as a 1-D C-contiguous array of ``dtype``: the array itself when it already is one. With ``name``,
    a value the array cannot hold is the ``argument-range`` error of the pure-Python twin, not numpy's own error
    or a silent wrap."""
    if (cnp.PyArray_Check(obj) and (<cnp.ndarray>obj).dtype == dtype and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj)):
        return <cnp.ndarray>obj
    try:
        arr = np.ascontiguousarray(obj, dtype=dtype)
    except OverflowError:
        if name is not None:
            check_fits(name, [int(v) for v in obj], ctype)
        raise
    if name is not None and cnp.PyArray_Check(obj) and not np.can_cast((<cnp.ndarray>obj).dtype, dtype):
        low, high = C_INT_RANGES[ctype]  # the cast may have wrapped a value
        if obj.size and not (low <= int(obj.min()) and int(obj.max()) <= high):
            check_fits(name, [int(v) for v in (<cnp.ndarray>obj).ravel().tolist()], ctype)
    if arr.ndim != 1:
        raise ValueError("expected a one-dimensional sequence")
    return arr


cdef inline bint _is_out_array(obj, int typenum):
    return (cnp.PyArray_Check(obj) and cnp.PyArray_TYPE(<cnp.ndarray>obj) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>obj))
