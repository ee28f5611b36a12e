/*
 * Debug builds of the C core (VRING_DEBUG=1 at build time): assertions on the queues' invariants and a check that
 * one caller at a time uses a queue. In a normal build everything here compiles to nothing.
 */
#ifndef VRING_DEBUG_H
#define VRING_DEBUG_H

#include <stdint.h>

#ifdef VRING_DEBUG
#include <stdio.h>
#include <stdlib.h>

#define VRING_DEBUG_BUILD 1

/* A broken invariant is a bug in vring or a corrupted queue: name it and stop at once (abort leaves a core). */
static inline void vring_debug_fail(const char *what) {
    fprintf(stderr, "vring debug build: invariant broken: %s\n", what);
    fflush(stderr);
    abort();
}

#define vring_assert(holds, invariant) ((holds) ? (void)0 : vring_debug_fail(invariant))

/* One caller per queue: the flag is set on entry to a public method and cleared on exit, so finding it set on
 * entry means a second caller (another thread, or a callback re-entering) is inside the same queue. */
static inline void vring_debug_enter(uint8_t *busy, const char *queue) {
    if (__atomic_exchange_n(busy, 1, __ATOMIC_ACQ_REL)) {
        fprintf(stderr, "vring debug build: invariant broken: one caller per queue (a second call entered a %s "
                "while another one runs)\n", queue);
        fflush(stderr);
        abort();
    }
}

static inline void vring_debug_exit(uint8_t *busy) {
    __atomic_store_n(busy, 0, __ATOMIC_RELEASE);
}

#else

/* The arguments are still "used" (no warnings), but the checks only ever run under if (VRING_DEBUG_BUILD). */
#define VRING_DEBUG_BUILD 0
#define vring_assert(holds, invariant) ((void)(holds), (void)(invariant))
#define vring_debug_enter(busy, queue) ((void)(busy), (void)(queue))
#define vring_debug_exit(busy) ((void)(busy))

#endif

#endif
