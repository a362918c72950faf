# slabcache/chains.pxi -- chained objects: values larger than a page spill over chunks of the largest class.
#
# Owns: chain_free, chain_alloc, chain_write, chain_read.
# Invariants: a chained head holds [nchunks, refs...] (padded to 8) after its tags, then the key and the
# first part of the value; each chunk is a largest-class slot in state SLOT_CHUNK with prev = the head's
# ref and next = its position in the chain, holding page_size - HDR_SIZE value bytes; chunks are on no
# queue and die with their head (chain_free, zeroed when the head is purged or deleted).

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

