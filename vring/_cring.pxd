# C-level declarations of the Cython twin (split and packed rings), so that other Cython modules (benchmarks,
# devices) can reach the engine's structs without going through Python.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "barrier.h" nogil:
    void vring_publish_idx(uint16_t *idx, uint16_t value)
    uint16_t vring_observe_idx(const uint16_t *idx)
    uint16_t vring_observe_desc_flags(const uint16_t *flags)
    void vring_fence_store_then_check()
    uint16_t vring_read_shared_u16(const uint16_t *p)
    void vring_write_shared_u16(uint16_t *p, uint16_t value)
    void vring_copy_once(void *dst, const void *shared, size_t n)
    void vring_load_desc_once(uint64_t *words, const void *src)
    void vring_publish_desc_flags(uint16_t *flags, uint16_t value)
    uint64_t vring_load_used_elem_once(const void *src)
    void vring_order_record()


ctypedef struct vring_desc:          # struct virtq_desc (split)
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t next

ctypedef struct vring_packed_desc:   # struct pvirtq_desc
    uint64_t addr
    uint32_t len
    uint16_t id
    uint16_t flags

ctypedef struct vring_used_elem:     # struct virtq_used_elem
    uint32_t id
    uint32_t len

ctypedef struct vring_event_suppress:  # struct pvirtq_event_suppress
    uint16_t off_wrap                # desc_event_off | desc_event_wrap << 15
    uint16_t flags                   # EVENT_FLAG_ENABLE, _DISABLE or _DESC

# vhost-user's inflight record of one queue (vhost-user.rst, "Inflight I/O tracking"), little-endian as the host.
ctypedef struct InflightSplitHeader:  # QueueRegionSplit, before desc[]
    uint64_t features
    uint16_t version
    uint16_t desc_num
    uint16_t last_batch_head
    uint16_t used_idx

ctypedef struct InflightSplitEntry:  # DescStateSplit
    uint8_t inflight
    uint8_t padding[5]
    uint16_t next
    uint64_t counter

ctypedef struct InflightPackedHeader:  # QueueRegionPacked, before desc[] (29 bytes, padded to 32)
    uint64_t features
    uint16_t version
    uint16_t desc_num
    uint16_t free_head
    uint16_t old_free_head
    uint16_t used_idx
    uint16_t old_used_idx
    uint8_t used_wrap_counter
    uint8_t old_used_wrap_counter
    uint8_t padding[7]

ctypedef struct InflightPackedEntry:  # DescStatePacked
    uint8_t inflight
    uint8_t padding
    uint16_t next
    uint16_t last
    uint16_t num
    uint64_t counter
    uint16_t id
    uint16_t flags
    uint32_t len
    uint64_t addr

ctypedef struct Region:
    uint64_t gpa
    uint64_t size
    unsigned char *host

ctypedef struct TableHead:            # in front of every region table (regions follow it in the same block)
    uint64_t holders                 # batches running on this table without the GIL
    uint64_t retired                 # 1 once replaced while held: the last holder frees it

ctypedef struct MemMap:
    Region *regions                  # a table, immutable once published: a change replaces it whole
    int n
    int hint                         # region of the last hit: most lookups land in the same one

ctypedef struct Seg:                 # one piece of a chain's buffer, inside one region
    uint64_t gpa
    uint64_t offset                  # from the region's start
    uint32_t len
    uint16_t region
    uint8_t writable

ctypedef struct ChainError:          # what a failed check saw, worded later by vring._errors.chain_error
    int reason                       # a CHECK_* code
    uint32_t head
    uint32_t index
    int in_indirect
    uint64_t a
    uint64_t b

# A queue is one struct with the state both layouts share and one struct per layout (as Linux's vring_virtqueue
# keeps its split and packed parts); ``packed`` says which one is live, and only the dispatch layer reads it.

ctypedef struct SplitDevRing:        # the device's split ring
    vring_desc *desc                 # descriptor table
    uint16_t *avail                  # struct virtq_avail: flags, idx, ring[size], used_event
    unsigned char *used              # struct virtq_used: flags, idx, ring[size] of elems, avail_event
    uint16_t avail_shadow            # avail->idx as last read: re-read only once it is used up
    uint16_t signalled_used          # used->idx at the last notify_needed
    uint16_t used_flags              # what we last wrote into used->flags

ctypedef struct PackedDevRing:       # the device's packed ring
    vring_packed_desc *desc          # descriptor ring
    vring_event_suppress *driver_event   # the driver's: interrupt suppression, read
    vring_event_suppress *device_event   # ours: kick suppression, written
    uint8_t avail_wrap               # the driver's wrap counter we expect on available descriptors
    uint8_t used_wrap                # our wrap counter for the used descriptors we write
    uint32_t pushed                  # used slots written since the last notify_needed
    uint16_t *ndesc                  # ring slots each in-flight buffer took
    uint32_t peeked_ndesc            # ring slots of the chain the last peek found

ctypedef struct InflightRecord:    # the device's side of an inflight record (inflight.pxi)
    unsigned char *region            # the record kept on every pop and push; NULL: none
    uint64_t counter                 # the fetch order of the next chain popped
    uint16_t *links                  # our copy of every desc[i].next (never read back from the shared region)
    uint16_t last_batch_head         # split: the list of the last batch of used heads
    uint32_t batch                   # split: used elements written since the last publication
    uint16_t free_head               # packed: the free list (old_free_head too, between two operations)
    uint16_t *entry_of               # packed: buffer id -> its chain's head entry
    uint16_t *last_of                # packed: buffer id -> its chain's last entry
    uint32_t held_slots              # packed: entries (ring slots) of the chains in flight in the record
    vring_packed_desc *copies        # packed: the ring descriptors of the chain the last peek walked
    uint16_t *pending                # heads (buffer ids) the record said were in flight, in counter order
    uint32_t npending
    uint32_t pending_pos             # the next of them to pop again
    uint32_t left                    # npending - pending_pos: while not 0, peek finds pending[pending_pos]
    vring_packed_desc *kept          # packed: the pending chains' descriptors, one chain after the other
    uint32_t *kept_start             # packed: where pending chain k starts in kept (npending + 1 entries)
    vring_packed_desc *scratch       # packed: a pending chain laid out as a ring, for the packed walker

