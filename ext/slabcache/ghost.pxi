# slabcache/ghost.pxi -- the ghost: direct-mapped 16-bit fingerprints of keys evicted from the small queue.
#
# Owns: ghost_add (remember an evicted key) and ghost_take (was it evicted recently? then forget it).
# Invariants: one u16 per bucket, 0 = empty (fingerprints have the low bit set); a collision only makes an
# object start in the main queue instead of the small one, never serves or loses data.

cdef inline uint32_t ghost_pos(shard_t *sh, uint64_t hv) noexcept nogil:
    return sc_fastrange32(<uint32_t>(hv >> 20), sh.nghost)

cdef inline uint16_t ghost_fp(uint64_t hv) noexcept nogil:
    return <uint16_t>((hv >> 4) & 0xFFFF) | 1

cdef inline void ghost_add(sctx *c, uint64_t hv) noexcept nogil:
    c.ghost[ghost_pos(c.sh, hv)] = ghost_fp(hv)

cdef inline bint ghost_take(sctx *c, uint64_t hv) noexcept nogil:
    cdef uint32_t p = ghost_pos(c.sh, hv)
    if c.ghost[p] == ghost_fp(hv):
        c.ghost[p] = 0
        return True
    return False

