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

    @staticmethod
    def _test_constants():
        """TEST ONLY: the layout constants of slabcache.pxd that Python code mirrors or relies on."""
        return {
            "MAX_TAGS": MAX_TAGS, "MAX_BANS": MAX_BANS, "BAN_PREFIX_MAX": BAN_PREFIX_MAX,
            "HDR_SIZE": HDR_SIZE, "MAX_CLASSES": MAX_CLASSES, "MIN_PAGE": MIN_PAGE, "MAX_PAGE": MAX_PAGE,
            "SC_MAGIC": SC_MAGIC, "SC_VERSION": SC_VERSION, "FLAGS_MAX": 0xFFFF,
        }
