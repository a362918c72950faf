# slabcache/api.pxi -- class SlabCache: the extension's Python face (edgecore.cache.Cache subclasses it).
#
# Owns: construction (mmap + layout.pxi), close, argument checking, and the call sequence of each method:
# lookup/store/delete (the hot path, kept whole here so each is one C function), purges (bans.pxi), sweep
# (sweep.pxi), stats/layout (stats.pxi), shard_of, hash64; lookup_pinned and release_pins (pins.pxi).
# Invariants: a method holds at most one shard lock at a time and never runs Python code or raises while
# holding it (lookup copies the value into a new bytes object under the lock; a failed allocation is
# raised after unlocking); a closed cache raises ValueError("cache is closed"); only MemoryError,
# ValueError and edgecore.errors.CacheError escape.

cdef class SlabCache:
    """The extension face; edgecore.cache.Cache subclasses it. See that module for the contract."""

    cdef char *base
    cdef header_t *h
    cdef size_t size
    cdef readonly int owner_pid
    cdef char *map_base         # the mapping: base itself, or a cache file's arena header (arena.pxi)
    cdef size_t map_size
    cdef readonly object arena_info
    cdef Py_ssize_t live_pins       # Pinned objects of this process alive (pins.pxi): close() waits for them

    def __cinit__(self, capacity_bytes, max_object_size=1 << 20, shards=0, avg_object_size=1024, growth=1.0625,
                  int fd=-1, compat=0, bint exclusive=True, bint fresh=False):
        cdef layout_plan p
        cdef void *m
        cdef int rc
        memset(&p, 0, sizeof(p))
        self.base = NULL
        self.h = NULL
        self.map_base = NULL
        self.arena_info = None
        if fd >= 0:
            # a named arena (arena.pxi): ARENA_HDR_BYTES of its header, then the very mapping an anonymous
            # cache of these arguments would have (the same geometry)
            sizes = layout_plan_for(&p, capacity_bytes, max_object_size, shards, avg_object_size, growth)
            addr, attached, why, wiped, left = arena_open(fd, &p, sizes, capacity_bytes, shards, growth,
                                                    <uint64_t>compat, exclusive, fresh)
            self.map_base = <char*><size_t>addr
            self.map_size = ARENA_HDR_BYTES + p.cap
            self.base = self.map_base + ARENA_HDR_BYTES
            self.size = p.cap
            self.owner_pid = getpid()
            self.h = <header_t*>self.base
            self.arena_info = {"attached": attached, "reason": why, "wiped_shards": wiped, "left": left}
            return
        sizes = layout_plan_for(&p, capacity_bytes, max_object_size, shards, avg_object_size, growth)
        m = mmap(NULL, p.cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if m == MAP_FAILED:
            raise MemoryError("mmap of %d bytes failed" % p.cap)
        self.base = <char*>m
        self.size = p.cap
        self.owner_pid = getpid()
        self.h = <header_t*>m
        rc = layout_write(self.base, &p, sizes)
        if rc == -1:
            self._unmap()
            raise CacheError("cannot initialise process-shared robust mutexes")
        if rc == -2:
            self._unmap()
            raise CacheError("layout exceeds the mapping")

    cdef void _unmap(self) noexcept:
        if self.map_base != NULL:
            munmap(self.map_base, self.map_size)
        elif self.base != NULL:
            munmap(self.base, self.size)
        self.map_base = NULL
        self.base = NULL
        self.h = NULL

    def mark_clean(self):
        """A cache file's owner (the supervisor that mapped it last) records a clean stop: every worker has
        stopped. False when this is no cache file or another process owns it now (an upgrade took over)."""
        cdef arena_hdr *a
        if self.map_base == NULL:
            return False
        a = <arena_hdr*>self.map_base
        if a.owner_pid != getpid():
            return False
        a.state = ARENA_CLEAN
        return True

    def arena_state(self):
        """A cache file's header: {"state": "clean"|"in-use", "owner_pid", "attaches", "created_at"}; None
        for an anonymous mapping."""
        cdef arena_hdr *a
        if self.map_base == NULL:
            return None
        a = <arena_hdr*>self.map_base
        return {"state": "clean" if a.state == ARENA_CLEAN else "in-use", "owner_pid": a.owner_pid,
                "attaches": a.attaches, "created_at": a.created_at}

    def __dealloc__(self):
        self._unmap()

    def close(self):
        """Unmap the cache in this process (other processes keep their mapping). While Pinned values of
        this process are alive the cache is closed but stays mapped; the last one to go unmaps it."""
        if self.live_pins:
            self.h = NULL
            return
        self._unmap()

    cdef inline header_t* _hdr(self) except NULL:
        if self.h == NULL:
            raise ValueError("cache is closed")
        return self.h

    # ------------------------------------------------------------ the hot path

    def lookup(self, key, double now, tenant=None):
        """(value, expires, flags) or None. Expired or banned entries are removed. With tenant (an
        int, 0 = no tenant), an entry stored for another tenant is a miss even when the key bytes match."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef const char *kp
        cdef size_t kl
        cdef uint64_t hv
        cdef uint32_t pos
        cdef slot_hdr *s
        cdef PyObject *val
        cdef double expires
        cdef int flags
        cdef uint64_t want = 0
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        if tenant is not None:
            if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
                raise ValueError("tenant must be an int in 0..2**64-1")
            want = tenant
        kp = PyBytes_AS_STRING(key)
        kl = <size_t>PyBytes_GET_SIZE(key)
        hv = sc_hash64(kp, kl)
        ctx_init(&c, h, shard_of_hash(h, hv))
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        s = idx_find(&c, hv, kp, kl, &pos)
        if s == NULL:
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if now >= s.expires:
            slot_kill(&c, s, KILL_EXPIRE, pos)
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if bans_kill(h, s):
            slot_kill(&c, s, KILL_PURGE, pos)
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if tenant is not None and slot_tenant(s) != want:
            c.sh.misses += 1        # the stored tenant is not the request's (tenants.pxi): never served
            shard_unlock(&c)
            return None
        if s.freq < FREQ_MAX:
            s.freq += 1
        c.sh.hits += 1
        if s.nx & CHAINED:
            val = _bytes_from(NULL, s.value_len)
            if val != NULL:
                chain_read(&c, s, PyBytes_AS_STRING(<object>val))
        else:
            val = _bytes_from(slot_key(s) + kl, s.value_len)
        expires = s.expires
        flags = s.flags
        shard_unlock(&c)
        if val == NULL:
            raise MemoryError()
        value = <object>val
        Py_XDECREF(val)
        return (value, expires, flags)

    def lookup_pinned(self, key, double now, Py_ssize_t min_len, tenant=None):
        """As lookup (tenant included), except that a value longer than min_len comes as a Pinned (pins.pxi):
        read in place from the shared mapping, no copy, its object pinned until the Pinned and its views are
        gone. Falls back to a bytes copy when the shard's pin table or pinned-byte bound is full."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef const char *kp
        cdef size_t kl
        cdef uint64_t hv
        cdef uint32_t pos, ref = 0
        cdef slot_hdr *s
        cdef PyObject *val = NULL
        cdef double expires
        cdef int flags
        cdef int32_t pid = 0
        cdef Pinned pv
        cdef uint64_t want = 0
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        if tenant is not None:
            if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
                raise ValueError("tenant must be an int in 0..2**64-1")
            want = tenant
        kp = PyBytes_AS_STRING(key)
        kl = <size_t>PyBytes_GET_SIZE(key)
        hv = sc_hash64(kp, kl)
        ctx_init(&c, h, shard_of_hash(h, hv))
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        s = idx_find(&c, hv, kp, kl, &pos)
        if s == NULL:
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if now >= s.expires:
            slot_kill(&c, s, KILL_EXPIRE, pos)
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if bans_kill(h, s):
            slot_kill(&c, s, KILL_PURGE, pos)
            c.sh.misses += 1
            shard_unlock(&c)
            return None
        if tenant is not None and slot_tenant(s) != want:
            c.sh.misses += 1        # the stored tenant is not the request's (tenants.pxi): never served
            shard_unlock(&c)
            return None
        if s.freq < FREQ_MAX:
            s.freq += 1
        c.sh.hits += 1
        if <Py_ssize_t>s.value_len > min_len:
            pid = getpid()
            if pin_take(&c, s, pid) == 0:
                ref = slot_ref(c.data, s)
        if ref == 0:
            if s.nx & CHAINED:
                val = _bytes_from(NULL, s.value_len)
                if val != NULL:
                    chain_read(&c, s, PyBytes_AS_STRING(<object>val))
            else:
                val = _bytes_from(slot_key(s) + kl, s.value_len)
        expires = s.expires
        flags = s.flags
        shard_unlock(&c)
        if ref == 0:
            if val == NULL:
                raise MemoryError()
            value = <object>val
            Py_XDECREF(val)
            return (value, expires, flags)
        # the pin is ours from here: nothing but the Pinned (or the failure path) may drop it
        try:
            pv = Pinned.__new__(Pinned)
        except BaseException:
            if shard_lock(&c) == 0:
                pin_put(&c, ref, pid)
                shard_unlock(&c)
            raise
        pv.cache = self
        pv.h = h
        pv.data = c.data
        pv.shard = <uint32_t>shard_of_hash(h, hv)
        pv.ref = ref
        pv.pid = pid
        pv.vlen = s.value_len
        pv.first = slot_key(s) + kl
        if s.nx & CHAINED:
            pv.chain = slot_chain(s)
            pv.nfirst = (<char*>s) + h.class_size[s.cls] - pv.first
        else:
            pv.chain = NULL
            pv.nfirst = s.value_len
        self.live_pins += 1
        return (pv, expires, flags)

    def release_pins(self, int pid):
        """Release every pin process `pid` holds (it died: server.py _reap); returns how many. Dead objects
        no other process pins are freed. pid 0 releases every pin (a cache file re-attached after its
        processes are gone)."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef uint32_t i
        cdef uint64_t n = 0
        for i in range(h.nshards):
            ctx_init(&c, h, i)
            if shard_lock(&c):
                raise CacheError("shard lock unrecoverable")
            n += pins_release_pid(&c, pid)
            shard_unlock(&c)
        return n

    def store(self, key, value, double now, double expires, flags=0, tenant=0, tags=(),
              bint only_if_absent=False):
        """Store (replacing any entry for key). False when refused: too large or no room could be made.
        `now` is the time of the store (the entry's own times live in its value: entry.py). With
        only_if_absent, also False when a live entry (expires > now) holds the key: an atomic test-and-set
        across processes (the proxy's cross-worker miss lock)."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef const char *kp
        cdef const char *vp
        cdef size_t kl, vl, need, extra
        cdef uint64_t hv, ten = 0
        cdef uint64_t tagv[MAX_TAGS]
        cdef uint32_t pos, ntags = 0, cls, i, tail_cls
        cdef size_t nchunks
        cdef slot_hdr *s
        cdef slot_hdr *tail
        cdef class_state *cs
        cdef char *dst
        cdef int fl
        cdef tenant_row *trow = NULL
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        if not PyBytes_Check(value):
            if isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            else:
                raise ValueError("value must be bytes")
        if type(flags) is not int or not (0 <= flags <= 0xFFFF):
            raise ValueError("flags must be an int in 0..65535")
        fl = flags
        if tenant:
            if type(tenant) is not int or not (0 < tenant <= 0xFFFFFFFFFFFFFFFF):
                raise ValueError("tenant must be an int in 0..2**64-1")
            ten = tenant
        if tags:
            if len(tags) > MAX_TAGS:
                raise ValueError("at most %d tags" % MAX_TAGS)
            for t in tags:
                if type(t) is not int or not (0 <= t <= 0xFFFFFFFFFFFFFFFF):
                    raise ValueError("tags must be ints in 0..2**64-1")
                tagv[ntags] = t
                ntags += 1
        if not (expires == expires and now == now):
            raise ValueError("times must not be NaN")
        kp = PyBytes_AS_STRING(key)
        kl = <size_t>PyBytes_GET_SIZE(key)
        vp = PyBytes_AS_STRING(value)
        vl = <size_t>PyBytes_GET_SIZE(value)
        if kl == 0 or kl > 0xFFFF:
            raise ValueError("key must be 1..65535 bytes")
        extra = 8 * (ntags + (1 if ten else 0))
        need = HDR_SIZE + extra + kl + vl
        hv = sc_hash64(kp, kl)
        ctx_init(&c, h, shard_of_hash(h, hv))
        if kl + vl > h.max_object or kl > h.page_size // 4:
            if shard_lock(&c) == 0:
                s = idx_find(&c, hv, kp, kl, &pos)     # a refused replacement must not leave the old copy
                if s != NULL:
                    slot_kill(&c, s, KILL_REPLACE, pos)
                c.sh.refused += 1
                shard_unlock(&c)
            return False
        cls = class_for(h, need, HDR_SIZE + extra + kl, &nchunks, &tail_cls)
        if ten:
            trow = ten_find(h, ten, 1)      # the tenant table (tenants.pxi): revoked, quota, accounting
            if trow != NULL and ten_flags(&trow.flags) & TEN_REVOKED:
                return False
            if trow != NULL:
                ten_make_room(h, trow, ten, kl + vl, cls, shard_of_hash(h, hv))
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        s = idx_find(&c, hv, kp, kl, &pos)
        if s != NULL:
            if only_if_absent and s.expires > now:
                shard_unlock(&c)
                return False
            slot_kill(&c, s, KILL_REPLACE, pos)
        if trow != NULL and not ten_room(&c, trow, ten, kl + vl, cls):
            c.sh.refused += 1       # past its quota, and none of its own entries here to make room
            shard_unlock(&c)
            return False
        if c.sh.items >= c.sh.max_items:
            if not evict_in_class(&c, cls):
                for i in range(h.nclasses):
                    if evict_in_class(&c, i):
                        break
        if nchunks:
            demand_note(&c, cls, nchunks)      # the head and the full chunks
            demand_note(&c, tail_cls, 1)       # the last chunk
        else:
            demand_note(&c, cls, 1)
        tail = NULL
        if nchunks:
            # a chain's last chunk first, while nothing is half-built: it may take a page from any class
            tail = slot_alloc(&c, tail_cls)
            for i in range(<uint32_t>EVICT_STEPS_MAX):
                if tail != NULL:
                    break
                # a class of chunks only has nothing of its own to evict: take a free slot of a class up to
                # twice the size, else evict an object of the head's class (freeing its chunks) and look again
                tail = free_slot_in(&c, tail_cls, class_fit(h, min(<size_t>2 * h.class_size[tail_cls],
                                                                   <size_t>h.class_size[cls])))
                if tail != NULL or not evict_in_class(&c, cls):
                    break
            if tail != NULL:
                tail.state = SLOT_CHUNK   # not free, not queued: no eviction or steal can touch it meanwhile
                tail.prev = 0
                c.no_donor = <int>tail_cls
        s = slot_alloc(&c, cls) if (tail != NULL or not nchunks) else NULL
        if s == NULL and tail != NULL:
            free_push(&c, &c.sh.classes[tail_cls], tail)
        if s != NULL and nchunks:
            s.state = SLOT_CHUNK      # not free, not queued: no eviction or steal can touch it meanwhile
            s.prev = 0
            if not chain_alloc(&c, s, nchunks, extra, tail):
                s = NULL
        c.no_donor = -1
        if s == NULL:
            c.sh.refused += 1
            if trow != NULL:
                ten_subfloor64(&trow.bytes, kl + vl)    # the reservation ten_room made
            shard_unlock(&c)
            return False
        s.expires = expires
        s.value_len = <uint32_t>vl
        s.key_len = <uint16_t>kl
        s.flags = <uint16_t>fl
        s.freq = 0
        s.nx = <uint8_t>(ntags | (HAS_TENANT if ten else 0) | (CHAINED if nchunks else 0))
        s.ban_seq = sc_load32(&h.ban_seq)
        dst = (<char*>s) + HDR_SIZE
        if ten:
            memcpy(dst, &ten, 8)
            dst += 8
        if ntags:
            memcpy(dst, tagv, 8 * ntags)
            dst += 8 * ntags
        if nchunks:
            dst += chain_bytes(nchunks)   # chain_alloc wrote the table
            extra += chain_bytes(nchunks) + nchunks * HDR_SIZE
        memcpy(dst, kp, kl)
        if nchunks:
            chain_write(&c, s, dst + kl, vp, vl)
        else:
            memcpy(dst + kl, vp, vl)
        cs = &c.sh.classes[cls]
        if ghost_take(&c, hv):
            s.state = SLOT_MAIN
            list_push_head(c.data, &cs.main_head, &cs.main_tail, s)
            cs.nmain += 1
        else:
            s.state = SLOT_SMALL
            list_push_head(c.data, &cs.small_head, &cs.small_tail, s)
            cs.nsmall += 1
        idx_insert(&c, hv, slot_ref(c.data, s))
        c.sh.items += 1
        c.sh.data_bytes += kl + vl
        c.sh.extra_bytes += extra
        c.sh.slot_bytes += h.class_size[cls]
        if nchunks:
            c.sh.slot_bytes += chain_slot_bytes(&c, s)
        c.sh.stores += 1
        if trow != NULL:
            ten_add64(&trow.items, 1)
        shard_unlock(&c)
        return True

    def delete(self, key):
        """Remove key (its bytes are zeroed). True if it was present."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef uint64_t hv
        cdef uint32_t pos
        cdef slot_hdr *s
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        hv = sc_hash64(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        ctx_init(&c, h, shard_of_hash(h, hv))
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        s = idx_find(&c, hv, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &pos)
        if s != NULL:
            slot_kill(&c, s, KILL_DELETE, pos)
        shard_unlock(&c)
        return s != NULL

    # ------------------------------------------------------------ purges and the sweep
    # ------------------------------------------------------------ purges and the sweep

    def purge_tag(self, tag):
        """Invalidate every entry carrying tag; returns how many."""
        if type(tag) is not int or not (0 <= tag <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tag must be an int in 0..2**64-1")
        cdef header_t *h = self._hdr()
        return ban_walk(h, ban_register(h, BAN_TAG, tag, NULL, 0))

    def purge_tenant(self, tenant):
        """Invalidate every entry of tenant (0 = entries stored without a tenant); returns how many."""
        if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tenant must be an int in 0..2**64-1")
        cdef header_t *h = self._hdr()
        return ban_walk(h, ban_register(h, BAN_TENANT, tenant, NULL, 0))

    def purge_prefix(self, prefix):
        """Invalidate every entry whose key starts with prefix; returns how many."""
        if not PyBytes_Check(prefix):
            raise ValueError("prefix must be bytes")
        if PyBytes_GET_SIZE(prefix) > BAN_PREFIX_MAX:
            raise ValueError("prefix longer than %d bytes" % BAN_PREFIX_MAX)
        cdef header_t *h = self._hdr()
        return ban_walk(h, ban_register(h, BAN_PREFIX, 0, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix)))

    def sweep(self, int budget=1024):
        """Visit up to `budget` slots from a shared cursor: remove expired entries and those covered by an
        active ban (zeroing their bytes). Returns how many entries were removed."""
        return sweep_run(self._hdr(), budget)

    # ------------------------------------------------------------ tenants (slabcache/tenants.pxi)

    def tenant_set(self, tenant, quota=None, revoked=None, name=None, bint explicit=True):
        """Set a tenant's byte quota (0 = none), revoked flag and/or name (bytes, kept once), for every
        process; returns its row (None when explicit=False and the half of the table for tenants seen on
        stores is full)."""
        return ten_set(self._hdr(), tenant, quota, revoked, name, explicit)

    def tenant_rows(self):
        """Every row of the tenant table: id, items, bytes, quota, revoked, explicit, name (or None)."""
        return ten_rows(self._hdr())

    def tenant_revoked(self, tenant):
        """Whether tenant (an id) is revoked."""
        if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tenant must be an int in 0..2**64-1")
        return ten_revoked(self._hdr(), <uint64_t>tenant)

    def purge_any_tenant(self, rest, bint url):
        """Invalidate every tenant's entries whose key past its tenant part is rest (url: or one of its
        variants, rest + "#...") or (not url) starts with rest; returns how many."""
        if not PyBytes_Check(rest):
            raise ValueError("rest must be bytes")
        if PyBytes_GET_SIZE(rest) > BAN_PREFIX_MAX:
            raise ValueError("longer than %d bytes" % BAN_PREFIX_MAX)
        cdef header_t *h = self._hdr()
        return ban_walk(h, ban_register(h, BAN_ANYT_URL if url else BAN_ANYT_PREFIX, 0,
                                        PyBytes_AS_STRING(rest), PyBytes_GET_SIZE(rest)))

    def purge_tag_tenant(self, tag, tenant):
        """Invalidate the entries carrying tag that belong to tenant (an id); returns how many."""
        if type(tag) is not int or not (0 <= tag <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tag must be an int in 0..2**64-1")
        if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tenant must be an int in 0..2**64-1")
        cdef uint64_t tv = tenant
        cdef header_t *h = self._hdr()
        return ban_walk(h, ban_register(h, BAN_TAG_TENANT, tag, <const char*>&tv, 8))

    def soft_purge(self, kind, ident, match, layout, int flags_mask, double now):
        """Mark stale at now every live entry whose flags meet flags_mask and that a purge of `kind` would
        remove; layout: (the value offset of its fresh-until double,): fresh-until becomes at most now (the
        entry format derives the lifetime from it, entry.py). Kinds: "tag"/"tenant" (ident), "prefix" (match, a key
        prefix), "url" (match, a key: it and its variants), "any-prefix"/"any-url" (as purge_any_tenant),
        "tag-tenant" (ident a tag, match the tenant id as 8 little-endian bytes).
        The bytes stay; returns how many entries were marked."""
        cdef ban_t b
        cdef header_t *h = self._hdr()
        kinds = {"tag": BAN_TAG, "tenant": BAN_TENANT, "prefix": BAN_PREFIX, "url": BAN_KEY_URL,
                 "any-prefix": BAN_ANYT_PREFIX, "any-url": BAN_ANYT_URL, "tag-tenant": BAN_TAG_TENANT}
        if kind not in kinds:
            raise ValueError("unknown soft purge kind")
        if type(ident) is not int or not (0 <= ident <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("ident must be an int in 0..2**64-1")
        if not PyBytes_Check(match) or PyBytes_GET_SIZE(match) > BAN_PREFIX_MAX:
            raise ValueError("match must be bytes of at most %d" % BAN_PREFIX_MAX)
        if len(layout) != 1 or type(layout[0]) is not int or not (0 <= layout[0] < 4096):
            raise ValueError("layout must be one offset in 0..4095")
        cdef size_t off = layout[0]
        memset(&b, 0, sizeof(b))
        b.kind = kinds[kind]
        b.seq = 0xFFFFFFFF        # matches every entry, however recently stored
        b.ident = ident
        b.prefix_len = <uint32_t>PyBytes_GET_SIZE(match)
        memcpy(b.prefix, PyBytes_AS_STRING(match), b.prefix_len)
        return soft_walk(h, &b, off, <uint32_t>flags_mask, now)

    # ------------------------------------------------------------ introspection

    def stats(self):
        """Counters summed over all shards (all processes), plus fill per size class."""
        return stats_dict(self._hdr())

    def layout(self):
        """Static geometry: shards, pages, buckets, class sizes."""
        return layout_dict(self._hdr())

    def shard_of(self, key):
        """The shard index a key lives in (for tests and diagnostics)."""
        cdef header_t *h = self._hdr()
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        return shard_of_hash(h, sc_hash64(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))

    @staticmethod
    def hash64(key):
        """The 64-bit key hash (MurmurHash3 x64-128, first half; equals mmh3.hash64(key, signed=False)[0])."""
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
        return sc_hash64(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef void cache_unpinned(object cache) noexcept:
    """A Pinned of this process went (pins.pxi): the last one unmaps a cache closed meanwhile."""
    cdef SlabCache sc = <SlabCache>cache
    sc.live_pins -= 1
    if sc.live_pins == 0 and sc.h == NULL:
        sc._unmap()
