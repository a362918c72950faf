# slabcache/recovery.pxi -- locking, and recovery when a lock holder died inside its critical section.
#
# Owns: shard_lock/shard_unlock, shard_wipe, global_lock (ban table and sweep cursor), bans_recount.
# Invariants: every shard structure is touched only under that shard's robust, process-shared mutex; a
# shard lock found EOWNERDEAD means the shard may be half-written, so it is wiped (index, ghost, pages,
# classes; traffic counters survive, recoveries += 1) before the mutex is made consistent; the global
# locks guard structures written so that any prefix of an update is valid, only nbans_active is recounted.

cdef void shard_wipe(sctx *c) noexcept nogil:
    """Forget everything in a shard (after its lock holder died mid-update); counters of traffic survive."""
    cdef shard_t *sh = c.sh
    memset(c.index, 0, <size_t>sh.nbuckets * 4)
    memset(c.ghost, 0, <size_t>sh.nghost * 2)
    memset(c.pagedesc, PAGE_UNASSIGNED, sh.npages)
    memset(sh.classes, 0, sizeof(sh.classes))
    sh.items = 0
    sh.data_bytes = 0
    sh.extra_bytes = 0
    sh.slot_bytes = 0
    sh.demand_total = 0
    sh.pages_used = 0
    memset(sh.pins, 0, sizeof(sh.pins))     # pins.pxi: the pinned objects' pages are forgotten too
    sh.npins = 0
    sh.pinned_bytes = 0
    sh.dead_bytes = 0
    sh.dead_items = 0
    sh.recoveries += 1

cdef inline int shard_lock(sctx *c) noexcept nogil:
    cdef int rc = sc_mutex_lock(&c.sh.lock)
    if rc == 0:
        return 0
    if rc == 1:
        shard_wipe(c)
        sc_mutex_consistent(&c.sh.lock)
        return 0
    return -1

cdef inline void shard_unlock(sctx *c) noexcept nogil:
    sc_mutex_unlock(&c.sh.lock)

cdef void bans_recount(header_t *h) noexcept nogil:
    cdef uint32_t n = 0, i
    for i in range(<uint32_t>MAX_BANS):
        if h.bans[i].active:
            n += 1
    sc_store32(&h.nbans_active, n)

cdef int global_lock(header_t *h, pthread_mutex_t *m) noexcept nogil:
    cdef int rc = sc_mutex_lock(m)
    if rc == 1:
        # the ban table and sweep cursor are written so that any prefix of an update is valid;
        # only the active-ban count may be off
        bans_recount(h)
        sc_mutex_consistent(m)
        return 0
    return rc

