# slabcache/testhooks.pxi -- TEST ONLY: hooks into the mapping, compiled only into edgecore._slabcache_debug.
#
# Owns: class DebugSlabCache(SlabCache), which adds the _test_* methods (and _test_constants) to the
# production class; tests reach it through edgecore.cache.debug_cache_class().
# Invariants: nothing in the production module (ext/slabcache.pyx) includes this file, and nothing here
# changes how the cache itself behaves: a hook only reads the mapping, or holds a lock the way a worker
# killed inside a critical section would.

cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen)


cdef class DebugSlabCache(SlabCache):
    """SlabCache plus the test hooks. See edgecore.cache.debug_cache_class()."""

    def _test_contains(self, needle):
        """TEST ONLY: whether these bytes occur anywhere in the mapping (to check purged bytes are zeroed)."""
        cdef header_t *h = self._hdr()
        if not PyBytes_Check(needle) or PyBytes_GET_SIZE(needle) == 0:
            raise ValueError("needle must be non-empty bytes")
        return memmem(self.base, self.size, PyBytes_AS_STRING(needle), PyBytes_GET_SIZE(needle)) != NULL

    def _test_hold_shard_lock(self, uint32_t shard, int fd, bint scribble=True, int notify_fd=-1):
        """TEST ONLY: take a shard lock, optionally scribble over the shard as a half-finished update would,
        write one byte to notify_fd (if given), then block reading one byte from fd before unlocking.
        A test SIGKILLs the process while it blocks."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        if shard >= h.nshards:
            raise ValueError("no such shard")
        ctx_init(&c, h, shard)
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        if scribble:
            # a half-linked insert: index entries pointing at garbage, lists and counts out of step
            memset(c.index, 0xA5, <size_t>c.sh.nbuckets * 4)
            c.sh.classes[0].free_head = 0x5A5A5A5A
            c.sh.classes[0].nfree = 7
            c.sh.items += 12345
        if notify_fd >= 0:
            sc_write_byte(notify_fd)
        sc_read_byte(fd)
        if scribble:
            shard_wipe(&c)
        shard_unlock(&c)

    def _test_pins(self):
        """TEST ONLY: the pin table entries in use, as (shard, head ref, pid, count) tuples."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef uint32_t i
        cdef int k
        out = []
        for i in range(h.nshards):
            ctx_init(&c, h, i)
            if shard_lock(&c):
                raise CacheError("shard lock unrecoverable")
            for k in range(<int>MAX_PINS):
                if c.sh.pins[k].ref:
                    out.append((i, c.sh.pins[k].ref, c.sh.pins[k].pid, c.sh.pins[k].count))
            shard_unlock(&c)
        return out

    @staticmethod
    def _test_constants():
        """TEST ONLY: the layout constants of slabcache.pxd that Python code mirrors or relies on."""
        return {
            "MAX_TAGS": MAX_TAGS, "MAX_BANS": MAX_BANS, "BAN_PREFIX_MAX": BAN_PREFIX_MAX,
            "HDR_SIZE": HDR_SIZE, "MAX_CLASSES": MAX_CLASSES, "MIN_PAGE": MIN_PAGE, "MAX_PAGE": MAX_PAGE,
            "SC_MAGIC": SC_MAGIC, "SC_VERSION": SC_VERSION, "FLAGS_MAX": 0xFFFF, "MAX_PINS": MAX_PINS,
        }

    def _test_check(self):
        """TEST ONLY: walk every shard under its lock and check the allocator's and the index's invariants;
        returns a list of the violations found (empty when the mapping is consistent). Checked: every carved
        page's slots carry its class; each live object is on exactly one index chain, its own bucket's, and
        the chains hold nothing else; each chunk's head is live and CHAINED and names it at its position;
        every chunk but a chain's last is of the head's class; per shard, items and slot_bytes equal what
        the pages hold, and the queues' and free lists' counts equal the slots in those states."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef uint32_t i, page, j, n, size, cls, b, r, k
        cdef uint64_t items, slot_bytes, walked, dead_bytes, dead_items, pinned_bytes
        cdef int pi
        cdef uint64_t nfree[MAX_CLASSES]
        cdef uint64_t nlive[MAX_CLASSES]
        cdef slot_hdr *s
        cdef slot_hdr *hd
        cdef uint32_t *chain
        cdef char *p
        bad = []
        for i in range(h.nshards):
            ctx_init(&c, h, i)
            if shard_lock(&c):
                raise CacheError("shard lock unrecoverable")
            try:
                items = 0
                slot_bytes = 0
                dead_bytes = 0
                dead_items = 0
                memset(nfree, 0, sizeof(nfree))
                memset(nlive, 0, sizeof(nlive))
                for page in range(c.sh.pages_used):
                    cls = c.pagedesc[page]
                    if cls >= h.nclasses:
                        bad.append("shard %d page %d: class %d" % (i, page, cls))
                        continue
                    size = h.class_size[cls]
                    n = h.class_per_page[cls]
                    p = c.data + <size_t>page * h.page_size
                    for j in range(n):
                        s = <slot_hdr*>(p + <size_t>j * size)
                        if s.cls != cls:
                            bad.append("shard %d page %d slot %d: cls %d in a class %d page" % (i, page, j, s.cls, cls))
                        if s.state == SLOT_FREE:
                            nfree[cls] += 1
                        elif s.state == SLOT_SMALL or s.state == SLOT_MAIN:
                            items += 1
                            nlive[cls] += 1
                            slot_bytes += size
                            b = idx_bucket(c.sh, s.hash32)
                            r = c.index[b]
                            walked = 0
                            while r != 0 and r != slot_ref(c.data, s) and walked <= c.sh.items:
                                r = slot_at(c.data, r).hnext
                                walked += 1
                            if r == 0 or walked > c.sh.items:
                                bad.append("shard %d: a live object is not on its bucket's chain" % i)
                            if <uint32_t>sc_hash64(slot_key(s), s.key_len) != s.hash32:
                                bad.append("shard %d: hash32 does not match the key" % i)
                        elif s.state == SLOT_DEAD:
                            dead_items += 1
                            dead_bytes += size
                            if not pin_held(&c, slot_ref(c.data, s)):
                                bad.append("shard %d: a dead object no pin holds" % i)
                        elif s.state == SLOT_CHUNK:
                            hd = slot_at(c.data, s.prev)
                            if s.prev != 0 and hd.state == SLOT_DEAD:
                                dead_bytes += size
                            else:
                                slot_bytes += size
                            if s.prev == 0 or not (hd.state == SLOT_SMALL or hd.state == SLOT_MAIN
                                                   or hd.state == SLOT_DEAD) \
                                    or not (hd.nx & CHAINED):
                                bad.append("shard %d: a chunk whose head is not a live chained object" % i)
                                continue
                            chain = slot_chain(hd)
                            if s.next >= chain[0] or chain[1 + s.next] != slot_ref(c.data, s):
                                bad.append("shard %d: a chunk its head's chain does not name" % i)
                            elif s.next + 1 < chain[0] and cls != hd.cls:
                                bad.append("shard %d: a middle chunk outside its head's class" % i)
                        elif s.state != SLOT_DRAINED:
                            bad.append("shard %d: slot state %d" % (i, s.state))
                walked = 0
                for b in range(c.sh.nbuckets):
                    r = c.index[b]
                    k = 0
                    while r != 0 and k <= c.sh.items:
                        s = slot_at(c.data, r)
                        if not (s.state == SLOT_SMALL or s.state == SLOT_MAIN) or idx_bucket(c.sh, s.hash32) != b:
                            bad.append("shard %d bucket %d: a chain entry that is not a live object of it" % (i, b))
                            break
                        walked += 1
                        k += 1
                        r = s.hnext
                if walked != c.sh.items or items != c.sh.items:
                    bad.append("shard %d: items %d, in pages %d, on chains %d" % (i, c.sh.items, items, walked))
                if slot_bytes != c.sh.slot_bytes:
                    bad.append("shard %d: slot_bytes %d, in pages %d" % (i, c.sh.slot_bytes, slot_bytes))
                if dead_bytes != c.sh.dead_bytes or dead_items != c.sh.dead_items:
                    bad.append("shard %d: dead %d objects %d bytes, in pages %d objects %d bytes" % (
                        i, c.sh.dead_items, c.sh.dead_bytes, dead_items, dead_bytes))
                pinned_bytes = 0
                k = 0
                for pi in range(<int>MAX_PINS):
                    r = c.sh.pins[pi].ref
                    if r == 0:
                        continue
                    k += 1
                    s = slot_at(c.data, r)
                    if c.sh.pins[pi].count == 0 or not (s.state == SLOT_SMALL or s.state == SLOT_MAIN
                                                        or s.state == SLOT_DEAD):
                        bad.append("shard %d: a pin of a slot in state %d (count %d)" % (
                            i, s.state, c.sh.pins[pi].count))
                        continue
                    if pin_find(&c, r, c.sh.pins[pi].pid) != pi:
                        bad.append("shard %d: two pin entries for one object and process" % i)
                    j = 0
                    while j < <uint32_t>pi:
                        if c.sh.pins[j].ref == r:
                            break
                        j += 1
                    if j == <uint32_t>pi:
                        pinned_bytes += obj_slot_bytes(&c, s)
                if k != c.sh.npins or pinned_bytes != c.sh.pinned_bytes:
                    bad.append("shard %d: npins %d pinned_bytes %d, in the table %d and %d" % (
                        i, c.sh.npins, c.sh.pinned_bytes, k, pinned_bytes))
                for cls in range(h.nclasses):
                    if nfree[cls] != c.sh.classes[cls].nfree:
                        bad.append("shard %d class %d: nfree %d, in pages %d" % (i, cls, c.sh.classes[cls].nfree, nfree[cls]))
                    if nlive[cls] != c.sh.classes[cls].nsmall + c.sh.classes[cls].nmain:
                        bad.append("shard %d class %d: queued %d, live in pages %d" % (
                            i, cls, c.sh.classes[cls].nsmall + c.sh.classes[cls].nmain, nlive[cls]))
            finally:
                shard_unlock(&c)
        return bad

    def _test_timed_purge_tenant(self, tenant, uint32_t budget=PURGE_CHUNK_SLOTS):
        """TEST/BENCH ONLY: purge_tenant(tenant) as ban_walk does it (the same ban, the same shard_walk of
        PURGE_CHUNK_SLOTS slots per shard-lock hold, or `budget`), timing every hold from lock taken to lock released.
        Returns (killed, [each hold's duration in ns])."""
        cdef header_t *h = self._hdr()
        cdef int slot = ban_register(h, BAN_TENANT, tenant, NULL, 0)
        cdef ban_t *b = &h.bans[slot]
        cdef uint64_t killed = 0
        cdef double t0, dt
        cdef list held = []
        cdef uint32_t i, page, sl
        cdef sctx c
        for i in range(h.nshards):
            ctx_init(&c, h, i)
            page = 0
            sl = 0
            while True:
                if shard_lock(&c):
                    raise CacheError("shard lock unrecoverable")
                t0 = sc_now()
                if page >= c.sh.pages_used:
                    shard_unlock(&c)
                    break
                shard_walk(&c, &page, &sl, budget, b, 0.0, &killed)
                dt = sc_now() - t0
                shard_unlock(&c)
                held.append(int(dt * 1e9))
        if global_lock(h, &h.ban_lock) == 0:
            if b.active:
                sc_store32(&b.active, 0)
                sc_sub32(&h.nbans_active, 1)
            sc_mutex_unlock(&h.ban_lock)
        return killed, held
