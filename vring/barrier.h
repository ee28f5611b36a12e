/*
 * Memory ordering for the shared rings, in one place (virtio 1.2, 2.7.7 / 2.7.13 and Linux's virtio_ring.c).
 *
 * The driver and the device run on different CPUs (or processes) and share the rings. Each helper is named for
 * the job it does at the point of use; all are GCC/Clang __atomic builtins, so they order both the compiler and
 * the CPU.
 */
#ifndef VRING_BARRIER_H
#define VRING_BARRIER_H

#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vring's C core reads virtio's little-endian rings with native loads: little-endian hosts only"
#endif

/* Publish an index (avail->idx, used->idx): every ring entry and descriptor written before it becomes visible to
 * the other side no later than the index itself (release store; the spec's "write memory barrier"). */
static inline void vring_publish_idx(uint16_t *idx, uint16_t value) {
    __atomic_store_n(idx, value, __ATOMIC_RELEASE);
}

/* Publish a packed-ring descriptor (available, or used): its flags word is stored last, with release, so the
 * address, length and id written before it are visible no later than the flags that make it count. */
static inline void vring_publish_desc_flags(uint16_t *flags, uint16_t value) {
    __atomic_store_n(flags, value, __ATOMIC_RELEASE);
}

/* Observe the other side's index: the ring entries and descriptors it covers are read only after it
 * (acquire load; the spec's "read memory barrier" after reading the index). */
static inline uint16_t vring_observe_idx(const uint16_t *idx) {
    return __atomic_load_n(idx, __ATOMIC_ACQUIRE);
}

/* Observe a packed-ring descriptor's flags: the descriptor's other fields (and the rest of its chain) are read
 * only after them (acquire load; pairs with vring_publish_desc_flags). */
static inline uint16_t vring_observe_desc_flags(const uint16_t *flags) {
    return __atomic_load_n(flags, __ATOMIC_ACQUIRE);
}

/* Store, then load the other side's event field or flags (EVENT_IDX and flag-based suppression): a store-load
 * ordering only a full fence gives. Without it both sides can each miss the other's update and sleep forever. */
static inline void vring_fence_store_then_check(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* A single read or write of a 16-bit shared field (flags, used_event, avail_event, an avail ring entry) with no
 * ordering of its own, but never torn, never repeated and never merged by the compiler. */
static inline uint16_t vring_read_shared_u16(const uint16_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void vring_write_shared_u16(uint16_t *p, uint16_t value) {
    __atomic_store_n(p, value, __ATOMIC_RELAXED);
}

/* Copy a descriptor or used element out of shared memory exactly once. The compiler barrier after the copy stops
 * the compiler from re-reading shared memory in place of the local copy: the checks and the uses that follow all
 * see the same values, whatever the other side writes meanwhile (no double fetch). memcpy, because indirect tables
 * and used elements need not be 8-byte aligned. */
static inline void vring_copy_once(void *dst, const void *shared, size_t n) {
    memcpy(dst, shared, n);
    __asm__ __volatile__("" ::: "memory");
}

/* A descriptor (16 bytes) read once: two relaxed 64-bit loads where the table is 8-byte aligned (every descriptor
 * table, and indirect tables in practice), otherwise one copy behind a compiler barrier. Relaxed atomic loads are
 * never repeated or re-done by the compiler, so the values checked are the values used. */
static inline void vring_load_desc_once(uint64_t words[2], const void *src) {
    if (((uintptr_t)src & 7) == 0) {
        words[0] = __atomic_load_n((const uint64_t *)src, __ATOMIC_RELAXED);
        words[1] = __atomic_load_n((const uint64_t *)src + 1, __ATOMIC_RELAXED);
    } else {
        vring_copy_once(words, src, 16);
    }
}

/* A used element {le32 id; le32 len} read once (4-byte aligned in any used ring): id in the low half. */
static inline uint64_t vring_load_used_elem_once(const void *src) {
    uint64_t v;
    if (((uintptr_t)src & 3) == 0) {
        v = __atomic_load_n((const uint32_t *)src, __ATOMIC_RELAXED);
        v |= (uint64_t)__atomic_load_n((const uint32_t *)src + 1, __ATOMIC_RELAXED) << 32;
    } else {
        vring_copy_once(&v, src, 8);
    }
    return v;
}

/* Keep the stores to an inflight record (vhost-user.rst, "Inflight I/O tracking") in the order the spec gives
 * them: those before reach memory no later than those after, so that a device killed between any two leaves a
 * record the reconnect procedure repairs. A release fence: on x86 it only stops the compiler, the CPU keeps stores
 * in order. */
static inline void vring_order_record(void) {
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

#endif
