# slabcache/tenants.pxi -- the tenant table: per-tenant live bytes and items, byte quotas, the revoked flag;
# purges that cover every tenant's copy of a URL or prefix; soft purges (mark stale, keep the bytes).
#
# Owns: ten_find (a tenant's row, by open addressing on its id), ten_set / ten_rows (the Python face's
# tenant_set / tenant_rows), ten_note (accounting: called where an entry of a tenant becomes live, and from
# slot_kill where it dies), ten_make_room and ten_room (evict the tenant's own entries, of the other shards
# and then of the locked one, and reserve a store's bytes under its quota), ten_strip / ten_ban_matches (the
# BAN_ANYT_*, BAN_KEY_URL and BAN_TAG_TENANT kinds), soft_walk (mark stale in place what a kind covers).
# Invariants:
#   * rows live in the header; a row's id is written once by compare-and-swap (0 -> id) and never freed, so
#     a probe that meets a free row knows the id has none; bytes/items/quota/flags are read and written with
#     atomics (stores in different shards update one row concurrently, without a shared lock);
#   * a row's bytes count key + value bytes of the tenant's live entries exactly (ten_note on every birth and
#     death of an entry carrying HAS_TENANT; a shard wiped by recovery loses its share, see recovery.pxi);
#   * with a quota, a store that would pass it first evicts the same tenant's entries of the other shards (one
#     lock at a time, before it takes its own shard's lock), then reserves its bytes under its shard's lock
#     (compare-and-swap, never above the quota), evicting the tenant's entries of that shard if still needed
#     (at most TEN_WALK_MAX slots visited a shard), and is refused if that does not make room: a tenant past
#     its quota never evicts another tenant's entry to make room;
#   * a revoked tenant's entries are refused by store (the flag is read before any lock is taken);
#   * rows seen only on a store (not set by tenant_set) use at most half the table, so the tenants that the
#     config names or revokes always find a row;
#   * walks hold a shard lock for at most PURGE_CHUNK_SLOTS slots, like ban_walk.
# Must never: take a second lock while holding a shard lock, or call into Python while holding one.

cdef extern from *:
    """
    static inline uint64_t ten_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void ten_store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t ten_add64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline uint64_t ten_sub64(uint64_t *p, uint64_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline void ten_subfloor64(uint64_t *p, uint64_t v) {
        uint64_t cur = __atomic_load_n(p, __ATOMIC_ACQUIRE);
        while (!__atomic_compare_exchange_n(p, &cur, cur > v ? cur - v : 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
    }
    static inline int ten_cas64(uint64_t *p, uint64_t expect, uint64_t want) {
        return __atomic_compare_exchange_n(p, &expect, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    """
    uint64_t ten_load64(const uint64_t *p) noexcept nogil
    void ten_store64(uint64_t *p, uint64_t v) noexcept nogil
    uint64_t ten_add64(uint64_t *p, uint64_t v) noexcept nogil
    uint64_t ten_sub64(uint64_t *p, uint64_t v) noexcept nogil
    int ten_cas64(uint64_t *p, uint64_t expect, uint64_t want) noexcept nogil
    void ten_subfloor64(uint64_t *p, uint64_t v) noexcept nogil

cdef extern from *:
    """
    static inline void ten_or32(uint32_t *p, uint32_t v) { __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL); }
    static inline void ten_and32(uint32_t *p, uint32_t v) { __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL); }
    static inline uint32_t ten_flags(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    """
    void ten_or32(uint32_t *p, uint32_t v) noexcept nogil
    void ten_and32(uint32_t *p, uint32_t v) noexcept nogil
    uint32_t ten_flags(const uint32_t *p) noexcept nogil

cdef enum:
    TEN_WALK_MAX = 256      # slots one store may visit looking for its tenant's own entries to evict
    BAN_KEY_URL = 6         # (soft purges only) the key is prefix, or prefix + "#..." (its variants)
    BAN_TAG_TENANT = 7      # carries tag ident and belongs to the tenant whose id is the 8 prefix bytes

