# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# slabcache.pyx -- the sharded, shared-memory slab cache (edgecore._slabcache).
#
# Owns: one MAP_SHARED|MAP_ANONYMOUS mapping of exactly the configured size, holding the header, the ban
# table, per-shard locks/counters/index/ghost/page tables, and the slab pages with every object's bytes.
# Invariants:
#   * nothing outside the mapping is needed to use it: a worker forked after construction sees the same cache;
#   * every shard structure is touched only under that shard's robust, process-shared mutex; a mutex found
#     EOWNERDEAD means the shard may be half-written, so the shard is wiped before the mutex is made consistent;
#   * a lookup compares the full key bytes; a hash collision never serves another key's bytes;
#   * one eviction does at most EVICT_STEPS_MAX reinsertion steps; purges and sweeps hold a shard lock for at
#     most CHUNK_SLOTS slots; bytes of purged/deleted objects are zeroed before the slot is reused.
# Must never: call back into Python while holding a lock, let any exception other than MemoryError,
# ValueError or an edgecore.errors type escape, or store a pointer in the mapping.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from slabcache cimport *  # the layout contract (ext/slabcache.pxd)
from libc.string cimport memcpy, memcmp, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.ref cimport PyObject, Py_XDECREF
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport getpid

from edgecore.errors import CacheError

cdef extern from "<sys/mman.h>":
    int MAP_ANONYMOUS

cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen)

cdef extern from "Python.h":
    PyObject* _bytes_from "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)

# A call's view of one shard: base pointers computed once per call (never stored in the mapping).
ctypedef struct sctx:
    char *base
    header_t *h
    shard_t *sh
    char *data
    uint64_t *index
    uint16_t *ghost
    uint8_t *pagedesc

cdef enum:
    KILL_EVICT = 0
    KILL_EXPIRE = 1
    KILL_PURGE = 2      # bytes are zeroed
    KILL_DELETE = 3     # bytes are zeroed
    KILL_REPLACE = 4


# ---------------------------------------------------------------- slots

cdef inline slot_hdr* slot_at(char *data, uint32_t ref) noexcept nogil:
    return <slot_hdr*>(data + ((<size_t>(ref - 1)) << 3))

cdef inline uint32_t slot_ref(char *data, slot_hdr *s) noexcept nogil:
    return <uint32_t>(((<char*>s) - data) >> 3) + 1

cdef inline size_t slot_tagbytes(slot_hdr *s) noexcept nogil:
    return 8 * <size_t>((s.nx & NTAGS_MASK) + (1 if (s.nx & HAS_TENANT) else 0))

cdef inline uint32_t* slot_chain(slot_hdr *s) noexcept nogil:
    """[nchunks, ref1, ref2, ...] of a CHAINED object."""
    return <uint32_t*>((<char*>s) + HDR_SIZE + slot_tagbytes(s))

cdef inline size_t chain_bytes(size_t nchunks) noexcept nogil:
    return (4 + 4 * nchunks + 7) & ~(<size_t>7)

cdef inline size_t slot_extra(slot_hdr *s) noexcept nogil:
    cdef size_t e = slot_tagbytes(s)
    if s.nx & CHAINED:
        e += chain_bytes(slot_chain(s)[0])
    return e

cdef inline char* slot_key(slot_hdr *s) noexcept nogil:
    return (<char*>s) + HDR_SIZE + slot_extra(s)

cdef inline uint64_t slot_tenant(slot_hdr *s) noexcept nogil:
    cdef uint64_t t = 0
    if s.nx & HAS_TENANT:
        memcpy(&t, (<char*>s) + HDR_SIZE, 8)
    return t

cdef inline uint64_t* slot_tags(slot_hdr *s) noexcept nogil:
    return <uint64_t*>((<char*>s) + HDR_SIZE + (8 if (s.nx & HAS_TENANT) else 0))


# ---------------------------------------------------------------- shard context

cdef inline shard_t* shard_at(header_t *h, uint32_t i) noexcept nogil:
    return <shard_t*>((<char*>h) + h.shards_off + <size_t>i * h.shard_stride)

cdef inline void ctx_init(sctx *c, header_t *h, uint32_t i) noexcept nogil:
    c.base = <char*>h
    c.h = h
    c.sh = shard_at(h, i)
    c.data = c.base + c.sh.data_off
    c.index = <uint64_t*>(c.base + c.sh.index_off)
    c.ghost = <uint16_t*>(c.base + c.sh.ghost_off)
    c.pagedesc = <uint8_t*>(c.base + c.sh.pagedesc_off)

cdef inline uint32_t shard_of_hash(header_t *h, uint64_t hv) noexcept nogil:
    return sc_fastrange32(<uint32_t>(hv >> 32), h.nshards)


# ---------------------------------------------------------------- intrusive lists (head = newest)

cdef inline void list_push_head(char *data, uint32_t *head, uint32_t *tail, slot_hdr *s) noexcept nogil:
    cdef uint32_t r = slot_ref(data, s)
    s.prev = 0
    s.next = head[0]
    if head[0]:
        slot_at(data, head[0]).prev = r
    else:
        tail[0] = r
    head[0] = r

