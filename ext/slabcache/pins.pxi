# slabcache/pins.pxi -- pins: an object whose bytes some process's transports hold views of.
#
# Owns: the per-shard pin table (shard_t.pins: entries of (head slot ref, pid, count)), pin_take/pin_put,
# pins_release_pid (the supervisor, for a dead worker), dead_bury/dead_free (the deferred free of an object
# killed while pinned), page_pinned (which pages a page steal must leave alone), and the Python face of a
# pinned value (class Pinned, built by SlabCache.lookup_pinned, and its _Piece buffers; Pinned.send, its
# bytes straight into a socket by one sendmsg, which the kernel copies before it returns).
# Invariants (all under the shard lock):
#   * while an entry names a head ref, that object's slots (head and chunks) are never moved, zeroed,
#     freed or reused: slot_kill of a pinned object unlinks and accounts it at once (it is never found
#     again) but only marks it SLOT_DEAD (dead_bury); its slots go back to their free lists, zeroed, when
#     the last entry naming it goes (dead_free); page_steal never takes a page holding a pinned slot;
#   * pinned_bytes (the slot bytes of the distinct objects pinned) stays within half the shard's pages, and
#     at most MAX_PINS (object, process) pairs are pinned per shard: past either, lookup_pinned copies;
#   * bytes_used counts dead objects (dead_bytes) until they are freed, so the byte bound stays exact;
#   * entries are per process (pid): a process's pins are released by its own Pinned objects when the last
#     view of them goes, or all at once by pins_release_pid when it died (server.py _reap);
#   * a lock-recovery wipe (recovery.pxi) forgets the table with everything else (views held across a
#     wipe may then see other bytes; the mapping itself stays valid).

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EAGAIN, EINTR


cdef extern from "<sys/socket.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

DEF SEND_IOV = 128  # iovecs per Pinned.send call (a longer value is sent in part; the caller writes the rest)


cdef inline uint64_t obj_slot_bytes(sctx *c, slot_hdr *s) noexcept nogil:
    """The slot bytes of an object: its head and, if CHAINED, its chunks."""
    cdef uint64_t n = c.h.class_size[s.cls]
    if s.nx & CHAINED:
        n += chain_slot_bytes(c, s)
    return n

cdef inline int pin_find(sctx *c, uint32_t ref, int32_t pid) noexcept nogil:
    cdef int i
    for i in range(<int>MAX_PINS):
        if c.sh.pins[i].ref == ref and c.sh.pins[i].pid == pid:
            return i
    return -1

cdef inline bint pin_held(sctx *c, uint32_t ref) noexcept nogil:
    """Whether any process pins the object whose head is ref."""
    cdef int i
    if c.sh.npins == 0:
        return False
    for i in range(<int>MAX_PINS):
        if c.sh.pins[i].ref == ref:
            return True
    return False

cdef int pin_take(sctx *c, slot_hdr *s, int32_t pid) noexcept nogil:
    """One more pin of live object s by pid. -1 (nothing pinned) when the table or the byte bound is full."""
    cdef uint32_t ref = slot_ref(c.data, s)
    cdef int i = pin_find(c, ref, pid)
    cdef uint64_t size
    if i >= 0:
        c.sh.pins[i].count += 1
        return 0
    if c.sh.npins >= MAX_PINS:
        return -1
    if not pin_held(c, ref):
        size = obj_slot_bytes(c, s)
        if c.sh.pinned_bytes + size > (<uint64_t>c.sh.npages * c.h.page_size) // 2:
            return -1
        c.sh.pinned_bytes += size
    i = pin_find(c, 0, 0)
    c.sh.pins[i].ref = ref
    c.sh.pins[i].pid = pid
    c.sh.pins[i].count = 1
    c.sh.npins += 1
    return 0

cdef void pin_drop_entry(sctx *c, int i) noexcept nogil:
    """Clear pin table entry i; if no entry names its object any more, unaccount it and free it if dead."""
    cdef uint32_t ref = c.sh.pins[i].ref
    cdef slot_hdr *s
    c.sh.pins[i].ref = 0
    c.sh.pins[i].pid = 0
    c.sh.pins[i].count = 0
    c.sh.npins -= 1
    if pin_held(c, ref):
        return
    s = slot_at(c.data, ref)
    c.sh.pinned_bytes -= obj_slot_bytes(c, s)
    if s.state == SLOT_DEAD:
        dead_free(c, s)

