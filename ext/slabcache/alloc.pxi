# slabcache/alloc.pxi -- handing out slots: carving pages into a class, demand, choosing a page donor.
#
# Owns: page_carve, pick_donor, slot_alloc, free_slot_in, demand_note.
# Invariants: a shard's pages are assigned in order (pages_used grows to npages and never shrinks except by
# a lock-recovery wipe); pagedesc[page] is the class a page is carved into (PAGE_UNASSIGNED before);
# once every page is assigned, a class with no free slot takes a page from the class holding the most pages
# beyond its share of decayed recent demand (page_steal; never c.no_donor, the class of a chain being built) -- if it has no page at all, or is itself at least
# a page below its share and the donor a page above, or if it holds no object of its own (only chunks) --
# or else evicts within itself. A class's only page is taken only when it is a page beyond its share.

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
    for d in range(<int>c.h.nclasses):
        if <uint32_t>d == cls or d == c.no_donor:
            continue
        cs = &sh.classes[d]
        if cs.npages == 0:
            continue
        surplus = <double>cs.npages - (<double>cs.demand) * scale
        if surplus < 1.0 and (strict or cs.npages == 1):
            # a class's last page only goes a page beyond its share: taking it evicts every object with a
            # piece there, and a class of tails (last pieces of objects whose heads are elsewhere), which
            # steals without being below its share, would take it back at its next store
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
            # a class holding only chunks (no object of its own to evict) takes a page from the best donor
            # even when it is not below its share
            donor = pick_donor(c, cls, cs.npages != 0 and cs.nsmall + cs.nmain != 0)
            if donor < 0 or not page_steal(c, <uint32_t>donor, cls):   # (every donor page pinned)
                if not evict_in_class(c, cls):
                    return NULL
    if cs.free_head == 0:
        return NULL
    s = slot_at(c.data, cs.free_head)
    list_remove(c.data, &cs.free_head, &cs._pad, s)
    cs.nfree -= 1
    return s

cdef slot_hdr* free_slot_in(sctx *c, uint32_t lo, uint32_t hi) noexcept nogil:
    """A free slot of the smallest class in lo..hi that has one (no carving, stealing or evicting); NULL if none."""
    cdef uint32_t k
    cdef class_state *cs
    cdef slot_hdr *s
    for k in range(lo, hi + 1):
        cs = &c.sh.classes[k]
        if cs.free_head:
            s = slot_at(c.data, cs.free_head)
            list_remove(c.data, &cs.free_head, &cs._pad, s)
            cs.nfree -= 1
            return s
    return NULL

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

