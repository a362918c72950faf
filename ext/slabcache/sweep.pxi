# slabcache/sweep.pxi -- walking slots: the background sweep, and the slot walk purges share with it.
#
# Owns: shard_walk (visit a bounded run of one locked shard's slots, killing what is expired or banned),
# sweep_run (advance the shared sweep cursor by a budget of slots).
# Invariants: a walk holds a shard lock for at most CHUNK_SLOTS slots; the cursor (sweep_shard, sweep_page,
# sweep_slot, sweep_pass) lives in the header under sweep_lock, so workers share one sweep rather than
# each sweeping everything; every completed pass over all shards increments sweep_pass and gives orphaned
# bans (bans.pxi) a chance to retire.

cdef uint32_t shard_walk(sctx *c, uint32_t *page, uint32_t *slot, uint32_t budget, ban_t *ban,
                         double now, uint64_t *killed) noexcept nogil:
    """Visit up to `budget` slots of a locked shard from (page, slot). With `ban`, kill what it covers;
    without, kill expired objects and anything an active ban covers. Returns slots visited; sets
    page past pages_used when the shard is done."""
    cdef uint32_t visited = 0, cls, n, size
    cdef char *p
    cdef slot_hdr *s
    while visited < budget and page[0] < c.sh.pages_used:
        cls = c.pagedesc[page[0]]
        if cls == PAGE_UNASSIGNED:
            page[0] += 1
            slot[0] = 0
            continue
        n = c.h.class_per_page[cls]
        size = c.h.class_size[cls]
        p = c.data + <size_t>page[0] * c.h.page_size
        while slot[0] < n and visited < budget:
            s = <slot_hdr*>(p + <size_t>slot[0] * size)
            slot[0] += 1
            visited += 1
            if s.state == SLOT_FREE or s.state == SLOT_CHUNK or s.state == SLOT_DEAD:
                continue
            if ban != NULL:
                if ban_matches(ban, s):
                    slot_kill(c, s, KILL_PURGE, -1)
                    killed[0] += 1
            elif now >= s.expires:
                slot_kill(c, s, KILL_EXPIRE, -1)
                killed[0] += 1
            elif bans_kill(c.h, s):
                slot_kill(c, s, KILL_PURGE, -1)
                killed[0] += 1
        if slot[0] >= n:
            page[0] += 1
            slot[0] = 0
    return visited


cdef uint64_t sweep_run(header_t *h, int budget) except? 0xFFFFFFFFFFFFFFFF:
    """Visit up to `budget` slots from the shared cursor; returns how many entries were removed."""
    cdef uint64_t killed = 0
    cdef uint32_t visited = 0, step, page, sl
    cdef double now = sc_now()
    cdef bint done
    cdef sctx c
    if budget <= 0:
        return 0
    if global_lock(h, &h.sweep_lock):
        raise CacheError("sweep lock unrecoverable")
    if h.sweep_shard >= h.nshards:
        h.sweep_shard = 0
    while visited < <uint32_t>budget:
        ctx_init(&c, h, h.sweep_shard)
        if shard_lock(&c):
            sc_mutex_unlock(&h.sweep_lock)
            raise CacheError("shard lock unrecoverable")
        page = h.sweep_page
        sl = h.sweep_slot
        step = shard_walk(&c, &page, &sl, min(<uint32_t>CHUNK_SLOTS, <uint32_t>budget - visited),
                          NULL, now, &killed)
        done = page >= c.sh.pages_used
        shard_unlock(&c)
        visited += step + 1
        if done:
            h.sweep_page = 0
            h.sweep_slot = 0
            h.sweep_shard += 1
            if h.sweep_shard >= h.nshards:
                h.sweep_shard = 0
                h.sweep_pass += 1
                if sc_load32(&h.nbans_active):
                    if global_lock(h, &h.ban_lock) == 0:
                        bans_retire_orphans(h)
                        sc_mutex_unlock(&h.ban_lock)
        else:
            h.sweep_page = page
            h.sweep_slot = sl
    sc_mutex_unlock(&h.sweep_lock)
    return killed