cdef void pin_put(sctx *c, uint32_t ref, int32_t pid) noexcept nogil:
    """One pin of ref by pid fewer (nothing if pid holds none: e.g. the table was wiped meanwhile)."""
    cdef int i = pin_find(c, ref, pid)
    if i < 0 or ref == 0:
        return
    c.sh.pins[i].count -= 1
    if c.sh.pins[i].count == 0:
        pin_drop_entry(c, i)

cdef uint64_t pins_release_pid(sctx *c, int32_t pid) noexcept nogil:
    """Release every pin process pid holds in this shard (pid 0: every pin, of processes that are all gone:
    a cache file re-attached by a new edgecore); returns how many."""
    cdef uint64_t n = 0
    cdef int i
    for i in range(<int>MAX_PINS):
        if c.sh.pins[i].ref != 0 and (pid == 0 or c.sh.pins[i].pid == pid):
            n += c.sh.pins[i].count
            pin_drop_entry(c, i)
    return n

cdef void dead_bury(sctx *c, slot_hdr *s) noexcept nogil:
    """slot_kill of a pinned object, after it unlinked and unaccounted the head as for any kill: unaccount
    its chunks too (as chain_free would), then keep every slot, bytes untouched, as SLOT_DEAD."""
    cdef uint32_t *chain
    cdef uint32_t i
    if s.nx & CHAINED:
        chain = slot_chain(s)
        for i in range(chain[0]):
            c.sh.slot_bytes -= c.h.class_size[slot_at(c.data, chain[1 + i]).cls]
        c.sh.extra_bytes -= <uint64_t>chain[0] * HDR_SIZE
    s.state = SLOT_DEAD
    s.hnext = 0
    c.sh.dead_bytes += obj_slot_bytes(c, s)
    c.sh.dead_items += 1

cdef void dead_free(sctx *c, slot_hdr *s) noexcept nogil:
    """The last pin of a dead object went: zero its slots and put them on their free lists."""
    cdef uint32_t *chain
    cdef uint32_t i, size
    cdef slot_hdr *k
    c.sh.dead_bytes -= obj_slot_bytes(c, s)
    c.sh.dead_items -= 1
    if s.nx & CHAINED:
        chain = slot_chain(s)
        for i in range(chain[0]):
            k = slot_at(c.data, chain[1 + i])
            size = c.h.class_size[k.cls]
            memset((<char*>k) + HDR_SIZE, 0, size - HDR_SIZE)
            free_push(c, &c.sh.classes[k.cls], k)
    memset((<char*>s) + HDR_SIZE, 0, <size_t>c.h.class_size[s.cls] - HDR_SIZE)
    s.key_len = 0
    s.value_len = 0
    s.nx = 0
    free_push(c, &c.sh.classes[s.cls], s)

cdef bint page_pinned(sctx *c, uint32_t page) noexcept nogil:
    """Whether `page` holds a slot (head or chunk) of a pinned object."""
    cdef int i
    cdef uint32_t j, ref
    cdef uint32_t *chain
    cdef slot_hdr *s
    if c.sh.npins == 0:
        return False
    for i in range(<int>MAX_PINS):
        ref = c.sh.pins[i].ref
        if ref == 0:
            continue
        if page_of(c, ref) == page:
            return True
        s = slot_at(c.data, ref)
        if s.nx & CHAINED:
            chain = slot_chain(s)
            for j in range(chain[0]):
                if page_of(c, chain[1 + j]) == page:
                    return True
    return False


# ------------------------------------------------------------ the Python face of a pinned value

@cython.no_gc_clear
@cython.final
cdef class _Piece:
    """One contiguous part of a pinned value, exporting it read-only through the buffer protocol; holds
    the Pinned it belongs to, so the pin lasts while any memoryview of any part exists."""
    cdef Pinned owner
    cdef char *p
    cdef Py_ssize_t n

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.p, self.n, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __len__(self):
        return self.n


