# Constants of the C core, the check codes its C functions return, the GIL helpers of the batch loops, and the
# spec's vring_need_event.

cdef extern from *:
    """
    #ifndef VRING_CFLAGS
    #define VRING_CFLAGS ""
    #endif
    #ifdef __VERSION__
    #define VRING_COMPILER_VERSION __VERSION__
    #else
    #define VRING_COMPILER_VERSION "unknown"
    #endif
    #define VRING_U32_MAX 0xFFFFFFFFull
    """
    const char *VRING_CFLAGS
    const char *VRING_COMPILER_VERSION
    const uint64_t U32_MAX "VRING_U32_MAX"

# How this extension was compiled (reported by `vring info` and the benchmarks).
BUILD_CFLAGS = VRING_CFLAGS.decode()
COMPILER = VRING_COMPILER_VERSION.decode()

cdef extern from "_cring/debug.h" nogil:
    enum: VRING_DEBUG_BUILD          # 1 in a VRING_DEBUG build, else 0 (and the calls below are no-ops)
    void vring_assert(bint holds, const char *invariant)
    void vring_debug_enter(uint8_t *busy, const char *queue)
    void vring_debug_exit(uint8_t *busy)

# What a device queue's per-head table (DevQueue.inflight) holds for each head (buffer id).
cdef enum:
    HEAD_FREE = 0
    HEAD_HELD = 1                    # popped, not pushed
    HEAD_MARKED = 2                  # held, and seen already in the push batch being checked (dev_push_all)
    HEAD_PENDING = 3                 # an inflight record said it was in flight: popped again before anything new

# Ring constants, named as in vring._features (checked below).
cdef enum:
    DESC_F_NEXT = 1                  # struct virtq_desc / pvirtq_desc flags
    DESC_F_WRITE = 2
    DESC_F_INDIRECT = 4
    PACKED_DESC_F_AVAIL = 1 << 7
    PACKED_DESC_F_USED = 1 << 15
    EVENT_FLAG_ENABLE = 0            # struct pvirtq_event_suppress flags
    EVENT_FLAG_DISABLE = 1
    EVENT_FLAG_DESC = 2
    AVAIL_F_NO_INTERRUPT = 1         # avail->flags
    USED_F_NO_NOTIFY = 1             # used->flags
    DESC_SIZE = 16
    MAX_QUEUE_SIZE = 32768

assert (DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, EVENT_FLAG_ENABLE,
        EVENT_FLAG_DISABLE, EVENT_FLAG_DESC, AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY, DESC_SIZE, MAX_QUEUE_SIZE) == (
    _features.DESC_F_NEXT, _features.DESC_F_WRITE, _features.DESC_F_INDIRECT, _features.PACKED_DESC_F_AVAIL,
    _features.PACKED_DESC_F_USED, _features.EVENT_FLAG_ENABLE, _features.EVENT_FLAG_DISABLE,
    _features.EVENT_FLAG_DESC, _features.AVAIL_F_NO_INTERRUPT, _features.USED_F_NO_NOTIFY, _features.DESC_SIZE,
    _features.MAX_QUEUE_SIZE)

# The device side's checks of what the driver wrote, one code per MalformedChain reason (vring._errors).
cdef enum:
    CHECK_AVAIL_INDEX_JUMP = 1
    CHECK_HEAD_OUT_OF_RANGE
    CHECK_HEAD_IN_FLIGHT
    CHECK_NEXT_OUT_OF_RANGE
    CHECK_CHAIN_LOOP
    CHECK_INDIRECT_NOT_NEGOTIATED
    CHECK_NESTED_INDIRECT
    CHECK_INDIRECT_WITH_NEXT
    CHECK_INDIRECT_LEN_ZERO
    CHECK_INDIRECT_LEN_UNALIGNED
    CHECK_INDIRECT_TOO_LARGE
    CHECK_INDIRECT_OUTSIDE_MEMORY
    CHECK_READABLE_AFTER_WRITABLE
    CHECK_ZERO_LENGTH
    CHECK_CHAIN_TOO_LARGE
    CHECK_BUFFER_OUTSIDE_MEMORY
    CHECK_BUFFER_ID_OUT_OF_RANGE
    CHECK_BUFFER_ID_IN_FLIGHT
    CHECK_CHAIN_FLAGS
    CHECK_CHAIN_TOO_LONG
    CHECK_SLOTS_IN_FLIGHT
    CHAIN_NO_MEMORY                  # not a check: the scratch for the chain's segments could not grow