cdef tenant_row* ten_find(header_t *h, uint64_t tid, int create) noexcept nogil:
    """The row of tenant tid, or NULL. create: 0 = find only, 1 = seen on a store (within half the table),
    2 = set explicitly (any free row)."""
    cdef uint32_t i, j, u, used = 0
    cdef uint64_t cur
    if tid == 0:
        return NULL
    for i in range(<uint32_t>MAX_TENANTS):
        j = <uint32_t>((tid + i) & (MAX_TENANTS - 1))
        cur = ten_load64(&h.tenants[j].id)
        if cur == tid:
            return &h.tenants[j]
        if cur != 0:
            continue
        if create == 0:
            return NULL
        if create == 1:
            used = 0
            for u in range(<uint32_t>MAX_TENANTS):
                if ten_load64(&h.tenants[u].id) != 0:
                    used += 1
            if used >= MAX_TENANTS // 2:
                return NULL
        if ten_cas64(&h.tenants[j].id, 0, tid):
            return &h.tenants[j]
        if ten_load64(&h.tenants[j].id) == tid:     # another process registered it meanwhile
            return &h.tenants[j]
    return NULL

cdef inline void ten_note(header_t *h, slot_hdr *s, bint born) noexcept nogil:
    """Account an entry of a tenant becoming live (born) or dying."""
    cdef tenant_row *row
    if not (s.nx & HAS_TENANT):
        return
    row = ten_find(h, slot_tenant(s), 0)
    if row == NULL:
        return
    if born:
        ten_add64(&row.items, 1)
    else:
        # floored at 0: a row set up after some of the tenant's entries were stored never counted them
        ten_subfloor64(&row.items, 1)
        ten_subfloor64(&row.bytes, <uint64_t>s.key_len + s.value_len)

cdef bint ten_reserve(tenant_row *row, uint64_t need) noexcept nogil:
    """Add need to the row's bytes unless that would pass its quota."""
    cdef uint64_t cur, q
    cdef int tries
    for tries in range(64):
        cur = ten_load64(&row.bytes)
        q = ten_load64(&row.quota)
        if q and cur + need > q:
            return False
        if ten_cas64(&row.bytes, cur, cur + need):
            return True
    return False

cdef inline bint ten_fits(tenant_row *row, uint64_t need) noexcept nogil:
    cdef uint64_t q = ten_load64(&row.quota)
    return q == 0 or ten_load64(&row.bytes) + need <= q

cdef bint ten_evict_own(sctx *c, tenant_row *row, uint64_t tid, uint64_t need, uint32_t cls,
                        bint reserve) noexcept nogil:
    """In the locked shard, evict tenant tid's own entries (class cls first, oldest first, at most
    TEN_WALK_MAX slots visited) until need bytes fit under its quota (reserve: and reserve them). True once
    they fit."""
    cdef uint32_t visited = 0, k, cl, ref, prv
    cdef int q
    cdef class_state *cs
    cdef slot_hdr *s
    for k in range(c.h.nclasses):
        cl = cls if k == 0 else (k - 1 if k - 1 < cls else k)
        cs = &c.sh.classes[cl]
        for q in range(2):
            ref = cs.small_tail if q == 0 else cs.main_tail
            while ref and visited < TEN_WALK_MAX:
                s = slot_at(c.data, ref)
                prv = s.prev
                visited += 1
                if (s.nx & HAS_TENANT) and slot_tenant(s) == tid:
                    slot_evict(c, s, False)
                    if ten_reserve(row, need) if reserve else ten_fits(row, need):
                        return True
                ref = prv
        if visited >= TEN_WALK_MAX:
            break
    return False

