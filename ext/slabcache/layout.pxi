# slabcache/layout.pxi -- the geometry of the mapping: size classes, page size, shard count, and every
# region's size and offset, computed once in the constructing process and written into the header.
#
# Owns: round_up, _class_sizes, _page_size_for, layout_plan_for (validate the constructor's arguments and
# size everything), layout_write (write the header and shard tables into a fresh mapping), class_fit and
# class_for (the size class, chunk count and last chunk's class of an object of a given size).
# Invariants: the mapping is exactly capacity_bytes rounded down to 4 KiB; [header (4 KiB-aligned)]
# [shard 0: shard_t (64-aligned), index (nbuckets u32 chain heads), ghost (nbuckets u16), pagedesc (npages u8),
# padding to 64, npages pages] [shard 1] ...; every shard has the same geometry; class sizes are 8-byte
# multiples, strictly increasing, at most MAX_CLASSES, the last equal to the page size, and every
# page size has classes with 16, 8, 4 and 2 slots a page (the chunk classes of chained objects); nothing here
# changes after construction, so it is read without locks.

ctypedef struct layout_plan:
    size_t cap, maxobj, avg, nsh, page, hdr_bytes, shard_bytes, npages, nb, meta

cdef size_t round_up(size_t v, size_t a) noexcept nogil:
    return (v + a - 1) // a * a

