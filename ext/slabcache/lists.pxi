# slabcache/lists.pxi -- the intrusive doubly linked lists of slot refs (head = newest, tail = oldest).
#
# Owns: list_push_head and list_remove over (head, tail) pairs of a class_state: the small and main queues
# and the free list (whose tail is class_state._pad, kept but never read).
# Invariants: a slot is on at most one list; prev/next are slot refs of the same shard (0 = end); callers
# hold the shard lock and keep the class's counters (nsmall/nmain/nfree) in step.

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