cdef void ten_make_room(header_t *h, tenant_row *row, uint64_t tid, uint64_t need, uint32_t cls,
                        uint32_t own) noexcept nogil:
    """Before a store of tenant tid takes its shard's lock (`own`): while need bytes would pass its quota,
    evict its own entries in the other shards, one shard lock at a time (at most TEN_WALK_MAX slots each),
    so that a tenant at its quota makes room from its own entries wherever they are."""
    cdef uint32_t i, j
    cdef sctx c
    if ten_fits(row, need) or need > ten_load64(&row.quota):
        return
    for i in range(1, h.nshards):
        j = (own + i) % h.nshards
        ctx_init(&c, h, j)
        if shard_lock(&c):
            continue
        ten_evict_own(&c, row, tid, need, cls, False)
        shard_unlock(&c)
        if ten_fits(row, need):
            return

cdef bint ten_room(sctx *c, tenant_row *row, uint64_t tid, uint64_t need, uint32_t cls) noexcept nogil:
    """Reserve need bytes for a store of tenant tid (whose row is row) in the locked shard: under its quota,
    evicting the tenant's own entries of this shard (its size class first, oldest first) while it would
    pass it (ten_make_room already took what it could from the other shards). False when no room could be
    made that way (the store is refused)."""
    if ten_reserve(row, need):
        return True
    if need > ten_load64(&row.quota):
        return False
    return ten_evict_own(c, row, tid, need, cls, True)

cdef long ten_strip(const unsigned char *k, size_t n) noexcept nogil:
    """Where a key's tenant part ("N:" and N bytes of name) ends, or -1 if it has none."""
    cdef size_t i = 0, ln = 0
    while i < n and i < 6 and k[i] >= 48 and k[i] <= 57:
        ln = ln * 10 + (k[i] - 48)
        i += 1
    if i == 0 or i >= n or k[i] != 58:
        return -1
    if i + 1 + ln > n:
        return -1
    return <long>(i + 1 + ln)

cdef bint ten_key_url(const unsigned char *k, size_t n, const unsigned char *p, size_t pl) noexcept nogil:
    """The key is p, or p + "#..." (a variant of it)."""
    if n < pl or memcmp(k, p, pl) != 0:
        return False
    return n == pl or k[pl] == 35

cdef bint ten_ban_matches(ban_t *b, slot_hdr *s) noexcept nogil:
    cdef const unsigned char *k = <const unsigned char*>slot_key(s)
    cdef long off
    cdef uint64_t tid
    cdef uint32_t i, nt
    cdef uint64_t *tags
    if b.kind == BAN_KEY_URL:
        return ten_key_url(k, s.key_len, b.prefix, b.prefix_len)
    if b.kind == BAN_TAG_TENANT:
        memcpy(&tid, b.prefix, 8)
        if slot_tenant(s) != tid:
            return False
        nt = s.nx & NTAGS_MASK
        tags = slot_tags(s)
        for i in range(nt):
            if tags[i] == b.ident:
                return True
        return False
    off = ten_strip(k, s.key_len)
    if off < 0:
        return False
    if b.kind == BAN_ANYT_PREFIX:
        return s.key_len - off >= b.prefix_len and memcmp(k + off, b.prefix, b.prefix_len) == 0
    if b.kind == BAN_ANYT_URL:
        return ten_key_url(k + off, s.key_len - off, b.prefix, b.prefix_len)
    return False