def _class_sizes(size_t page_size, double factor=1.125):
    """Size classes from 96 bytes to the page size, each the widest 8-byte multiple for its number of slots a
    page (page // m: no page has a wasted tail). Each step goes to the widest such class within `factor` of
    the one before, or if there is none, to the next slot count: classes are at most `factor` apart where a
    page holds many slots, and every slot count is a class where it holds few (so, with chained objects
    taking the classes of 8 or more slots a page, no object is more than one step from its class)."""
    cdef list sizes = []
    cdef size_t m = page_size // 96, mm, w, v, best_m, best_w
    v = (page_size // m) & ~(<size_t>7)
    sizes.append(v)
    while v < page_size:
        best_m = 0
        best_w = 0
        mm = m - 1
        while mm >= 1:
            w = (page_size // mm) & ~(<size_t>7)
            if w > v * factor:
                break
            best_m = mm
            best_w = w
            mm -= 1
        if best_m == 0:
            best_m = m - 1
            best_w = (page_size // best_m) & ~(<size_t>7)
        m = best_m
        v = best_w
        if v > sizes[len(sizes) - 1]:
            sizes.append(v)
    return sizes


def _page_size_for(size_t capacity):
    """64 KiB pages from 64 MiB up, 16 KiB below: enough pages per shard for every class in use."""
    return MAX_PAGE if capacity >= (64 << 20) else MIN_PAGE


cdef list layout_plan_for(layout_plan *p, capacity_bytes, max_object_size, shards, avg_object_size, growth):
    """Check the constructor's arguments and size every region into *p; returns the class sizes.
    Raises ValueError for arguments out of range, CacheError if the compiled layout is inconsistent."""
    cdef size_t cap, maxobj, avg, nsh
    cdef size_t page, hdr_bytes, shard_bytes, budget, per_page, npages, nb, meta, maxchunks, chunk
    cdef double load = 0.75
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
    cap = (<size_t>capacity_bytes) & ~(<size_t>4095)
    maxobj = max_object_size
    avg = avg_object_size
    nsh = shards
    page = _page_size_for(cap)
    sizes = _class_sizes(page, growth)
    while len(sizes) > MAX_CLASSES:
        growth = growth * 1.05
        sizes = _class_sizes(page, growth)
    # chained objects: a head and chunks of the chunk class (half a page), the last chunk of a best-fit class;
    # the head holds the tags, the chain table and a key of up to page/4 bytes
    chunk = max([s for s in sizes if page // s >= 2])
    maxchunks = maxobj // (chunk - HDR_SIZE) + 1
    if HDR_SIZE + 8 * (MAX_TAGS + 1) + chain_bytes(maxchunks) + page // 4 > chunk:
        raise ValueError("max_object_size too large for this capacity")
    hdr_bytes = round_up(sizeof(header_t), 4096)
    shard_bytes = round_up(sizeof(shard_t), 64)
    if nsh == 0:
        npages = (cap - hdr_bytes) // page
        nsh = 1
        while nsh < 64 and nsh * 2 * 256 <= npages:
            nsh *= 2
    budget = ((cap - hdr_bytes) // nsh) & ~(<size_t>63)
    per_page = page + <size_t>((<double>page / avg / load) * 6.0 + 6.0) + 1
    if budget < shard_bytes + 256:
        raise ValueError("capacity_bytes too small for this many shards")
    npages = (budget - shard_bytes - 256) // per_page
    if npages < 2 * ((maxchunks + 1) * chunk // page + 1):
        raise ValueError("capacity_bytes too small for max_object_size with %d shard(s)" % nsh)
    nb = max(<size_t>16, <size_t>(<double>npages * page / avg / load) + 1)
    if nb > 0xFFFFFFF0 or npages * page // 8 >= 0xFFFFFFF0 or npages >= 0xFFFFFFF0:
        raise ValueError("shard too large; use more shards")
    meta = round_up(shard_bytes + nb * 4 + nb * 2 + npages, 64)
    if meta + npages * page > budget:
        npages -= 1
        if npages < 1:
            raise ValueError("capacity_bytes too small for max_object_size")
        meta = round_up(shard_bytes + nb * 4 + nb * 2 + npages, 64)
    p.cap = cap
    p.maxobj = maxobj
    p.avg = avg
    p.nsh = nsh
    p.page = page
    p.hdr_bytes = hdr_bytes
    p.shard_bytes = shard_bytes
    p.npages = npages
    p.nb = nb
    p.meta = meta
    return sizes

cdef int layout_write(char *base, const layout_plan *p, list sizes) noexcept:
    """Write the header and every shard's geometry into a fresh (zeroed) mapping of p.cap bytes at base.
    0 on success; -1 when a process-shared robust mutex cannot be initialised; -2 when the layout does
    not fit the mapping."""
    cdef header_t *h = <header_t*>base
    cdef shard_t *sh
    cdef size_t i, off, fixed
    cdef size_t nsh = p.nsh, page = p.page, hdr_bytes = p.hdr_bytes, shard_bytes = p.shard_bytes
    cdef size_t npages = p.npages, nb = p.nb, meta = p.meta

    h.magic = (<uint64_t>SC_MAGIC << 32) | SC_VERSION
    h.mapping_size = p.cap
    h.capacity = p.cap
    h.max_object = p.maxobj
    h.nshards = <uint32_t>nsh
    h.nclasses = <uint32_t>len(sizes)
    h.page_size = <uint32_t>page
    h.avg_hint = <uint32_t>p.avg
    for i in range(<size_t>len(sizes)):
        h.class_size[i] = <uint32_t>sizes[i]
        h.class_per_page[i] = <uint32_t>(page // <size_t>sizes[i])
    h.shards_off = hdr_bytes
    h.shard_stride = meta + npages * page
    if sc_mutex_init(&h.ban_lock) or sc_mutex_init(&h.sweep_lock):
        return -1
    fixed = hdr_bytes
    for i in range(nsh):
        sh = shard_at(h, <uint32_t>i)
        off = h.shards_off + i * h.shard_stride
        if sc_mutex_init(&sh.lock):
            return -1
        sh.index_off = off + shard_bytes
        sh.ghost_off = sh.index_off + nb * 4
        sh.pagedesc_off = sh.ghost_off + nb * 2
        sh.data_off = off + meta
        sh.nbuckets = <uint32_t>nb
        # the chained index holds any number of objects: the only bound is the slots the pages can hold
        sh.max_items = <uint32_t>min(<size_t>0xFFFFFFF0, npages * (page // <size_t>sizes[0]))
        sh.nghost = <uint32_t>nb
        sh.npages = <uint32_t>npages
        memset(base + sh.pagedesc_off, PAGE_UNASSIGNED, npages)
        fixed += meta
    h.fixed_meta = fixed
    if hdr_bytes + nsh * h.shard_stride > p.cap:
        return -2
    return 0

cdef inline uint32_t class_fit(header_t *h, size_t need) noexcept nogil:
    """The smallest class whose slots hold `need` bytes (need <= the page size)."""
    cdef uint32_t lo = 0, hi = h.nclasses - 1, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if h.class_size[mid] >= need:
            hi = mid
        else:
            lo = mid + 1
    return lo

cdef inline uint32_t chunk_class(header_t *h, uint32_t minper) noexcept nogil:
    """The largest class with at least `minper` slots a page."""
    cdef uint32_t k = h.nclasses - 1
    while k > 0 and h.class_per_page[k] < minper:
        k -= 1
    return k

cdef inline uint32_t class_for(header_t *h, size_t need, size_t headfix, size_t *nchunks,
                               uint32_t *tail_cls) noexcept nogil:
    """The size class of an object needing `need` slot bytes (header, tenant, tags, key, value; `headfix` of
    them are header, tenant, tags and key); in *nchunks how many chunks it spills into and in *tail_cls the
    class of the last one (a best fit for what is left; the others are of the head's class).
    Of the layouts possible -- one best-fit slot (if the object fits a page), a chain over slots of the
    largest class with 16, 8, 4 or 2 slots a page whose head holds the key and the chain table, or a head of
    any smaller class and one best-fit last chunk -- the one taking the fewest slot bytes (ties: fewer
    pieces; a two-piece layout must save a sixteenth of `need` over one slot, a second copy source per hit
    being its price). Classes of 16 or more slots a page are at most 6.25% apart, so a chained object wastes
    about one class step of its last chunk plus 48 bytes a chunk; where a page holds few slots (classes
    page/8, page/7, ...: 12-14% apart) the two-piece layout halves the rounding of a single slot; the class of
    2 slots a page always holds the head (layout_plan_for checks it)."""
    cdef uint32_t cc, minper, best_cls, tc, k
    cdef size_t csz, per, n, rem, total, best, single
    nchunks[0] = 0
    tail_cls[0] = 0
    best = <size_t>-1
    best_cls = 0
    cc = chunk_class(h, 16)
    if need <= h.class_size[cc]:
        return class_fit(h, need)
    single = <size_t>-1
    if need <= h.page_size:
        best_cls = class_fit(h, need)
        best = h.class_size[best_cls]
        single = best
        # a head of class k holding the key, a one-entry chain table and the value's start, then one
        # best-fit last chunk for the rest
        k = best_cls
        while k > 0:
            k -= 1
            csz = h.class_size[k]
            if csz * 2 < need or headfix + chain_bytes(1) > csz:
                break
            rem = need + chain_bytes(1) - csz
            tc = class_fit(h, rem + HDR_SIZE)
            total = csz + h.class_size[tc]
            if total + need // 16 < single and total < best:
                best = total
                best_cls = k
                nchunks[0] = 1
                tail_cls[0] = tc
    minper = 2
    while minper <= 16:
        cc = chunk_class(h, minper)
        csz = h.class_size[cc]
        per = csz - HDR_SIZE
        # chained: the head holds the chain table, the key and the start of the value
        n = (need + 8 - csz + per - 1) // per
        while need + chain_bytes(n) > csz + n * per:
            n += 1
        if headfix + chain_bytes(n) <= csz:
            rem = need + chain_bytes(n) - csz - (n - 1) * per
            tc = class_fit(h, rem + HDR_SIZE)
            total = n * csz + h.class_size[tc]
            if total < best:
                best = total
                best_cls = cc
                nchunks[0] = n
                tail_cls[0] = tc
        minper <<= 1
    return best_cls
