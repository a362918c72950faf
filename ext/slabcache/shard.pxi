# slabcache/shard.pxi -- finding a shard and building a call's view of it (sctx).
#
# Owns: shard_at (the shard struct for an index), ctx_init (base pointers for one call), shard_of_hash
# (which shard a key hash lives in).
# Invariants: a key's shard depends only on the top 32 bits of its hash and the shard count (the index uses
# the low 32 bits for its bucket); shard structs sit shard_stride apart from shards_off.

cdef inline shard_t* shard_at(header_t *h, uint32_t i) noexcept nogil:
    return <shard_t*>((<char*>h) + h.shards_off + <size_t>i * h.shard_stride)

cdef inline void ctx_init(sctx *c, header_t *h, uint32_t i) noexcept nogil:
    c.base = <char*>h
    c.h = h
    c.sh = shard_at(h, i)
    c.data = c.base + c.sh.data_off
    c.index = <uint32_t*>(c.base + c.sh.index_off)
    c.ghost = <uint16_t*>(c.base + c.sh.ghost_off)
    c.pagedesc = <uint8_t*>(c.base + c.sh.pagedesc_off)
    c.no_donor = -1

cdef inline uint32_t shard_of_hash(header_t *h, uint64_t hv) noexcept nogil:
    return sc_fastrange32(<uint32_t>(hv >> 32), h.nshards)
