# slabcache/lifecycle.pxi -- how a live slot dies: unlinking, accounting, zeroing, back to the free list.
#
# Owns: free_push, slot_kill (the one place a live object stops being live), slot_evict.
# Invariants: after slot_kill the object is in no index bucket and no queue, the shard's items/data_bytes/
# extra_bytes/slot_bytes no longer count it, the reason's counter (evictions, expirations, purged, deletes)
# went up by one (KILL_REPLACE counts in none), its chunks (if CHAINED) are free too, and for
# KILL_PURGE/KILL_DELETE its bytes are zero -- unless it is pinned (pins.pxi): then its slots stay
# untouched as SLOT_DEAD until its last unpin frees them, zeroed.

cdef inline void free_push(sctx *c, class_state *cs, slot_hdr *s) noexcept nogil:
    s.state = SLOT_FREE
    s.freq = 0
    list_push_head(c.data, &cs.free_head, &cs._pad, s)   # _pad is the free list's (unused) tail
    cs.nfree += 1

cdef void slot_kill(sctx *c, slot_hdr *s, int why, long long pos) noexcept nogil:
    """Unlink a live slot from the index (pos: its bucket; -1: find it; -2: already gone) and its queue,
    account it, zero its bytes if purged or deleted, and put it on its class's free list."""
    cdef class_state *cs = &c.sh.classes[s.cls]
    cdef size_t extra = slot_extra(s)
    cdef bint pinned = pin_held(c, slot_ref(c.data, s))   # pins.pxi: its bytes stay until the last unpin
    ten_note(c.h, s, False)     # the tenant table's accounting (tenants.pxi)
    if pos >= 0:
        idx_unlink(c, <uint32_t>pos, s)
    elif pos == -1:
        idx_unlink(c, idx_bucket(c.sh, s.hash32), s)
    if s.state == SLOT_SMALL:
        list_remove(c.data, &cs.small_head, &cs.small_tail, s)
        cs.nsmall -= 1
    else:
        list_remove(c.data, &cs.main_head, &cs.main_tail, s)
        cs.nmain -= 1
    c.sh.items -= 1
    c.sh.data_bytes -= s.key_len + s.value_len
    c.sh.extra_bytes -= extra
    c.sh.slot_bytes -= c.h.class_size[s.cls]
    if s.nx & CHAINED and not pinned:
        chain_free(c, s, why == KILL_PURGE or why == KILL_DELETE)
    if why == KILL_EVICT:
        c.sh.evictions += 1
    elif why == KILL_EXPIRE:
        c.sh.expirations += 1
    elif why == KILL_PURGE:
        c.sh.purged += 1
    elif why == KILL_DELETE:
        c.sh.deletes += 1
    if pinned:
        dead_bury(c, s)     # unlinked and unaccounted now; zeroed and freed at its last unpin (dead_free)
        return
    if why == KILL_PURGE or why == KILL_DELETE:
        memset((<char*>s) + HDR_SIZE, 0, min(extra + s.key_len + s.value_len,
                                             <size_t>c.h.class_size[s.cls] - HDR_SIZE))
    s.key_len = 0
    s.value_len = 0
    s.nx = 0
    free_push(c, cs, s)

cdef inline void slot_evict(sctx *c, slot_hdr *s, bint to_ghost) noexcept nogil:
    if to_ghost:
        ghost_add(c, sc_hash64(slot_key(s), s.key_len))
    slot_kill(c, s, KILL_EVICT, -1)
