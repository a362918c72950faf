# slabcache/slots.pxi -- layout arithmetic of one object slot (no state, no locking).
#
# Owns: slot refs <-> addresses, and where a slot's tenant, tags, chain table and key sit after its header.
# Invariants: a slot ref is a 1-based count of 8-byte units from a shard's data region start (0 = none);
# a slot is [slot_hdr][tenant u64 if HAS_TENANT][tags u64 x ntags][chain table if CHAINED][key][value...]
# as slabcache.pxd describes; these helpers only read, they never move or free anything.

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