@cython.no_gc_clear
@cython.final
cdef class Pinned:
    """A stored value read in place from the shared mapping (SlabCache.lookup_pinned): its object is pinned
    in the cache's pin table, so its bytes stay as they are, and it is released when this object and every
    view from views() are gone (the transport dropped them: written or aborted). Never a dangling view: the
    pin is what a view's lifetime holds. Only the process that took it releases it (a forked copy does not).

    len(p), p.head(n) (a bytes copy of the first n bytes), p.views(start) (read-only memoryviews of the
    value from start to its end, one per chunk: no copy), p.tobytes() (a copy of it all), p.send(fd, prefix,
    start) (prefix then the value from start, straight into a socket: one sendmsg, copied by the kernel)."""
    cdef object cache               # the SlabCache (keeps the mapping mapped while the pin lives)
    cdef header_t *h
    cdef char *data                 # the shard's data region
    cdef uint32_t shard, ref
    cdef int32_t pid
    cdef Py_ssize_t vlen
    cdef char *first                # the value's first byte, in the head slot
    cdef Py_ssize_t nfirst          # how many of its bytes the head slot holds
    cdef uint32_t *chain            # [nchunks, refs...] or NULL

    def __len__(self):
        return self.vlen

    def __dealloc__(self):
        cdef sctx c
        if self.ref == 0 or self.h == NULL:
            return
        if getpid() == self.pid:
            ctx_init(&c, self.h, self.shard)
            if shard_lock(&c) == 0:
                pin_put(&c, self.ref, self.pid)
                shard_unlock(&c)
        self.ref = 0
        cache_unpinned(self.cache)

    cdef Py_ssize_t _part(self, uint32_t i, char **p) noexcept:
        """Part i of the value (0: in the head slot, i: in chunk i) -> how many value bytes it can hold (the
        last part holds what is left), its start in p."""
        cdef slot_hdr *k
        if i == 0:
            p[0] = self.first
            return self.nfirst
        k = slot_at(self.data, self.chain[i])
        p[0] = (<char*>k) + HDR_SIZE
        return <Py_ssize_t>self.h.class_size[k.cls] - HDR_SIZE

    cdef uint32_t _nparts(self) noexcept:
        return 1 + (self.chain[0] if self.chain != NULL else 0)

    cdef void _copy(self, char *out, Py_ssize_t n) noexcept:
        """The first n bytes of the value into out."""
        cdef uint32_t i
        cdef char *p
        cdef Py_ssize_t got = 0, take
        for i in range(self._nparts()):
            if got >= n:
                break
            take = min(self._part(i, &p), n - got)
            memcpy(out + got, p, take)
            got += take

    def head(self, Py_ssize_t n):
        """A bytes copy of the value's first n bytes (all of it if shorter)."""
        n = max(0, min(n, self.vlen))
        out = PyBytes_FromStringAndSize(NULL, n)
        self._copy(PyBytes_AS_STRING(out), n)
        return out

    def tobytes(self):
        """A bytes copy of the whole value."""
        return self.head(self.vlen)

    def views(self, Py_ssize_t start=0):
        """Read-only memoryviews of the value from `start` to its end, in order, one per part (no copy)."""
        cdef uint32_t i
        cdef char *p
        cdef Py_ssize_t pos = 0, n, left = self.vlen
        cdef _Piece pc
        out = []
        for i in range(self._nparts()):
            if left <= 0:
                break
            n = min(self._part(i, &p), left)
            left -= n
            if pos + n > start:
                pc = _Piece.__new__(_Piece)
                pc.owner = self
                if start > pos:
                    pc.p = p + (start - pos)
                    pc.n = n - (start - pos)
                else:
                    pc.p = p
                    pc.n = n
                out.append(memoryview(pc))
            pos += n
        return out

    def send(self, int fd, bytes prefix, Py_ssize_t start=0):
        """`prefix`, then the value from `start` to its end, written to socket `fd` by one non-blocking
        sendmsg(2) (MSG_NOSIGNAL): no Python object per part. The kernel copies what it takes before the
        call returns, so nothing it took references the mapping afterwards (a pin need not outlive the call
        for those bytes). -> bytes taken (may be fewer than all: the caller writes the rest, e.g. as views
        from start + what was taken past the prefix), 0 when the socket takes nothing now (EAGAIN), -1 on
        any other error (nothing taken: the caller's transport, writing it, meets the error itself)."""
        cdef iovec iov[SEND_IOV]
        cdef msghdr msg
        cdef uint32_t i
        cdef int k = 0
        cdef char *p
        cdef Py_ssize_t pos = 0, n, left = self.vlen
        cdef ssize_t sent
        if PyBytes_GET_SIZE(prefix):
            iov[0].iov_base = PyBytes_AS_STRING(prefix)
            iov[0].iov_len = PyBytes_GET_SIZE(prefix)
            k = 1
        for i in range(self._nparts()):
            if left <= 0 or k >= SEND_IOV:
                break
            n = min(self._part(i, &p), left)
            left -= n
            if pos + n > start:
                if start > pos:
                    iov[k].iov_base = p + (start - pos)
                    iov[k].iov_len = n - (start - pos)
                else:
                    iov[k].iov_base = p
                    iov[k].iov_len = n
                k += 1
            pos += n
        if k == 0:
            return 0
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = iov
        msg.msg_iovlen = k
        with nogil:
            sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
            while sent < 0 and errno == EINTR:
                sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        if sent < 0:
            return 0 if errno == EAGAIN else -1
        return sent