cdef inline void list_remove(char *data, uint32_t *head, uint32_t *tail, slot_hdr *s) noexcept nogil:
    if s.prev:
        slot_at(data, s.prev).next = s.next
    else:
        head[0] = s.next
    if s.next:
        slot_at(data, s.next).prev = s.prev
    else:
        tail[0] = s.prev
    s.prev = 0
    s.next = 0


# ---------------------------------------------------------------- index: linear probing, backward-shift delete
# entry = (low 32 bits of the key hash) << 32 | slot ref; 0 = empty (refs are never 0).

cdef inline uint32_t idx_home(shard_t *sh, uint32_t h32) noexcept nogil:
    return sc_fastrange32(h32, sh.nbuckets)

cdef inline slot_hdr* idx_find(sctx *c, uint64_t hv, const char *key, size_t klen, uint32_t *pos) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t i = idx_home(c.sh, h32)
    cdef uint32_t n
    cdef uint64_t e
    cdef slot_hdr *s
    for n in range(nb):
        e = c.index[i]
        if e == 0:
            return NULL
        if <uint32_t>(e >> 32) == h32:
            s = slot_at(c.data, <uint32_t>e)
            if s.key_len == klen and memcmp(slot_key(s), key, klen) == 0:
                pos[0] = i
                return s
        i += 1
        if i == nb:
            i = 0
    return NULL

