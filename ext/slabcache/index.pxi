# slabcache/index.pxi -- the per-shard hash index: separate chaining through the slot headers.
#
# Owns: idx_bucket/idx_find/idx_insert/idx_unlink/idx_remove_ref/idx_relink over the shard's bucket heads.
# Invariants: index[b] is the slot ref of the first live object whose hash32 maps to bucket b (0 = empty);
# slot_hdr.hnext links the rest of the chain (0 = end); every live object is on exactly one chain, the
# one of its own hash32, and chunks and free slots are on none. A chain holds any number of objects, so
# the index never limits how many objects a shard holds (buckets are sized from the average-object hint
# only to keep chains short: 4 bytes a bucket). Every walk is bounded by the shard's live item count + 1.
# A match on hash32 is confirmed by comparing the full key bytes.
# (Measured against the linear-probing table it replaces: 8 bytes a bucket at load <= 0.85, so sized for a
# 1 KiB average it capped a shard at data bytes / 903 objects; sized for small objects it would cost 4-5%
# of the budget. Chaining costs 8 bytes in every slot header and 4 bytes a bucket, and never binds.)


cdef inline uint32_t idx_bucket(shard_t *sh, uint32_t h32) noexcept nogil:
    return sc_fastrange32(h32, sh.nbuckets)

cdef inline slot_hdr* idx_find(sctx *c, uint64_t hv, const char *key, size_t klen, uint32_t *pos) noexcept nogil:
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t b = idx_bucket(c.sh, h32)
    cdef uint32_t r = c.index[b]
    cdef uint64_t n
    cdef slot_hdr *s
    for n in range(<uint64_t>c.sh.items + 1):
        if r == 0:
            return NULL
        s = slot_at(c.data, r)
        if s.hash32 == h32 and s.key_len == klen and memcmp(slot_key(s), key, klen) == 0:
            pos[0] = b
            return s
        r = s.hnext
    return NULL

cdef inline void idx_insert(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t b = idx_bucket(c.sh, h32)
    cdef slot_hdr *s = slot_at(c.data, ref)
    s.hash32 = h32
    s.hnext = c.index[b]
    c.index[b] = ref

cdef bint idx_relink(sctx *c, uint32_t b, uint32_t old, uint32_t new) noexcept nogil:
    """Make whatever points at `old` in bucket b's chain point at `new` (0: unlink old). False if absent."""
    cdef uint32_t *link = &c.index[b]
    cdef uint64_t n
    cdef slot_hdr *s
    for n in range(<uint64_t>c.sh.items + 1):
        if link[0] == 0:
            return False
        if link[0] == old:
            link[0] = new if new else slot_at(c.data, old).hnext
            return True
        link = &slot_at(c.data, link[0]).hnext
    return False

cdef inline void idx_unlink(sctx *c, uint32_t b, slot_hdr *s) noexcept nogil:
    idx_relink(c, b, slot_ref(c.data, s), 0)
    s.hnext = 0

cdef inline void idx_remove_ref(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    idx_unlink(c, idx_bucket(c.sh, <uint32_t>hv), slot_at(c.data, ref))