cdef void ten_name(tenant_row *row, name) noexcept:
    """Record a tenant's name in its row, once (a name longer than TEN_NAME_MAX is not kept)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if sc_load32(&row.name_len) or n == 0 or n > TEN_NAME_MAX:
        return
    memcpy(row.name, PyBytes_AS_STRING(name), n)
    sc_store32(&row.name_len, <uint32_t>n)

cdef object ten_set(header_t *h, tenant, quota, revoked, name=None, bint explicit=True):
    """Set a tenant's quota (bytes; 0 = none) and/or revoked flag and/or name; returns its row as a dict.
    explicit=False (a worker naming a tenant it saw) only uses the half of the table stores may use."""
    cdef tenant_row *row
    if type(tenant) is not int or not (0 < tenant <= 0xFFFFFFFFFFFFFFFF):
        raise ValueError("tenant must be an int in 1..2**64-1")
    if quota is not None and (type(quota) is not int or not (0 <= quota <= 0xFFFFFFFFFFFFFFFF)):
        raise ValueError("quota must be an int in 0..2**64-1")
    if name is not None and not PyBytes_Check(name):
        raise ValueError("name must be bytes")
    row = ten_find(h, <uint64_t>tenant, 2 if explicit else 1)
    if row == NULL:
        if not explicit:
            return None
        raise CacheError("tenant table full (%d tenants)" % MAX_TENANTS)
    if explicit:
        row.explicit = 1
    if name is not None:
        ten_name(row, name)
    if quota is not None:
        ten_store64(&row.quota, <uint64_t>quota)
    if revoked is not None:
        if revoked:
            ten_or32(&row.flags, TEN_REVOKED)
        else:
            ten_and32(&row.flags, ~(<uint32_t>TEN_REVOKED))
    return ten_row_dict(row)


cdef object ten_row_dict(tenant_row *row):
    return {
        "id": ten_load64(&row.id),
        "items": ten_load64(&row.items),
        "bytes": ten_load64(&row.bytes),
        "quota": ten_load64(&row.quota),
        "revoked": bool(ten_flags(&row.flags) & TEN_REVOKED),
        "explicit": bool(row.explicit),
        "name": (<bytes>row.name[:sc_load32(&row.name_len)]) if sc_load32(&row.name_len) else None,
    }

cdef list ten_rows(header_t *h):
    cdef uint32_t i
    out = []
    for i in range(<uint32_t>MAX_TENANTS):
        if ten_load64(&h.tenants[i].id) != 0:
            out.append(ten_row_dict(&h.tenants[i]))
    return out

cdef inline bint ten_revoked(header_t *h, uint64_t tid) noexcept nogil:
    cdef tenant_row *row = ten_find(h, tid, 0)
    return row != NULL and (ten_flags(&row.flags) & TEN_REVOKED) != 0

cdef uint64_t soft_walk(header_t *h, ban_t *b, size_t off, uint32_t fmask, double now) \
        except? 0xFFFFFFFFFFFFFFFF:
    """For every live entry b covers (b is not registered: its seq matches every entry) whose flags meet
    fmask, make it stale at now: the fresh-until double at value offset `off` becomes at most now.
    PURGE_CHUNK_SLOTS slots per shard-lock hold. Returns how many entries
    were marked."""
    cdef uint64_t marked = 0
    cdef uint32_t i, page, sl, visited, cls, n, size
    cdef double v
    cdef size_t need = 8 + off
    cdef char *p
    cdef char *vp
    cdef slot_hdr *s
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
            visited = 0
            while visited < PURGE_CHUNK_SLOTS and page < c.sh.pages_used:
                cls = c.pagedesc[page]
                if cls == PAGE_UNASSIGNED:
                    page += 1
                    sl = 0
                    continue
                n = c.h.class_per_page[cls]
                size = c.h.class_size[cls]
                p = c.data + <size_t>page * c.h.page_size
                while sl < n and visited < PURGE_CHUNK_SLOTS:
                    s = <slot_hdr*>(p + <size_t>sl * size)
                    sl += 1
                    visited += 1
                    if s.state == SLOT_FREE or s.state == SLOT_CHUNK or s.state == SLOT_DRAINED:
                        continue
                    if s.value_len < need or not (s.flags & fmask) or not ban_matches(b, s):
                        continue
                    vp = slot_key(s) + s.key_len     # the value's first bytes are in the head slot
                    memcpy(&v, vp + off, 8)
                    if v > now:
                        memcpy(vp + off, &now, 8)
                    marked += 1
                if sl >= n:
                    page += 1
                    sl = 0
            shard_unlock(&c)
    return marked
