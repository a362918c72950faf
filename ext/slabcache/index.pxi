# slabcache/index.pxi -- the per-shard hash index: linear probing, backward-shift delete.
#
# Owns: idx_find/idx_insert/idx_remove_at/idx_remove_ref over the shard's bucket array.
# Invariants: entry = (low 32 bits of the key hash) << 32 | slot ref; 0 = empty (refs are never 0); every
# live object has exactly one entry; there are no tombstones (a delete shifts later entries back), so a
# probe stops at the first empty bucket; items <= max_items (85% of buckets) keeps probes short. A match
# on the 32-bit fingerprint is confirmed by comparing the full key bytes.


cdef inline uint32_t idx_home(shard_t *sh, uint32_t h32) noexcept nogil:
    return sc_fastrange32(h32, sh.nbuckets)

cdef inline slot_hdr* idx_find(sctx *c, uint64_t hv, const char *key, size_t klen, uint32_t *pos) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t i = idx_home(c.sh, h32)
    cdef uint32_t n
    cdef uint64_t e
    cdef slot_hdr *s
    for n in range(nb):
        e = c.index[i]
        if e == 0:
            return NULL
        if <uint32_t>(e >> 32) == h32:
            s = slot_at(c.data, <uint32_t>e)
            if s.key_len == klen and memcmp(slot_key(s), key, klen) == 0:
                pos[0] = i
                return s
        i += 1
        if i == nb:
            i = 0
    return NULL

cdef inline void idx_insert(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t i = idx_home(c.sh, h32)
    cdef uint32_t n
    for n in range(nb):
        if c.index[i] == 0:
            c.index[i] = ((<uint64_t>h32) << 32) | ref
            return
        i += 1
        if i == nb:
            i = 0

cdef void idx_remove_at(sctx *c, uint32_t i) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t j = i, k, n
    cdef uint64_t e
    for n in range(nb):
        j += 1
        if j == nb:
            j = 0
        e = c.index[j]
        if e == 0:
            break
        k = idx_home(c.sh, <uint32_t>(e >> 32))
        if (i < k <= j) if i <= j else (i < k or k <= j):
            continue
        c.index[i] = e
        i = j
    c.index[i] = 0

cdef void idx_remove_ref(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t i = idx_home(c.sh, <uint32_t>hv)
    cdef uint32_t n
    cdef uint64_t e
    for n in range(nb):
        e = c.index[i]
        if e == 0:
            return
        if <uint32_t>e == ref:
            idx_remove_at(c, i)
            return
        i += 1
        if i == nb:
            i = 0