CHAIN_CHECK_CODES = {
    "avail-index-jump": CHECK_AVAIL_INDEX_JUMP,
    "head-out-of-range": CHECK_HEAD_OUT_OF_RANGE,
    "head-in-flight": CHECK_HEAD_IN_FLIGHT,
    "next-out-of-range": CHECK_NEXT_OUT_OF_RANGE,
    "chain-loop": CHECK_CHAIN_LOOP,
    "indirect-not-negotiated": CHECK_INDIRECT_NOT_NEGOTIATED,
    "nested-indirect": CHECK_NESTED_INDIRECT,
    "indirect-with-next": CHECK_INDIRECT_WITH_NEXT,
    "indirect-len-zero": CHECK_INDIRECT_LEN_ZERO,
    "indirect-len-unaligned": CHECK_INDIRECT_LEN_UNALIGNED,
    "indirect-too-large": CHECK_INDIRECT_TOO_LARGE,
    "indirect-outside-memory": CHECK_INDIRECT_OUTSIDE_MEMORY,
    "readable-after-writable": CHECK_READABLE_AFTER_WRITABLE,
    "zero-length": CHECK_ZERO_LENGTH,
    "chain-too-large": CHECK_CHAIN_TOO_LARGE,
    "buffer-outside-memory": CHECK_BUFFER_OUTSIDE_MEMORY,
    "buffer-id-out-of-range": CHECK_BUFFER_ID_OUT_OF_RANGE,
    "buffer-id-in-flight": CHECK_BUFFER_ID_IN_FLIGHT,
    "chain-flags": CHECK_CHAIN_FLAGS,
    "chain-too-long": CHECK_CHAIN_TOO_LONG,
    "slots-in-flight": CHECK_SLOTS_IN_FLIGHT,
}

# The driver side's checks of what the device wrote, one code per MalformedUsed reason.
cdef enum:
    CHECK_USED_INDEX_JUMP = 1
    CHECK_USED_ID_OUT_OF_RANGE
    CHECK_USED_ID_NOT_IN_FLIGHT
    CHECK_USED_LEN_TOO_LARGE
    CHECK_USED_WRAP

USED_CHECK_CODES = {
    "used-index-jump": CHECK_USED_INDEX_JUMP,
    "used-id-out-of-range": CHECK_USED_ID_OUT_OF_RANGE,
    "used-id-not-in-flight": CHECK_USED_ID_NOT_IN_FLIGHT,
    "used-len-too-large": CHECK_USED_LEN_TOO_LARGE,
    "used-wrap": CHECK_USED_WRAP,
}

cdef dict _CHAIN_REASON = {code: reason for reason, code in CHAIN_CHECK_CODES.items()}
cdef dict _USED_REASON = {code: reason for reason, code in USED_CHECK_CODES.items()}


def _chain_check_error(int code, head, index, in_indirect, a=0, b=0):
    """The MalformedChain for chain check ``code`` (a value of CHAIN_CHECK_CODES), worded by vring._errors."""
    return chain_error(_CHAIN_REASON[code], head, index, in_indirect, a, b)


def _used_check_error(int code, position, a=0, b=0):
    """The MalformedUsed for used check ``code`` (a value of USED_CHECK_CODES), worded by vring._errors."""
    return used_error(_USED_REASON[code], position, a, b)


# A caller's mistake found in C, each named after its key in vring._errors.CALLER_ERRORS.
cdef enum:
    ADD_EMPTY_CHAIN = 1              # "empty-chain"
    ADD_BUFFER_LENGTH                # "buffer-length"
    ADD_BUFFER_ORDER                 # "buffer-order"
    ADD_BUFFER_OUTSIDE_MEMORY        # "buffer-outside-memory"
    ADD_WRITABLE_TOO_LARGE           # "writable-too-large"
    ADD_CHAIN_LONGER_THAN_QUEUE      # "chain-longer-than-queue"
    ADD_NO_FREE_DESCRIPTORS          # "no-free-descriptors"

cdef enum:
    PUSH_HEAD_NOT_HELD = 1           # "head-not-held"
    PUSH_WRITTEN_TOO_LARGE           # "written-too-large"
    PUSH_PUSHED_TWICE                # "pushed-twice"

# Batch loops shorter than this keep the GIL: releasing and taking it back costs more than such a loop.
cdef enum:
    NOGIL_MIN = 64


cdef inline PyThreadState *gil_release_if(bint release) noexcept:
    return PyEval_SaveThread() if release else NULL


cdef inline void gil_restore(PyThreadState *ts) noexcept:
    if ts != NULL:
        PyEval_RestoreThread(ts)


cdef inline bint need_event(uint16_t event, uint16_t new, uint16_t old) noexcept nogil:
    """The spec's vring_need_event: did the index pass ``event`` going from ``old`` to ``new`` (mod 2**16)?"""
    return <uint16_t>(new - event - 1) < <uint16_t>(new - old)
