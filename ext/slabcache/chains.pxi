# slabcache/chains.pxi -- chained objects: values larger than the chunk class spill over further slots.
#
# Owns: chain_free, chain_alloc, chain_slot_bytes, chain_write, chain_read.
# Invariants: a chained head is a slot of a chunk class (the largest class with 16, 8, 4 or 2 slots a page,
# whichever takes the fewest bytes with the head holding its key and chain table: layout.pxi class_for), or,
# with a single chunk, of any class (the two-piece layout of an object a page holds few of), holding
# [nchunks, refs...] (padded to 8) after its tags, then the key and the
# first part of the value; each chunk is a slot in state SLOT_CHUNK with prev = the head's ref and next = its
# position in the chain, holding its class size - HDR_SIZE value bytes; every chunk but the last is a
# slot of the head's class, the last one a slot of the best-fit class for what is left (memcached's chunked items:
# a large object wastes at most one class step of its last chunk, not a page); chunks are on no queue and die
# with their head (chain_free, zeroed when the head is purged or deleted). The last chunk is allocated first,
# when nothing is half-built, so its class may take a page from any class (the head's too); from then on the
# chain's slots are on no list, so no page steal may take a page of the last chunk's class (sctx.no_donor),
# and none ever takes one of the head's class for the head's class itself.

cdef void chain_free(sctx *c, slot_hdr *head, bint zero) noexcept nogil:
    """Return a chained object's chunks to their classes' free lists (zeroed when purging)."""
    cdef uint32_t *chain = slot_chain(head)
    cdef uint32_t n = chain[0], i, size
    cdef slot_hdr *k
    for i in range(n):
        k = slot_at(c.data, chain[1 + i])
        size = c.h.class_size[k.cls]
        if zero:
            memset((<char*>k) + HDR_SIZE, 0, size - HDR_SIZE)
        c.sh.slot_bytes -= size
        free_push(c, &c.sh.classes[k.cls], k)
    c.sh.extra_bytes -= <uint64_t>n * HDR_SIZE

cdef bint chain_alloc(sctx *c, slot_hdr *head, size_t n, size_t tagbytes, slot_hdr *tail) noexcept nogil:
    """Allocate the n - 1 middle chunks (of the head's class) for `head`, append `tail` (allocated first by
    the caller, so that it could take a page from any class) and write the chain table (after HDR +
    tagbytes). On failure every slot taken, the head and the tail too, goes back to its free list."""
    cdef uint32_t cls = head.cls, i, j
    cdef slot_hdr *k
    cdef uint32_t href = slot_ref(c.data, head)
    cdef uint32_t *chain = <uint32_t*>((<char*>head) + HDR_SIZE + tagbytes)
    for i in range(n):
        k = tail if i == n - 1 else slot_alloc(c, cls)
        if k == NULL:
            for j in range(i):
                k = slot_at(c.data, chain[1 + j])
                free_push(c, &c.sh.classes[k.cls], k)
            free_push(c, &c.sh.classes[tail.cls], tail)
            free_push(c, &c.sh.classes[cls], head)
            return False
        k.state = SLOT_CHUNK
        k.prev = href
        k.next = i
        chain[1 + i] = slot_ref(c.data, k)
    chain[0] = <uint32_t>n
    return True

cdef uint64_t chain_slot_bytes(sctx *c, slot_hdr *head) noexcept nogil:
    """The slot bytes of a chained object's chunks (not its head)."""
    cdef uint32_t *chain = slot_chain(head)
    cdef uint32_t i
    cdef uint64_t total = 0
    for i in range(chain[0]):
        total += c.h.class_size[slot_at(c.data, chain[1 + i]).cls]
    return total

cdef void chain_write(sctx *c, slot_hdr *head, char *dst, const char *src, size_t n) noexcept nogil:
    """Copy a value into a chained object: what fits after the key in the head, then chunk by chunk."""
    cdef uint32_t *chain = slot_chain(head)
    cdef size_t first = (<char*>head) + c.h.class_size[head.cls] - dst
    cdef size_t take
    cdef slot_hdr *k
    cdef uint32_t i = 0
    take = first if first < n else n
    memcpy(dst, src, take)
    src += take
    n -= take
    while n:
        k = slot_at(c.data, chain[1 + i])
        take = c.h.class_size[k.cls] - HDR_SIZE
        if take > n:
            take = n
        memcpy((<char*>k) + HDR_SIZE, src, take)
        src += take
        n -= take
        i += 1

cdef void chain_read(sctx *c, slot_hdr *head, char *out) noexcept nogil:
    cdef uint32_t *chain = slot_chain(head)
    cdef char *src = slot_key(head) + head.key_len
    cdef size_t first = (<char*>head) + c.h.class_size[head.cls] - src
    cdef size_t n = head.value_len, take
    cdef slot_hdr *k
    cdef uint32_t i = 0
    take = first if first < n else n
    memcpy(out, src, take)
    out += take
    n -= take
    while n:
        k = slot_at(c.data, chain[1 + i])
        take = c.h.class_size[k.cls] - HDR_SIZE
        if take > n:
            take = n
        memcpy(out, (<char*>k) + HDR_SIZE, take)
        out += take
        n -= take
        i += 1
