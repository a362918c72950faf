/* slabcache_support.h -- small C helpers for ext/slabcache.pyx.
 *
 * Owns: MurmurHash3 x64-128 (first 64-bit half, identical to mmh3.hash64(key, 0, signed=False)[0]),
 * process-shared robust mutexes, relaxed/acquire/release atomics on the shared mapping, the wall clock, and
 * two pipe helpers for the debug module's test hooks.
 * Invariants: nothing here allocates, touches Python objects or blocks except sc_mutex_lock/sc_read_byte.
 * Must never: call back into Python, hold a pointer into the mapping beyond the call.
 */
#ifndef EDGECORE_SLABCACHE_SUPPORT_H
#define EDGECORE_SLABCACHE_SUPPORT_H

#define _GNU_SOURCE 1
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

/* ---- MurmurHash3_x64_128, seed 0, returns h1 (Austin Appleby, public domain) ---- */
static inline uint64_t sc_rotl64(uint64_t x, int8_t r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t sc_fmix64(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
    return k;
}
static inline uint64_t sc_hash64(const void *key, size_t len) {
    const uint8_t *data = (const uint8_t *)key;
    const size_t nblocks = len / 16;
    uint64_t h1 = 0, h2 = 0;
    const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
    for (size_t i = 0; i < nblocks; i++) {
        uint64_t k1, k2;
        memcpy(&k1, data + i * 16, 8);
        memcpy(&k2, data + i * 16 + 8, 8);
        k1 *= c1; k1 = sc_rotl64(k1, 31); k1 *= c2; h1 ^= k1;
        h1 = sc_rotl64(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
        k2 *= c2; k2 = sc_rotl64(k2, 33); k2 *= c1; h2 ^= k2;
        h2 = sc_rotl64(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
    }
    const uint8_t *tail = data + nblocks * 16;
    uint64_t k1 = 0, k2 = 0;
    switch (len & 15) {
    case 15: k2 ^= ((uint64_t)tail[14]) << 48; /* fallthrough */
    case 14: k2 ^= ((uint64_t)tail[13]) << 40; /* fallthrough */
    case 13: k2 ^= ((uint64_t)tail[12]) << 32; /* fallthrough */
    case 12: k2 ^= ((uint64_t)tail[11]) << 24; /* fallthrough */
    case 11: k2 ^= ((uint64_t)tail[10]) << 16; /* fallthrough */
    case 10: k2 ^= ((uint64_t)tail[9]) << 8;   /* fallthrough */
    case 9:  k2 ^= ((uint64_t)tail[8]);
             k2 *= c2; k2 = sc_rotl64(k2, 33); k2 *= c1; h2 ^= k2; /* fallthrough */
    case 8:  k1 ^= ((uint64_t)tail[7]) << 56;  /* fallthrough */
    case 7:  k1 ^= ((uint64_t)tail[6]) << 48;  /* fallthrough */
    case 6:  k1 ^= ((uint64_t)tail[5]) << 40;  /* fallthrough */
    case 5:  k1 ^= ((uint64_t)tail[4]) << 32;  /* fallthrough */
    case 4:  k1 ^= ((uint64_t)tail[3]) << 24;  /* fallthrough */
    case 3:  k1 ^= ((uint64_t)tail[2]) << 16;  /* fallthrough */
    case 2:  k1 ^= ((uint64_t)tail[1]) << 8;   /* fallthrough */
    case 1:  k1 ^= ((uint64_t)tail[0]);
             k1 *= c1; k1 = sc_rotl64(k1, 31); k1 *= c2; h1 ^= k1;
    }
    h1 ^= (uint64_t)len; h2 ^= (uint64_t)len;
    h1 += h2; h2 += h1;
    h1 = sc_fmix64(h1); h2 = sc_fmix64(h2);
    h1 += h2;
    return h1;
}

/* Lemire's fast range reduction: maps a uniform 32-bit value onto [0, n). */
static inline uint32_t sc_fastrange32(uint32_t x, uint32_t n) { return (uint32_t)(((uint64_t)x * n) >> 32); }

/* ---- process-shared robust mutexes ---- */
static inline int sc_mutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc) return rc;
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

/* 0: locked normally; 1: locked, but the previous owner died inside (caller must repair then call
 * sc_mutex_consistent); -1: the mutex is unrecoverable (a repair was abandoned); never happens when every
 * EOWNERDEAD is followed by sc_mutex_consistent. */
static inline int sc_mutex_lock(pthread_mutex_t *m) {
    int rc = pthread_mutex_lock(m);
    if (rc == 0) return 0;
    if (rc == EOWNERDEAD) return 1;
    return -1;
}
static inline void sc_mutex_consistent(pthread_mutex_t *m) { pthread_mutex_consistent(m); }
static inline void sc_mutex_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

/* ---- atomics on the shared mapping ---- */
static inline uint32_t sc_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void sc_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t sc_add32(uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t sc_sub32(uint32_t *p, uint32_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_ACQ_REL); }

/* ---- time and processes ---- */
static inline double sc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static inline int sc_pid_alive(int pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

/* ---- test hooks only (ext/slabcache/testhooks.pxi, compiled into edgecore._slabcache_debug alone) ---- */

/* Block until one byte (or EOF) arrives on fd. Returns bytes read or -1. */
static inline int sc_read_byte(int fd) {
    char c;
    ssize_t n;
    do { n = read(fd, &c, 1); } while (n < 0 && errno == EINTR);
    return (int)n;
}

/* Write one byte ('L': "locked") to fd. Returns bytes written or -1. */
static inline int sc_write_byte(int fd) {
    char c = 'L';
    ssize_t n;
    do { n = write(fd, &c, 1); } while (n < 0 && errno == EINTR);
    return (int)n;
}

#endif