cdef inline void idx_insert(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t h32 = <uint32_t>hv
    cdef uint32_t i = idx_home(c.sh, h32)
    cdef uint32_t n
    for n in range(nb):
        if c.index[i] == 0:
            c.index[i] = ((<uint64_t>h32) << 32) | ref
            return
        i += 1
        if i == nb:
            i = 0

cdef void idx_remove_at(sctx *c, uint32_t i) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t j = i, k, n
    cdef uint64_t e
    for n in range(nb):
        j += 1
        if j == nb:
            j = 0
        e = c.index[j]
        if e == 0:
            break
        k = idx_home(c.sh, <uint32_t>(e >> 32))
        if (i < k <= j) if i <= j else (i < k or k <= j):
            continue
        c.index[i] = e
        i = j
    c.index[i] = 0

cdef void idx_remove_ref(sctx *c, uint64_t hv, uint32_t ref) noexcept nogil:
    cdef uint32_t nb = c.sh.nbuckets
    cdef uint32_t i = idx_home(c.sh, <uint32_t>hv)
    cdef uint32_t n
    cdef uint64_t e
    for n in range(nb):
        e = c.index[i]
        if e == 0:
            return
        if <uint32_t>e == ref:
            idx_remove_at(c, i)
            return
        i += 1
        if i == nb:
            i = 0


# ---------------------------------------------------------------- ghost: direct-mapped 16-bit fingerprints

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


# ---------------------------------------------------------------- slot lifecycle

cdef inline void free_push(sctx *c, class_state *cs, slot_hdr *s) noexcept nogil:
    s.state = SLOT_FREE
    s.freq = 0
    list_push_head(c.data, &cs.free_head, &cs._pad, s)   # _pad is the free list's (unused) tail
    cs.nfree += 1

cdef void chain_free(sctx *c, slot_hdr *head, bint zero) noexcept nogil:
    """Return a chained object's chunks to the largest class's free list (zeroed when purging)."""
    cdef uint32_t *chain = slot_chain(head)
    cdef uint32_t n = chain[0], i
    cdef class_state *cs = &c.sh.classes[head.cls]
    cdef slot_hdr *k
    for i in range(n):
        k = slot_at(c.data, chain[1 + i])
        if zero:
            memset((<char*>k) + HDR_SIZE, 0, c.h.page_size - HDR_SIZE)
        free_push(c, cs, k)
    c.sh.slot_bytes -= <uint64_t>n * c.h.page_size
    c.sh.extra_bytes -= <uint64_t>n * HDR_SIZE

cdef void slot_kill(sctx *c, slot_hdr *s, int why, long long pos) noexcept nogil:
    """Unlink a live slot from the index (pos: its bucket; -1: find it; -2: already gone) and its queue,
    account it, zero its bytes if purged or deleted, and put it on its class's free list."""
    cdef class_state *cs = &c.sh.classes[s.cls]
    cdef uint64_t hv
    cdef size_t extra = slot_extra(s)
    if pos >= 0:
        idx_remove_at(c, <uint32_t>pos)
    elif pos == -1:
        hv = sc_hash64(slot_key(s), s.key_len)
        idx_remove_ref(c, hv, slot_ref(c.data, s))
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
    if s.nx & CHAINED:
        chain_free(c, s, why == KILL_PURGE or why == KILL_DELETE)
    if why == KILL_EVICT:
        c.sh.evictions += 1
    elif why == KILL_EXPIRE:
        c.sh.expirations += 1
    elif why == KILL_PURGE:
        c.sh.purged += 1
    elif why == KILL_DELETE:
        c.sh.deletes += 1
    if why == KILL_PURGE or why == KILL_DELETE:
        memset((<char*>s) + HDR_SIZE, 0, min(extra + s.key_len + s.value_len,
                                             <size_t>c.h.class_size[s.cls] - HDR_SIZE))
    s.key_len = 0
    s.value_len = 0
    s.nx = 0
    free_push(c, cs, s)

cdef inline void slot_evict(sctx *c, slot_hdr *s, bint to_ghost) noexcept nogil:
    cdef uint64_t hv = sc_hash64(slot_key(s), s.key_len)
    if to_ghost:
        ghost_add(c, hv)
    idx_remove_ref(c, hv, slot_ref(c.data, s))
    slot_kill(c, s, KILL_EVICT, -2)

cdef int evict_in_class(sctx *c, uint32_t cls) noexcept nogil:
    """S3-FIFO over one (shard, class): evict exactly one object. Returns 0 when the class holds none."""
    cdef class_state *cs = &c.sh.classes[cls]
    cdef uint32_t steps = 0, total
    cdef slot_hdr *s
    while True:
        total = cs.nsmall + cs.nmain
        if total == 0:
            return 0
        if cs.nsmall > 0 and (cs.nsmall * 10 >= total or cs.nmain == 0):
            s = slot_at(c.data, cs.small_tail)
            if s.freq > 0 and steps < EVICT_STEPS_MAX:
                # accessed while probationary: promote to the main queue, clearing its bits
                list_remove(c.data, &cs.small_head, &cs.small_tail, s)
                cs.nsmall -= 1
                s.freq = 0
                s.state = SLOT_MAIN
                list_push_head(c.data, &cs.main_head, &cs.main_tail, s)
                cs.nmain += 1
                steps += 1
                continue
            slot_evict(c, s, True)
            return 1
        s = slot_at(c.data, cs.main_tail)
        if s.freq > 0 and steps < EVICT_STEPS_MAX:
            # second chance: reinsert at the head with one bit less
            list_remove(c.data, &cs.main_head, &cs.main_tail, s)
            s.freq -= 1
            list_push_head(c.data, &cs.main_head, &cs.main_tail, s)
            steps += 1
            continue
        slot_evict(c, s, False)
        return 1


# ---------------------------------------------------------------- pages: assignment and rebalancing

cdef void page_carve(sctx *c, uint32_t page, uint32_t cls) noexcept nogil:
    cdef class_state *cs = &c.sh.classes[cls]
    cdef uint32_t size = c.h.class_size[cls], n = c.h.class_per_page[cls], j
    cdef char *p = c.data + <size_t>page * c.h.page_size
    cdef slot_hdr *s
    c.pagedesc[page] = <uint8_t>cls
    cs.npages += 1
    # push in reverse so the free list hands out slots in address order
    j = n
    while j > 0:
        j -= 1
        s = <slot_hdr*>(p + <size_t>j * size)
        s.cls = <uint8_t>cls
        s.key_len = 0
        s.value_len = 0
        s.nx = 0
        free_push(c, cs, s)

cdef inline uint32_t page_of(sctx *c, uint32_t ref) noexcept nogil:
    return <uint32_t>((<size_t>(ref - 1) << 3) / c.h.page_size)

cdef inline bint slot_hot(sctx *c, slot_hdr *s) noexcept nogil:
    """Worth keeping through a page steal: in the main queue or referenced since insertion."""
    if s.state == SLOT_CHUNK:
        s = slot_at(c.data, s.prev)
    return s.state == SLOT_MAIN or s.freq > 0

cdef uint32_t page_hot_count(sctx *c, uint32_t page, uint32_t cls) noexcept nogil:
    cdef uint32_t j, n = c.h.class_per_page[cls], size = c.h.class_size[cls], hot = 0
    cdef char *p = c.data + <size_t>page * c.h.page_size
    cdef slot_hdr *s
    for j in range(n):
        s = <slot_hdr*>(p + <size_t>j * size)
        if s.state != SLOT_FREE and slot_hot(c, s):
            hot += 1
    return hot

cdef void slot_move(sctx *c, slot_hdr *x, slot_hdr *t, uint32_t size) noexcept nogil:
    """Relocate a live slot (object or chunk) into free slot t of the same class, fixing every reference."""
    cdef class_state *cs = &c.sh.classes[x.cls]
    cdef uint32_t xr = slot_ref(c.data, x), tr = slot_ref(c.data, t), i, n, h32
    cdef uint32_t *chain
    cdef uint64_t hv
    cdef uint32_t nb = c.sh.nbuckets
    memcpy(t, x, size)
    if x.state == SLOT_CHUNK:
        chain = slot_chain(slot_at(c.data, x.prev))
        chain[1 + x.next] = tr
        x.state = SLOT_FREE
        return
    if t.prev:
        slot_at(c.data, t.prev).next = tr
    elif x.state == SLOT_SMALL:
        cs.small_head = tr
    else:
        cs.main_head = tr
    if t.next:
        slot_at(c.data, t.next).prev = tr
    elif x.state == SLOT_SMALL:
        cs.small_tail = tr
    else:
        cs.main_tail = tr
    if t.nx & CHAINED:
        chain = slot_chain(t)
        for i in range(chain[0]):
            slot_at(c.data, chain[1 + i]).prev = tr
    hv = sc_hash64(slot_key(t), t.key_len)
    h32 = <uint32_t>hv
    i = idx_home(c.sh, h32)
    for n in range(nb):
        if c.index[i] == 0:
            break
        if <uint32_t>c.index[i] == xr:
            c.index[i] = ((<uint64_t>h32) << 32) | tr
            break
        i += 1
        if i == nb:
            i = 0
    x.state = SLOT_FREE

cdef slot_hdr* free_slot_outside(sctx *c, uint32_t cls, uint32_t page, slot_hdr *keep) noexcept nogil:
    """A free slot of cls outside `page`, evicting (S3-FIFO) if need be; NULL if none within the bound or if
    `keep` itself got evicted meanwhile. Free slots met inside `page` are parked as SLOT_DRAINED."""
    cdef class_state *cs = &c.sh.classes[cls]
    cdef slot_hdr *t
    cdef uint32_t tries
    for tries in range(2 * EVICT_STEPS_MAX):
        if keep.state == SLOT_FREE:
            return NULL
        if cs.free_head == 0:
            if not evict_in_class(c, cls):
                return NULL
            continue
        t = slot_at(c.data, cs.free_head)
        list_remove(c.data, &cs.free_head, &cs._pad, t)
        cs.nfree -= 1
        if page_of(c, cs.free_head if False else slot_ref(c.data, t)) == page:
            t.state = SLOT_DRAINED
            continue
        if keep.state == SLOT_FREE:
            free_push(c, cs, t)
            return NULL
        return t
    return NULL

cdef void page_steal(sctx *c, uint32_t donor, uint32_t cls) noexcept nogil:
    """Give one page of `donor` to `cls`: of the pages holding the donor's oldest objects, the one with the
    fewest hot objects; its hot objects are moved into the donor's other pages (evicting its coldest objects
    there, by S3-FIFO), its cold ones are evicted."""
    cdef class_state *ds = &c.sh.classes[donor]
    cdef uint32_t page, j, n = c.h.class_per_page[donor], size = c.h.class_size[donor]
    cdef uint32_t cand[3]
    cdef uint32_t ncand = 0, k, best = 0xFFFFFFFF, hot
    cdef char *p
    cdef slot_hdr *s
    cdef slot_hdr *t
    if ds.small_tail:
        cand[ncand] = page_of(c, ds.small_tail)
        ncand += 1
    if ds.main_tail:
        cand[ncand] = page_of(c, ds.main_tail)
        ncand += 1
    if ds.free_head:
        cand[ncand] = page_of(c, ds.free_head)
        ncand += 1
    page = cand[0]
    for k in range(ncand):
        hot = page_hot_count(c, cand[k], donor)
        if hot < best:
            best = hot
            page = cand[k]
    p = c.data + <size_t>page * c.h.page_size
    for j in range(n):
        s = <slot_hdr*>(p + <size_t>j * size)
        if s.state == SLOT_DRAINED:
            continue
        if s.state != SLOT_FREE:
            if slot_hot(c, s) and ds.npages > 1:
                t = free_slot_outside(c, donor, page, s)
                if t != NULL:
                    slot_move(c, s, t, size)
                    continue
            if s.state == SLOT_CHUNK:
                slot_evict(c, slot_at(c.data, s.prev), False)     # frees the whole chain, this chunk too
            elif s.state != SLOT_FREE:
                slot_evict(c, s, False)
            if s.state == SLOT_DRAINED:
                continue
        list_remove(c.data, &ds.free_head, &ds._pad, s)
        ds.nfree -= 1
    ds.npages -= 1
    c.sh.steals += 1
    page_carve(c, page, cls)

cdef int pick_donor(sctx *c, uint32_t cls, bint strict) noexcept nogil:
    """The class holding the most pages beyond its share of recent demand; -1 if none qualifies."""
    cdef shard_t *sh = c.sh
    cdef double scale, surplus, best = -1e300, mine
    cdef int d, best_d = -1
    cdef class_state *cs
    scale = (<double>sh.pages_used) / (<double>sh.demand_total) if sh.demand_total else 0.0
    if strict:
        cs = &sh.classes[cls]
        mine = (<double>cs.demand) * scale - <double>cs.npages
        if mine < 1.0:
            return -1
    for d in range(c.h.nclasses):
        if <uint32_t>d == cls:
            continue
        cs = &sh.classes[d]
        if cs.npages == 0:
            continue
        surplus = <double>cs.npages - (<double>cs.demand) * scale
        if strict and surplus < 1.0:
            continue
        if surplus > best:
            best = surplus
            best_d = d
    return best_d

cdef slot_hdr* slot_alloc(sctx *c, uint32_t cls) noexcept nogil:
    cdef shard_t *sh = c.sh
    cdef class_state *cs = &sh.classes[cls]
    cdef int donor
    cdef slot_hdr *s
    if cs.free_head == 0:
        if sh.pages_used < sh.npages:
            page_carve(c, sh.pages_used, cls)
            sh.pages_used += 1
        else:
            donor = pick_donor(c, cls, cs.npages != 0)
            if donor >= 0:
                page_steal(c, <uint32_t>donor, cls)
            elif not evict_in_class(c, cls):
                return NULL
    if cs.free_head == 0:
        return NULL
    s = slot_at(c.data, cs.free_head)
    list_remove(c.data, &cs.free_head, &cs._pad, s)
    cs.nfree -= 1
    return s

cdef void demand_note(sctx *c, uint32_t cls, size_t nslots) noexcept nogil:
    cdef shard_t *sh = c.sh
    cdef uint64_t size = <uint64_t>c.h.class_size[cls] * nslots
    cdef uint32_t d
    sh.classes[cls].demand += size
    sh.demand_total += size
    if sh.demand_total > 4 * <uint64_t>sh.npages * c.h.page_size:
        sh.demand_total = 0
        for d in range(c.h.nclasses):
            sh.classes[d].demand >>= 1
            sh.demand_total += sh.classes[d].demand


cdef bint chain_alloc(sctx *c, slot_hdr *head, size_t n, size_t tagbytes) noexcept nogil:
    """Allocate n chunks of the largest class for `head` and write its chain table (after HDR + tagbytes).
    On failure every slot taken, the head too, goes back to the free list."""
    cdef uint32_t cls = head.cls, i, j
    cdef slot_hdr *k
    cdef uint32_t href = slot_ref(c.data, head)
    cdef uint32_t *chain = <uint32_t*>((<char*>head) + HDR_SIZE + tagbytes)
    for i in range(n):
        k = slot_alloc(c, cls)
        if k == NULL:
            for j in range(i):
                free_push(c, &c.sh.classes[cls], slot_at(c.data, chain[1 + j]))
            free_push(c, &c.sh.classes[cls], head)
            return False
        k.state = SLOT_CHUNK
        k.prev = href
        k.next = i
        chain[1 + i] = slot_ref(c.data, k)
    chain[0] = <uint32_t>n
    return True

cdef void chain_write(sctx *c, slot_hdr *head, char *dst, const char *src, size_t n) noexcept nogil:
    """Copy a value into a chained object: what fits after the key in the head, then chunk by chunk."""
    cdef uint32_t *chain = slot_chain(head)
    cdef size_t first = (<char*>head) + c.h.page_size - dst
    cdef size_t per = c.h.page_size - HDR_SIZE, take
    cdef uint32_t i = 0
    take = first if first < n else n
    memcpy(dst, src, take)
    src += take
    n -= take
    while n:
        take = per if per < n else n
        memcpy((<char*>slot_at(c.data, chain[1 + i])) + HDR_SIZE, src, take)
        src += take
        n -= take
        i += 1

cdef void chain_read(sctx *c, slot_hdr *head, char *out) noexcept nogil:
    cdef uint32_t *chain = slot_chain(head)
    cdef char *src = slot_key(head) + head.key_len
    cdef size_t first = (<char*>head) + c.h.page_size - src
    cdef size_t n = head.value_len, per = c.h.page_size - HDR_SIZE, take
    cdef uint32_t i = 0
    take = first if first < n else n
    memcpy(out, src, take)
    out += take
    n -= take
    while n:
        take = per if per < n else n
        memcpy(out, (<char*>slot_at(c.data, chain[1 + i])) + HDR_SIZE, take)
        out += take
        n -= take
        i += 1


# ---------------------------------------------------------------- locking and recovery

cdef void shard_wipe(sctx *c) noexcept nogil:
    """Forget everything in a shard (after its lock holder died mid-update); counters of traffic survive."""
    cdef shard_t *sh = c.sh
    memset(c.index, 0, <size_t>sh.nbuckets * 8)
    memset(c.ghost, 0, <size_t>sh.nghost * 2)
    memset(c.pagedesc, PAGE_UNASSIGNED, sh.npages)
    memset(sh.classes, 0, sizeof(sh.classes))
    sh.items = 0
    sh.data_bytes = 0
    sh.extra_bytes = 0
    sh.slot_bytes = 0
    sh.demand_total = 0
    sh.pages_used = 0
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
    for i in range(MAX_BANS):
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


# ---------------------------------------------------------------- bans (purge by tag / tenant / prefix)

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
    return False

cdef bint bans_kill(header_t *h, slot_hdr *s) noexcept nogil:
    """True if an active ban registered after this object was stored covers it."""
    cdef uint32_t i
    if sc_load32(&h.nbans_active) == 0:
        return False
    for i in range(MAX_BANS):
        if sc_load32(&h.bans[i].active) and ban_matches(&h.bans[i], s):
            return True
    return False

cdef void bans_retire_orphans(header_t *h) noexcept nogil:
    """Bans whose purging process died are complete once a full sweep pass began after them."""
    cdef uint32_t i
    for i in range(MAX_BANS):
        if h.bans[i].active and not sc_pid_alive(h.bans[i].owner_pid) \
                and h.sweep_pass >= h.bans[i].registered_pass + 2:
            sc_store32(&h.bans[i].active, 0)
            sc_sub32(&h.nbans_active, 1)


# ---------------------------------------------------------------- walking slots (purge, sweep)

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
            if s.state == SLOT_FREE or s.state == SLOT_CHUNK:
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


# ---------------------------------------------------------------- layout

cdef size_t round_up(size_t v, size_t a) noexcept nogil:
    return (v + a - 1) // a * a

def _class_sizes(size_t page_size, double factor=1.125):
    """Size classes: geometric steps (factor) from 96 bytes, each then widened to the largest 8-byte multiple
    that still fits the same number of slots in a page (so no page has a wasted tail), ending with one slot
    per page. Objects larger than a page are chained over several page-sized slots."""
    cdef list sizes = []
    cdef size_t s = 96, v
    while s < page_size:
        v = (page_size // (page_size // s)) & ~(<size_t>7)
        if not sizes or v > sizes[len(sizes) - 1]:
            sizes.append(v)
        s = max(v + 8, <size_t>(v * factor))
    if sizes[len(sizes) - 1] != page_size:
        sizes.append(page_size)
    return sizes


def _page_size_for(size_t capacity):
    """64 KiB pages from 64 MiB up, 16 KiB below: enough pages per shard for every class in use."""
    return MAX_PAGE if capacity >= (64 << 20) else MIN_PAGE


cdef class SlabCache:
    """The extension face; edgecore.cache.Cache subclasses it. See that module for the contract."""

    cdef char *base
    cdef header_t *h
    cdef size_t size
    cdef readonly int owner_pid

    def __cinit__(self, capacity_bytes, max_object_size=1 << 20, shards=0, avg_object_size=1024, growth=1.125):
        cdef size_t cap, maxobj, avg, nsh
        cdef size_t page, hdr_bytes, shard_bytes, budget, per_page, npages, nb, meta, off, i, fixed, maxchunks
        cdef double load = 0.75
        cdef header_t *h
        cdef shard_t *sh
        cdef void *m
        if sizeof(slot_hdr) != HDR_SIZE:
            raise CacheError("slot header layout mismatch")
        if capacity_bytes < 65536:
            raise ValueError("capacity_bytes must be at least 64 KiB")
        if max_object_size < 64 or max_object_size > capacity_bytes // 8:
            raise ValueError("max_object_size must be between 64 bytes and capacity_bytes/8")
        if avg_object_size < 64:
            raise ValueError("avg_object_size must be at least 64")
        if shards < 0 or shards > 256:
            raise ValueError("shards must be 0 (auto) .. 256")
        self.base = NULL
        self.h = NULL
        cap = (<size_t>capacity_bytes) & ~(<size_t>4095)
        maxobj = max_object_size
        avg = avg_object_size
        nsh = shards
        page = _page_size_for(cap)
        maxchunks = maxobj // (page - HDR_SIZE) + 1
        if HDR_SIZE + 8 * (MAX_TAGS + 1) + chain_bytes(maxchunks) > page // 2:
            raise ValueError("max_object_size too large for this capacity")
        sizes = _class_sizes(page, growth)
        while len(sizes) > MAX_CLASSES:
            growth = growth * 1.05
            sizes = _class_sizes(page, growth)
        hdr_bytes = round_up(sizeof(header_t), 4096)
        shard_bytes = round_up(sizeof(shard_t), 64)
        if nsh == 0:
            npages = (cap - hdr_bytes) // page
            nsh = 1
            while nsh < 64 and nsh * 2 * 256 <= npages:
                nsh *= 2
        budget = ((cap - hdr_bytes) // nsh) & ~(<size_t>63)
        per_page = page + <size_t>((<double>page / avg / load) * 10.0 + 10.0) + 1
        if budget < shard_bytes + 256:
            raise ValueError("capacity_bytes too small for this many shards")
        npages = (budget - shard_bytes - 256) // per_page
        if npages < 2 * (maxchunks + 1):
            raise ValueError("capacity_bytes too small for max_object_size with %d shard(s)" % nsh)
        nb = max(<size_t>16, <size_t>(<double>npages * page / avg / load) + 1)
        if nb > 0xFFFFFFF0 or npages * page // 8 >= 0xFFFFFFF0 or npages >= 0xFFFFFFF0:
            raise ValueError("shard too large; use more shards")
        meta = round_up(shard_bytes + nb * 8 + nb * 2 + npages, 64)
        if meta + npages * page > budget:
            npages -= 1
            if npages < 1:
                raise ValueError("capacity_bytes too small for max_object_size")
            meta = round_up(shard_bytes + nb * 8 + nb * 2 + npages, 64)

        m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if m == MAP_FAILED:
            raise MemoryError("mmap of %d bytes failed" % cap)
        self.base = <char*>m
        self.size = cap
        self.owner_pid = getpid()
        h = <header_t*>m
        self.h = h
        h.magic = (<uint64_t>SC_MAGIC << 32) | SC_VERSION
        h.mapping_size = cap
        h.capacity = cap
        h.max_object = maxobj
        h.nshards = <uint32_t>nsh
        h.nclasses = <uint32_t>len(sizes)
        h.page_size = <uint32_t>page
        h.avg_hint = <uint32_t>avg
        for i in range(len(sizes)):
            h.class_size[i] = <uint32_t>sizes[i]
            h.class_per_page[i] = <uint32_t>(page // <size_t>sizes[i])
        h.shards_off = hdr_bytes
        h.shard_stride = meta + npages * page
        if sc_mutex_init(&h.ban_lock) or sc_mutex_init(&h.sweep_lock):
            self._unmap()
            raise CacheError("cannot initialise process-shared robust mutexes")
        fixed = hdr_bytes
        for i in range(nsh):
            sh = shard_at(h, <uint32_t>i)
            off = h.shards_off + i * h.shard_stride
            if sc_mutex_init(&sh.lock):
                self._unmap()
                raise CacheError("cannot initialise process-shared robust mutexes")
            sh.index_off = off + shard_bytes
            sh.ghost_off = sh.index_off + nb * 8
            sh.pagedesc_off = sh.ghost_off + nb * 2
            sh.data_off = off + meta
            sh.nbuckets = <uint32_t>nb
            sh.max_items = <uint32_t>(nb * 85 // 100)
            sh.nghost = <uint32_t>nb
            sh.npages = <uint32_t>npages
            memset(self.base + sh.pagedesc_off, PAGE_UNASSIGNED, npages)
            fixed += meta
        h.fixed_meta = fixed
        if hdr_bytes + nsh * h.shard_stride > cap:
            self._unmap()
            raise CacheError("layout exceeds the mapping")

    cdef void _unmap(self) noexcept:
        if self.base != NULL:
            munmap(self.base, self.size)
        self.base = NULL
        self.h = NULL

    def __dealloc__(self):
        self._unmap()

    def close(self):
        """Unmap the cache in this process (other processes keep their mapping)."""
        self._unmap()

    cdef inline header_t* _hdr(self) except NULL:
        if self.h == NULL:
            raise ValueError("cache is closed")
        return self.h

    # ------------------------------------------------------------ the hot path

    def lookup(self, key, double now):
        """(value, stored_at, expires, flags) or None. Expired or banned entries are removed."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef const char *kp
        cdef size_t kl
        cdef uint64_t hv
        cdef uint32_t pos
        cdef slot_hdr *s
        cdef PyObject *val
        cdef double stored_at, expires
        cdef int flags
        if not PyBytes_Check(key):
            raise ValueError("key must be bytes")
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
        if s.freq < FREQ_MAX:
            s.freq += 1
        c.sh.hits += 1
        if s.nx & CHAINED:
            val = _bytes_from(NULL, s.value_len)
            if val != NULL:
                chain_read(&c, s, PyBytes_AS_STRING(<object>val))
        else:
            val = _bytes_from(slot_key(s) + kl, s.value_len)
        stored_at = s.stored_at
        expires = s.expires
        flags = s.flags
        shard_unlock(&c)
        if val == NULL:
            raise MemoryError()
        value = <object>val
        Py_XDECREF(val)
        return (value, stored_at, expires, flags)

    def store(self, key, value, double stored_at, double expires, flags=0, tenant=0, tags=(),
              bint only_if_absent=False):
        """Store (replacing any entry for key). False when refused: too large or no room could be made.
        With only_if_absent, also False when a live entry (expires > stored_at) holds the key: an atomic
        test-and-set across processes (the proxy's cross-worker miss lock)."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef const char *kp
        cdef const char *vp
        cdef size_t kl, vl, need, extra
        cdef uint64_t hv, ten = 0
        cdef uint64_t tagv[MAX_TAGS]
        cdef uint32_t pos, ntags = 0, cls, lo, hi, mid, i
        cdef size_t nchunks
        cdef slot_hdr *s
        cdef class_state *cs
        cdef char *dst
        cdef int fl
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
        if not (expires == expires and stored_at == stored_at):
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
        nchunks = 0
        if need > h.page_size:
            # chained: the head holds the chain table, the key and the start of the value
            nchunks = (need + 8 - h.page_size + (h.page_size - HDR_SIZE) - 1) // (h.page_size - HDR_SIZE)
            while HDR_SIZE + extra + chain_bytes(nchunks) + kl + vl > \
                    h.page_size + nchunks * (h.page_size - HDR_SIZE):
                nchunks += 1
            cls = h.nclasses - 1
        else:
            lo = 0
            hi = h.nclasses - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if h.class_size[mid] >= need:
                    hi = mid
                else:
                    lo = mid + 1
            cls = lo
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        s = idx_find(&c, hv, kp, kl, &pos)
        if s != NULL:
            if only_if_absent and s.expires > stored_at:
                shard_unlock(&c)
                return False
            slot_kill(&c, s, KILL_REPLACE, pos)
        if c.sh.items >= c.sh.max_items:
            if not evict_in_class(&c, cls):
                for i in range(h.nclasses):
                    if evict_in_class(&c, i):
                        break
        demand_note(&c, cls, nchunks + 1)
        s = slot_alloc(&c, cls)
        if s != NULL and nchunks:
            s.state = SLOT_CHUNK      # not free, not queued: no eviction or steal can touch it meanwhile
            s.prev = 0
            if not chain_alloc(&c, s, nchunks, extra):
                s = NULL
        if s == NULL:
            c.sh.refused += 1
            shard_unlock(&c)
            return False
        s.stored_at = stored_at
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
        c.sh.slot_bytes += h.class_size[cls] + <uint64_t>nchunks * h.page_size
        c.sh.stores += 1
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

    cdef int _ban_register(self, uint32_t kind, uint64_t ident, const char *prefix, size_t plen) except -1:
        cdef header_t *h = self._hdr()
        cdef uint32_t i, slot = MAX_BANS
        cdef ban_t *b
        if global_lock(h, &h.ban_lock):
            raise CacheError("ban lock unrecoverable")
        for i in range(MAX_BANS):
            if not h.bans[i].active:
                slot = i
                break
        if slot == MAX_BANS:
            bans_retire_orphans(h)
            for i in range(MAX_BANS):
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

    cdef uint64_t _ban_walk(self, int slot) except? 0xFFFFFFFFFFFFFFFF:
        cdef header_t *h = self.h
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
                shard_walk(&c, &page, &sl, CHUNK_SLOTS, b, 0.0, &killed)
                shard_unlock(&c)
        if global_lock(h, &h.ban_lock) == 0:
            if b.active:
                sc_store32(&b.active, 0)
                sc_sub32(&h.nbans_active, 1)
            sc_mutex_unlock(&h.ban_lock)
        return killed

    def purge_tag(self, tag):
        """Invalidate every entry carrying tag; returns how many."""
        if type(tag) is not int or not (0 <= tag <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tag must be an int in 0..2**64-1")
        return self._ban_walk(self._ban_register(BAN_TAG, tag, NULL, 0))

    def purge_tenant(self, tenant):
        """Invalidate every entry of tenant (0 = entries stored without a tenant); returns how many."""
        if type(tenant) is not int or not (0 <= tenant <= 0xFFFFFFFFFFFFFFFF):
            raise ValueError("tenant must be an int in 0..2**64-1")
        return self._ban_walk(self._ban_register(BAN_TENANT, tenant, NULL, 0))

    def purge_prefix(self, prefix):
        """Invalidate every entry whose key starts with prefix; returns how many."""
        if not PyBytes_Check(prefix):
            raise ValueError("prefix must be bytes")
        if PyBytes_GET_SIZE(prefix) > BAN_PREFIX_MAX:
            raise ValueError("prefix longer than %d bytes" % BAN_PREFIX_MAX)
        return self._ban_walk(self._ban_register(BAN_PREFIX, 0, PyBytes_AS_STRING(prefix),
                                                 PyBytes_GET_SIZE(prefix)))

    def sweep(self, int budget=1024):
        """Visit up to `budget` slots from a shared cursor: remove expired entries and those covered by an
        active ban (zeroing their bytes). Returns how many entries were removed."""
        cdef header_t *h = self._hdr()
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

    # ------------------------------------------------------------ introspection

    def stats(self):
        """Counters summed over all shards (all processes), plus fill per size class."""
        cdef header_t *h = self._hdr()
        cdef sctx c
        cdef uint32_t i, k
        cdef uint64_t tot[14]
        cdef uint64_t cls_pages[MAX_CLASSES]
        cdef uint64_t cls_used[MAX_CLASSES]
        cdef class_state *cs
        memset(tot, 0, sizeof(tot))
        memset(cls_pages, 0, sizeof(cls_pages))
        memset(cls_used, 0, sizeof(cls_used))
        for i in range(h.nshards):
            ctx_init(&c, h, i)
            if shard_lock(&c):
                raise CacheError("shard lock unrecoverable")
            tot[0] += c.sh.items
            tot[1] += c.sh.data_bytes
            tot[2] += c.sh.extra_bytes
            tot[3] += c.sh.slot_bytes
            tot[4] += c.sh.hits
            tot[5] += c.sh.misses
            tot[6] += c.sh.evictions
            tot[7] += c.sh.expirations
            tot[8] += c.sh.stores
            tot[9] += c.sh.purged
            tot[10] += c.sh.deletes
            tot[11] += c.sh.refused
            tot[12] += c.sh.steals
            tot[13] += c.sh.recoveries
            for k in range(h.nclasses):
                cs = &c.sh.classes[k]
                cls_pages[k] += cs.npages
                cls_used[k] += cs.nsmall + cs.nmain
            shard_unlock(&c)
        classes = []
        for k in range(h.nclasses):
            classes.append({"size": h.class_size[k], "pages": cls_pages[k],
                            "slots": cls_pages[k] * h.class_per_page[k], "used": cls_used[k]})
        live_meta = tot[0] * HDR_SIZE + tot[2]
        return {
            "items": tot[0],
            "capacity_bytes": h.capacity,
            "bytes_used": h.fixed_meta + tot[3],
            "data_bytes": tot[1],
            "metadata_bytes": h.fixed_meta + live_meta,
            "fixed_metadata_bytes": h.fixed_meta,
            "object_metadata_bytes": live_meta,
            "slack_bytes": tot[3] - tot[1] - live_meta,
            "hits": tot[4],
            "misses": tot[5],
            "evictions": tot[6],
            "expirations": tot[7],
            "stores": tot[8],
            "purged": tot[9],
            "deletes": tot[10],
            "refused": tot[11],
            "page_steals": tot[12],
            "lock_recoveries": tot[13],
            "shards": h.nshards,
            "page_size": h.page_size,
            "pages": shard_at(h, 0).npages * h.nshards,
            "max_object_size": h.max_object,
            "classes": classes,
        }

    def layout(self):
        """Static geometry: shards, pages, buckets, class sizes."""
        cdef header_t *h = self._hdr()
        cdef shard_t *sh = shard_at(h, 0)
        return {
            "mapping_size": h.mapping_size, "shards": h.nshards, "page_size": h.page_size,
            "pages_per_shard": sh.npages, "buckets_per_shard": sh.nbuckets, "max_items_per_shard": sh.max_items,
            "header_bytes": h.shards_off, "shard_stride": h.shard_stride, "fixed_metadata_bytes": h.fixed_meta,
            "slot_header_bytes": HDR_SIZE,
            "class_sizes": [h.class_size[k] for k in range(h.nclasses)],
        }

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
            memset(c.index, 0xA5, <size_t>c.sh.nbuckets * 8)
            c.sh.classes[0].free_head = 0x5A5A5A5A
            c.sh.classes[0].nfree = 7
            c.sh.items += 12345
        if notify_fd >= 0:
            sc_write_byte(notify_fd)
        sc_read_byte(fd)
        if scribble:
            shard_wipe(&c)
        shard_unlock(&c)
