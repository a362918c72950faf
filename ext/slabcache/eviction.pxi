# slabcache/eviction.pxi -- S3-FIFO eviction within one (shard, size class).
#
# Owns: evict_in_class.
# Invariants: new objects enter the small (probationary) queue, or the main queue if the ghost remembers
# them; the small queue is drained while it holds >= 10% of the class's objects (or main is empty); an
# object referenced while small is promoted, one in main with freq > 0 is reinserted with one bit less;
# one eviction takes at most EVICT_STEPS_MAX such steps, then evicts the tail regardless. Small-queue
# victims go to the ghost.

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

