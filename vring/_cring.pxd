# C-level declarations of the Cython twin, so that other Cython modules (benchmarks, devices) can reach the
# engine's structs without going through Python.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "barrier.h" nogil:
    void vring_publish_idx(uint16_t *idx, uint16_t value)
    uint16_t vring_observe_idx(const uint16_t *idx)
    void vring_fence_store_then_check()
    uint16_t vring_read_shared_u16(const uint16_t *p)
    void vring_write_shared_u16(uint16_t *p, uint16_t value)
    void vring_copy_once(void *dst, const void *shared, size_t n)
    void vring_load_desc_once(uint64_t *words, const void *src)
    void vring_publish_desc_flags(uint16_t *flags, uint16_t value)
    uint64_t vring_load_used_elem_once(const void *src)


ctypedef struct vring_desc:          # struct virtq_desc
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t next

ctypedef struct vring_used_elem:     # struct virtq_used_elem
    uint32_t id
    uint32_t len

ctypedef struct Region:
    uint64_t gpa
    uint64_t size
    unsigned char *host

ctypedef struct MemMap:
    Region *regions
    int n
    int hint                         # region of the last hit: most lookups land in the same one

ctypedef struct Seg:                 # one piece of a chain's buffer, inside one region
    uint64_t gpa
    uint64_t offset                  # from the region's start
    uint32_t len
    uint16_t region
    uint8_t writable

ctypedef struct ChainError:          # what a failed check saw, worded later by vring._errors.chain_error
    int reason
    uint32_t head
    uint32_t index
    int in_indirect
    uint64_t a
    uint64_t b

ctypedef struct SplitDev:
    uint32_t size
    vring_desc *desc
    uint16_t *avail                  # [0] flags, [1] idx, [2 + i] ring[i], [2 + size] used_event
    unsigned char *used              # +0 flags, +2 idx, +4 ring of elems, +4 + 8 * size avail_event
    uint16_t last_avail
    uint16_t avail_shadow             # avail->idx as last read: re-read only once it is used up
    uint16_t used_idx
    uint16_t signalled_used
    uint16_t used_flags
    bint signalled_valid
    bint notify_enabled
    bint event_idx
    bint indirect
    uint32_t max_indirect
    uint8_t *inflight
    uint32_t *inflight_wlen
    Seg *segs                        # scratch for the chain being walked
    uint32_t segs_cap
    uint32_t nseg
    uint32_t readable_len
    uint32_t writable_len
    bint was_indirect
    # Packed rings (the same struct serves both layouts; ``packed`` picks the functions):
    bint packed
    uint8_t avail_wrap                # the driver's wrap counter we expect on available descriptors
    uint8_t used_wrap                 # our wrap counter for the used descriptors we write
    uint32_t pushed                   # used slots written since the last notify_needed
    uint16_t *ndesc                   # ring slots each in-flight buffer took
    uint32_t peeked_ndesc

ctypedef struct SplitDrv:
    uint32_t size
    vring_desc *desc
    uint16_t *avail
    unsigned char *used
    uint16_t *next                   # private free-list links
    uint16_t free_head
    uint32_t num_free
    uint16_t *ndesc
    uint32_t *wlen
    uint8_t *inflight
    uint16_t avail_idx
    uint16_t published
    uint16_t last_used
    uint16_t used_shadow              # used->idx as last read: re-read only once it is used up
    uint16_t avail_flags
    bint event_idx
    bint use_indirect
    bint interrupts_enabled
    uint64_t indirect_area
    unsigned char *indirect_host
    uint32_t indirect_max
    uint32_t indirect_threshold
    # Packed rings:
    bint packed
    uint8_t avail_wrap
    uint8_t used_wrap
    uint32_t added                    # slots made available since the last kick_needed
    bint in_order                     # VIRTIO_F_IN_ORDER: one used descriptor may stand for earlier buffers
    uint16_t *order                   # ring buffer of buffer ids in the order they were made available
    uint32_t order_head
    uint32_t order_len
    uint16_t *skip_id                 # in-order completions implied by a later used id, not yet returned
    uint32_t *skip_len
    uint32_t skip_head
    uint32_t skip_count


cdef class Batch:
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t max_segments
    cdef public Py_ssize_t count
    cdef readonly object heads, lens, nsegs, seg_start, readable_len, writable_len, seg_addr, seg_len, seg_writable
    cdef uint16_t *heads_p
    cdef uint32_t *lens_p
    cdef uint32_t *nsegs_p
    cdef uint32_t *seg_start_p
    cdef uint32_t *readable_p
    cdef uint32_t *writable_p
    cdef uint64_t *seg_addr_p
    cdef uint32_t *seg_len_p
    cdef uint8_t *seg_writable_p


cdef class GuestMemory:
    cdef MemMap map
    cdef list _regions                # [(gpa, size, view, owner)] in the order of map.regions
    cdef list _views                  # the regions' memoryviews, a new list on every change (chains keep theirs)
    cdef readonly unsigned long long generation
    cdef _rebuild(self, list regions)


cdef class Chain:
    cdef readonly int head
    cdef readonly unsigned int readable_len
    cdef readonly unsigned int writable_len
    cdef readonly bint indirect
    cdef Seg *_segs
    cdef Seg _inline[4]
    cdef uint32_t _nseg
    cdef list _region_views
    cdef object _readable
    cdef object _writable
    cdef list _views(self, bint writable)


cdef class DeviceQueue:
    cdef SplitDev q
    cdef readonly GuestMemory mem
    cdef readonly object layout
    cdef readonly object features
    cdef readonly bint broken
    cdef readonly object error
    cdef unsigned long long _generation
    cdef int _bind(self) except -1
    cdef int _check(self) except -1
    cdef _fail(self, ChainError *err)
    cdef _push_error(self, int code, object head, object written)
    cdef _push_many_error(self, int code, object head, object written)


cdef class DriverQueue:
    cdef SplitDrv q
    cdef readonly GuestMemory mem
    cdef readonly object layout
    cdef readonly object features
    cdef readonly bint broken
    cdef readonly object error
    cdef readonly object indirect_area
    cdef list _tokens
    cdef uint8_t *_has_token           # 1 where _tokens holds a caller's token (batch paths skip the list)
    cdef unsigned long long _generation
    cdef int _bind(self) except -1
    cdef int _check(self) except -1
    cdef _fail_used(self, int code, uint64_t a, uint64_t b)
    cdef object _drop_token(self, uint16_t head)
    cdef _add_error(self, int code, uint32_t bad, const uint64_t *addrs, const long long *lens, uint32_t nseg,
                    list len_list=*)
