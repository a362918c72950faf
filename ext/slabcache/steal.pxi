# slabcache/steal.pxi -- page steals: moving one page from a donor class to another class.
#
# Owns: page_of, slot_hot, page_hot_count, slot_move, free_slot_outside, page_steal.
# Invariants: of the pages holding the donor's oldest objects, the one with fewest hot objects is taken;
# its hot objects (and hot chains' chunks) are moved into free slots elsewhere in the donor, with every
# reference fixed (index entry, queue neighbours, chain table, chunk back-refs); the rest are evicted; free
# slots met inside the page meanwhile are parked as SLOT_DRAINED (on no list) and recarved with the page;
# a page holding a pinned slot (pins.pxi) is never taken.

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
    cdef uint32_t xr = slot_ref(c.data, x), tr = slot_ref(c.data, t), i
    cdef uint32_t *chain
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
    idx_relink(c, idx_bucket(c.sh, t.hash32), xr, tr)
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

cdef bint page_steal(sctx *c, uint32_t donor, uint32_t cls) noexcept nogil:
    """Give one page of `donor` to `cls`: of the pages holding the donor's oldest objects, the one with the
    fewest hot objects; its hot objects are moved into the donor's other pages (evicting its coldest objects
    there, by S3-FIFO), its cold ones are evicted. A page holding a pinned slot (pins.pxi) is never taken:
    False when every page of the donor holds one."""
    cdef class_state *ds = &c.sh.classes[donor]
    cdef uint32_t page, j, n = c.h.class_per_page[donor], size = c.h.class_size[donor]
    cdef uint32_t cand[3]
    cdef uint32_t ncand = 0, k, best = 0xFFFFFFFF, hot
    cdef char *p
    cdef slot_hdr *s
    cdef slot_hdr *t
    cand[0] = 0     # always overwritten: a donor has pages (on its lists, or found by pagedesc below)
    if ds.small_tail:
        cand[ncand] = page_of(c, ds.small_tail)
        ncand += 1
    if ds.main_tail:
        cand[ncand] = page_of(c, ds.main_tail)
        ncand += 1
    if ds.free_head:
        cand[ncand] = page_of(c, ds.free_head)
        ncand += 1
    k = 0
    for j in range(ncand):      # pins.pxi: pages holding pinned slots are not candidates
        if not page_pinned(c, cand[j]):
            cand[k] = cand[j]
            k += 1
    ncand = k
    if ncand == 0 and c.sh.npins:
        for page in range(c.sh.pages_used):
            if c.pagedesc[page] == donor and not page_pinned(c, page):
                cand[0] = page
                ncand = 1
                break
        if ncand == 0:
            return False
    if ncand == 0:
        # a class holding only chunks (of chains whose heads are elsewhere) is on none of its lists: its
        # first page will do
        for page in range(c.sh.pages_used):
            if c.pagedesc[page] == donor:
                cand[0] = page
                ncand = 1
                break
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
    return True