ctypedef struct DevQueue:
    uint32_t size
    uint16_t last_avail              # split: the free-running avail index; packed: the ring slot
    uint16_t used_idx                # likewise for the used side
    bint signalled_valid             # false until the first notify_needed after a reset
    bint notify_enabled
    bint event_idx
    bint indirect
    uint32_t max_indirect
    uint8_t *inflight                # per head (buffer id): HEAD_FREE, _HELD, _MARKED or _PENDING (defs.pxi)
    uint32_t *inflight_wlen          # per head: its chain's writable bytes
    Seg *segs                        # scratch for the chain being walked
    uint32_t segs_cap
    uint32_t nseg
    uint32_t readable_len
    uint32_t writable_len
    bint was_indirect
    uint8_t busy                     # debug builds: a public method is running (one caller at a time)
    bint packed
    SplitDevRing split
    PackedDevRing packed_ring
    InflightRecord rec

ctypedef struct SplitDrvRing:        # the driver's split ring
    vring_desc *desc
    uint16_t *avail
    unsigned char *used
    uint16_t published               # avail->idx as last published
    uint16_t used_shadow             # used->idx as last read: re-read only once it is used up
    uint16_t avail_flags             # what we last wrote into avail->flags

ctypedef struct PackedDrvRing:       # the driver's packed ring
    vring_packed_desc *desc
    vring_event_suppress *driver_event   # ours: interrupt suppression, written
    vring_event_suppress *device_event   # the device's: kick suppression, read
    uint8_t avail_wrap               # our wrap counter for the descriptors we make available
    uint8_t used_wrap                # the device's wrap counter we expect on used descriptors
    uint32_t added                   # slots made available since the last kick_needed
    bint in_order                    # VIRTIO_F_IN_ORDER: one used descriptor may stand for earlier buffers
    uint16_t *order                  # ring buffer of buffer ids in the order they were made available
    uint32_t order_head
    uint32_t order_len
    uint16_t *skip_id                # in-order completions implied by a later used id, not yet returned
    uint32_t *skip_len
    uint32_t skip_head
    uint32_t skip_count

ctypedef struct DrvQueue:
    uint32_t size
    uint16_t *next                   # private free-list links (split: descriptors; packed: buffer ids)
    uint16_t free_head
    uint32_t num_free                # free descriptors (split) or ring slots (packed)
    uint16_t *ndesc                  # per head: descriptors (slots) its chain took
    uint32_t *wlen                   # per head: its chain's writable bytes
    uint8_t *inflight                # per head: 1 until reaped
    uint16_t avail_idx               # split: the free-running avail index; packed: the ring slot
    uint16_t last_used               # likewise for the used side
    bint event_idx
    bint use_indirect
    bint interrupts_enabled
    uint64_t indirect_area
    unsigned char *indirect_host
    uint32_t indirect_max
    uint32_t indirect_threshold
    uint8_t busy                     # debug builds: a public method is running (one caller at a time)
    bint packed
    SplitDrvRing split
    PackedDrvRing packed_ring


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
    cdef dict _retired                # replaced tables still held by a batch: their TableHead -> their regions
    cdef readonly unsigned long long generation
    cdef _rebuild(self, list regions)
    cdef MemMap _hold(self)
    cdef void _release(self, MemMap *held)


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
    cdef DevQueue q
    cdef readonly GuestMemory mem
    cdef readonly object layout
    cdef readonly object features
    cdef readonly bint broken
    cdef readonly object error
    cdef unsigned long long _generation
    cdef object _region_view             # the inflight record's region: our view of it holds it while attached
    cdef int _setup(self, GuestMemory mem, object layout, object features, object max_indirect) except -1
    cdef int _bind(self) except -1
    cdef int _check(self) except -1
    cdef _fail(self, ChainError *err)
    cdef _reset(self)
    cdef object _checked_state(self, object state)
    cdef uint16_t *_ndesc_table(self)
    cdef uint32_t _pending_slots(self)
    cdef object _init_record(self, object view)
    cdef object _recover_record(self, object view)
    cdef _resume(self, object found)
    cdef _detach(self)
    cdef int _restore_indices(self, object state) except -1
    cdef _push_error(self, int code, object head, object written)


cdef class DriverQueue:
    cdef DrvQueue q
    cdef readonly GuestMemory mem
    cdef readonly object layout
    cdef readonly object features
    cdef readonly bint broken
    cdef readonly object error
    cdef readonly object indirect_area
    cdef list _tokens
    cdef uint8_t *_has_token           # 1 where _tokens holds a caller's token (batch paths skip the list)
    cdef unsigned long long _generation
    cdef int _setup(self, GuestMemory mem, object layout, object features, object indirect_area,
                    object indirect_max, object indirect_threshold) except -1
    cdef int _bind(self) except -1
    cdef int _check(self) except -1
    cdef _fail_used(self, int code, uint64_t a, uint64_t b)
    cdef _reset(self)
    cdef object _drop_token(self, uint16_t head)
    cdef _add_error(self, int code, uint32_t bad, const uint64_t *addrs, const long long *lens, uint32_t nseg,
                    list len_list=*)
