# slabcache/bans.pxi -- purges by tag / tenant / key prefix: the shared ban table.
#
# Owns: ban_register (publish a ban), ban_walk (kill what it covers in every shard, then retire it),
# ban_matches, bans_kill (does an active ban cover this object?), bans_retire_orphans.
# Invariants: a ban is published (active written last, with release order) under ban_lock and gets a
# sequence number above every object stored before it, so it only ever matches older objects; while a ban
# is active, lookups and the sweep treat what it covers as gone, so a purge is complete for readers the moment
# it is registered; the purging process retires its ban after walking every shard; a ban whose owner died
# is retired once a full sweep pass began after it was registered (registered_pass + 2).

cdef bint ban_matches(ban_t *b, slot_hdr *s) noexcept nogil:
    cdef uint32_t i, nt
    cdef uint64_t *tags
    if b.seq <= s.ban_seq:
        return False
    if b.kind == BAN_TAG:
        nt = s.nx & NTAGS_MASK
        tags = slot_tags(s)
        for i in range(nt):
            if tags[i] == b.ident:
                return True
        return False
    if b.kind == BAN_TENANT:
        return slot_tenant(s) == b.ident
    if b.kind == BAN_PREFIX:
        return s.key_len >= b.prefix_len and memcmp(slot_key(s), b.prefix, b.prefix_len) == 0
    return ten_ban_matches(b, s)      # the kinds of tenants.pxi (every tenant's copy of a URL or prefix)

cdef bint bans_kill(header_t *h, slot_hdr *s) noexcept nogil:
    """True if an active ban registered after this object was stored covers it."""
    cdef uint32_t i
    if sc_load32(&h.nbans_active) == 0:
        return False
    for i in range(<uint32_t>MAX_BANS):
        if sc_load32(&h.bans[i].active) and ban_matches(&h.bans[i], s):
            return True
    return False

cdef void bans_retire_orphans(header_t *h) noexcept nogil:
    """Bans whose purging process died are complete once a full sweep pass began after them."""
    cdef uint32_t i
    for i in range(<uint32_t>MAX_BANS):
        if h.bans[i].active and not sc_pid_alive(h.bans[i].owner_pid) \
                and h.sweep_pass >= h.bans[i].registered_pass + 2:
            sc_store32(&h.bans[i].active, 0)
            sc_sub32(&h.nbans_active, 1)


cdef int ban_register(header_t *h, uint32_t kind, uint64_t ident, const char *prefix, size_t plen) except -1:
    """Publish a ban; returns its slot in the ban table."""
    cdef uint32_t i, slot = MAX_BANS
    cdef ban_t *b
    if global_lock(h, &h.ban_lock):
        raise CacheError("ban lock unrecoverable")
    for i in range(<uint32_t>MAX_BANS):
        if not h.bans[i].active:
            slot = i
            break
    if slot == MAX_BANS:
        bans_retire_orphans(h)
        for i in range(<uint32_t>MAX_BANS):
            if not h.bans[i].active:
                slot = i
                break
    if slot == MAX_BANS:
        sc_mutex_unlock(&h.ban_lock)
        raise CacheError("too many purges in progress")
    b = &h.bans[slot]
    b.kind = kind
    b.ident = ident
    b.prefix_len = <uint32_t>plen
    if plen:
        memcpy(b.prefix, prefix, plen)
    b.owner_pid = getpid()
    b.registered_pass = h.sweep_pass
    b.seq = sc_add32(&h.ban_seq, 1)
    sc_store32(&b.active, 1)
    sc_add32(&h.nbans_active, 1)
    sc_mutex_unlock(&h.ban_lock)
    return <int>slot

cdef uint64_t ban_walk(header_t *h, int slot) except? 0xFFFFFFFFFFFFFFFF:
    """Kill every object the ban in `slot` covers, PURGE_CHUNK_SLOTS slots per shard-lock hold (a tenant purge
    of a million entries holds no lock for long: bench/tenant_purge.py); retire the ban.
    Returns how many objects were killed."""
    cdef ban_t *b = &h.bans[slot]
    cdef uint64_t killed = 0
    cdef uint32_t i, page, sl
    cdef sctx c
    for i in range(h.nshards):
        ctx_init(&c, h, i)
        page = 0
        sl = 0
        while True:
            if shard_lock(&c):
                raise CacheError("shard lock unrecoverable")
            if page >= c.sh.pages_used:
                shard_unlock(&c)
                break
            shard_walk(&c, &page, &sl, PURGE_CHUNK_SLOTS, b, 0.0, &killed)
            shard_unlock(&c)
    if global_lock(h, &h.ban_lock) == 0:
        if b.active:
            sc_store32(&b.active, 0)
            sc_sub32(&h.nbans_active, 1)
        sc_mutex_unlock(&h.ban_lock)
    return killed
