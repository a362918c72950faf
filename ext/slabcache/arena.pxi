# slabcache/arena.pxi -- the arena in a named (shared-memory) file: its header, and attaching to it again.
#
# Owns: arena_hdr (the first ARENA_HDR_BYTES of a cache file, before the mapping layout.pxi describes: the
# same one an anonymous cache of the same arguments has, so the file is cache_size + 4 KiB),
# arena_open (map a file: re-attach when every fact matches and the structure checks out, else start cold),
# arena_recover (make a re-attached mapping safe to use after its previous users died).
# Invariants:
#   * a file is re-attached only when its arena header's magic, arena version, slab layout version, struct
#     sizes, file size, construction arguments, class table, hash seed and the caller's `compat` (the Python-
#     side facts about stored values, edgecore.cache.ARENA_FORMAT) all equal what this build would write, its
#     checksum holds, and the slab header and every shard's geometry equal the plan; anything else is a cold
#     start: the file is truncated, re-sized, allocated (posix_fallocate, so a full tmpfs fails here with
#     ENOSPC instead of a SIGBUS later) and written fresh. The reason is returned, never a crash;
#   * `exclusive` attach (no other process maps the file: the caller holds its flock) checks every mutex
#     without blocking: one whose holder died (EOWNERDEAD) or that is held by nobody alive wipes its shard
#     (recovery.pxi's shard_wipe) and is re-initialised; a shard whose counters are out of range is wiped;
#     a shared attach (an upgrade: the old process still uses it) touches no lock;
#   * a cold start never truncates a file another process maps (the caller makes a new file instead).
# Must never: trust a field of the file before the checks above, or raise anything but MemoryError,
# ValueError or CacheError.

cdef extern from "<errno.h>" nogil:
    int errno
    int EOWNERDEAD
    int EBUSY

cdef extern from "<fcntl.h>" nogil:
    int posix_fallocate(int fd, long offset, long length)

cdef extern from "<unistd.h>" nogil:
    int ftruncate(int fd, long length)

cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat:
        long st_size
    int fstat(int fd, stat *buf)

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_consistent(pthread_mutex_t *m)

cdef enum:
    ARENA_HDR_BYTES = 4096
    ARENA_VERSION = 1
    ARENA_HASH_SEED = 0         # sc_hash64's seed (and edgecore.cache.Cache.tag_id's)
    ARENA_CLEAN = 1             # closed by its owner after every worker stopped
    ARENA_IN_USE = 2            # mapped by a running edgecore (or one that died)

cdef const char *ARENA_MAGIC = b"EDGECORE-ARENA"    # 14 bytes + 2 NUL in the 16-byte field

ctypedef struct arena_hdr:
    char magic[16]
    uint64_t arena_version
    uint64_t sc_magic           # (SC_MAGIC << 32) | SC_VERSION
    uint64_t file_size
    uint64_t capacity_req, max_object, shards_req, avg_req
    double growth
    uint64_t compat             # hash of the Python-side facts (entry format, ...), from the caller
    uint64_t hash_seed
    uint64_t class_sum          # sc_hash64 of the class size table
    uint32_t sizes[8]           # sizeof header_t, shard_t, slot_hdr, ban_t, pthread_mutex_t, class_state
    uint64_t checksum           # sc_hash64 of every byte above
    # mutable part
    uint32_t state              # ARENA_CLEAN | ARENA_IN_USE
    int32_t owner_pid           # the supervisor that mapped it last
    uint64_t attaches           # how many times it was re-attached
    double created_at


cdef void arena_expect(arena_hdr *a, const layout_plan *p, list sizes, capacity_bytes, shards, growth,
                       uint64_t compat, size_t file_size) noexcept:
    """The static part of the header this build writes for these arguments."""
    cdef uint32_t tbl[MAX_CLASSES]
    cdef size_t i, n = len(sizes)
    memset(a, 0, sizeof(arena_hdr))
    memcpy(a.magic, ARENA_MAGIC, 14)
    a.arena_version = ARENA_VERSION
    a.sc_magic = (<uint64_t>SC_MAGIC << 32) | SC_VERSION
    a.file_size = file_size
    a.capacity_req = <uint64_t>capacity_bytes
    a.max_object = p.maxobj
    a.shards_req = <uint64_t>shards
    a.avg_req = p.avg
    a.growth = growth
    a.compat = compat
    a.hash_seed = ARENA_HASH_SEED
    for i in range(n):
        tbl[i] = <uint32_t>sizes[i]
    a.class_sum = sc_hash64(tbl, n * 4)
    a.sizes[0] = sizeof(header_t)
    a.sizes[1] = sizeof(shard_t)
    a.sizes[2] = sizeof(slot_hdr)
    a.sizes[3] = sizeof(ban_t)
    a.sizes[4] = sizeof(pthread_mutex_t)
    a.sizes[5] = sizeof(class_state)
    a.checksum = sc_hash64(a, <size_t>(<char*>&a.checksum - <char*>a))


cdef str arena_mismatch(const arena_hdr *got, const arena_hdr *want):
    """None when the static header matches; else why not (the first difference, for the log)."""
    cdef size_t n = <size_t>(<char*>&want.checksum - <char*>want)
    if memcmp(got.magic, want.magic, 16) != 0:
        return "not an edgecore cache file (magic)"
    if got.arena_version != want.arena_version:
        return "arena version %d, this build writes %d" % (got.arena_version, want.arena_version)
    if got.checksum != sc_hash64(got, n):
        return "header checksum mismatch (corrupt header)"
    if got.sc_magic != want.sc_magic:
        return "slab layout version %d, this build uses %d" % (got.sc_magic & 0xFFFFFFFF, SC_VERSION)
    if memcmp(got.sizes, want.sizes, sizeof(want.sizes)) != 0:
        return "struct sizes differ (a build with another layout)"
    if got.file_size != want.file_size:
        return "file size %d in the header, %d expected" % (got.file_size, want.file_size)
    if got.capacity_req != want.capacity_req or got.max_object != want.max_object:
        return "cache_size/max_object_size %d/%d, configured %d/%d" % (
            got.capacity_req, got.max_object, want.capacity_req, want.max_object)
    if got.shards_req != want.shards_req or got.avg_req != want.avg_req or got.growth != want.growth:
        return "shards/avg_object_size/growth differ"
    if got.class_sum != want.class_sum:
        return "size class table differs"
    if got.hash_seed != want.hash_seed:
        return "hash seed differs"
    if got.compat != want.compat:
        return "stored entry format differs (edgecore.cache.ARENA_FORMAT)"
    if memcmp(got, want, n) != 0:
        return "header differs"
    if got.state != ARENA_CLEAN and got.state != ARENA_IN_USE:
        return "unknown state %d" % got.state
    return None


cdef str arena_geometry_mismatch(header_t *h, const layout_plan *p, list sizes):
    """None when the slab header and every shard's geometry equal what layout_write writes for *p."""
    cdef size_t i, off, n = len(sizes)
    cdef shard_t *sh
    cdef size_t stride = p.meta + p.npages * p.page
    if h.magic != ((<uint64_t>SC_MAGIC << 32) | SC_VERSION):
        return "slab header magic"
    if (h.mapping_size != p.cap or h.capacity != p.cap or h.max_object != p.maxobj or h.nshards != p.nsh
            or h.nclasses != n or h.page_size != p.page or h.avg_hint != p.avg or h.shards_off != p.hdr_bytes
            or h.shard_stride != stride or h.fixed_meta != p.hdr_bytes + p.nsh * p.meta):
        return "slab header geometry"
    for i in range(n):
        if h.class_size[i] != <uint32_t>sizes[i] or h.class_per_page[i] != p.page // <size_t>sizes[i]:
            return "slab class table"
    for i in range(p.nsh):
        sh = shard_at(h, <uint32_t>i)
        off = p.hdr_bytes + i * stride
        if (sh.index_off != off + p.shard_bytes or sh.ghost_off != sh.index_off + p.nb * 4
                or sh.pagedesc_off != sh.ghost_off + p.nb * 2 or sh.data_off != off + p.meta
                or sh.nbuckets != p.nb or sh.nghost != p.nb or sh.npages != p.npages):
            return "shard %d geometry" % i
    return None


cdef int mutex_recover(pthread_mutex_t *m) noexcept nogil:
    """For a mapping nobody else uses: 0 when m was free; 1 when its holder died inside (EOWNERDEAD) or it
    is held by nobody alive: then m is free again and the structure it guards must be repaired."""
    cdef int rc = pthread_mutex_trylock(m)
    if rc == 0:
        pthread_mutex_unlock(m)
        return 0
    if rc == EOWNERDEAD:
        pthread_mutex_consistent(m)
        pthread_mutex_unlock(m)
        return 1
    sc_mutex_init(m)    # EBUSY / ENOTRECOVERABLE with no other user: a dead holder's leftover
    return 1


cdef uint32_t arena_recover(header_t *h) noexcept nogil:
    """After an exclusive re-attach: every lock usable, every shard consistent. Returns shards wiped."""
    cdef uint32_t i, k, wiped = 0
    cdef uint64_t npg
    cdef sctx c
    cdef int bad
    if mutex_recover(&h.ban_lock) or mutex_recover(&h.sweep_lock):
        bans_recount(h)
    for i in range(h.nshards):
        ctx_init(&c, h, i)
        bad = mutex_recover(&c.sh.lock)
        if not bad:
            npg = 0
            for k in range(h.nclasses):
                npg += c.sh.classes[k].npages
            bad = (c.sh.pages_used > c.sh.npages or c.sh.items > c.sh.max_items or npg > c.sh.npages
                   or c.sh.slot_bytes > <uint64_t>c.sh.npages * h.page_size)
        if bad:
            shard_wipe(&c)
            wiped += 1
    return wiped


cdef char* arena_map_fd(int fd, size_t size) noexcept:
    cdef void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if m == MAP_FAILED:
        return NULL
    return <char*>m


cdef tuple arena_open(int fd, const layout_plan *p, list sizes, capacity_bytes, shards, growth,
                      uint64_t compat, bint exclusive, bint fresh):
    """Map cache file fd: (map base, attached, why it was not attached (or None), shards wiped, how the
    previous process left it: "clean", "in-use" (it died, or still runs: an upgrade) or None when cold).
    The slab mapping starts ARENA_HDR_BYTES into the file. Raises MemoryError/CacheError when the file
    cannot be sized, allocated or mapped, or the fresh layout cannot be written."""
    cdef size_t size = ARENA_HDR_BYTES + p.cap
    cdef arena_hdr want
    cdef arena_hdr *a
    cdef stat st
    cdef char *m = NULL
    cdef int rc
    cdef uint32_t wiped = 0
    arena_expect(&want, p, sizes, capacity_bytes, shards, growth, compat, size)
    why = "a new file" if fresh else None
    if why is None:
        if fstat(fd, &st) != 0:
            why = "cannot stat the file"
        elif st.st_size == 0:
            why = "an empty file"
        elif <size_t>st.st_size != size:
            why = "file size %d, %d expected (truncated or another cache_size)" % (st.st_size, size)
    if why is None:
        m = arena_map_fd(fd, size)
        if m == NULL:
            raise MemoryError("mmap of the %d-byte cache file failed" % size)
        a = <arena_hdr*>m
        why = arena_mismatch(a, &want)
        if why is None:
            why = arena_geometry_mismatch(<header_t*>(m + ARENA_HDR_BYTES), p, sizes)
            if why is not None:
                why = "structure check failed: " + why
        if why is None:
            left = "clean" if a.state == ARENA_CLEAN else "in-use"
            if exclusive:
                wiped = arena_recover(<header_t*>(m + ARENA_HDR_BYTES))
            a.state = ARENA_IN_USE
            a.owner_pid = getpid()
            a.attaches += 1
            return (<size_t>m, True, None, wiped, left)
        munmap(m, size)
        m = NULL
    if not exclusive:
        raise CacheError("cache file in use by another process is incompatible: " + why)
    # cold start: a zeroed file of exactly the right size, its blocks allocated now
    if ftruncate(fd, 0) != 0 or ftruncate(fd, <long>size) != 0:
        raise CacheError("cannot size the cache file to %d bytes" % size)
    rc = posix_fallocate(fd, 0, <long>size)
    if rc != 0:
        ftruncate(fd, 0)
        raise MemoryError("cannot allocate %d bytes for the cache file (%s)" % (
            size, "no space left on its file system" if rc == 28 else "error %d" % rc))
    m = arena_map_fd(fd, size)
    if m == NULL:
        raise MemoryError("mmap of the %d-byte cache file failed" % size)
    rc = layout_write(m + ARENA_HDR_BYTES, p, sizes)
    if rc != 0:
        munmap(m, size)
        raise CacheError("cannot initialise the cache layout (%d)" % rc)
    a = <arena_hdr*>m
    memcpy(a, &want, sizeof(arena_hdr))
    a.created_at = sc_now()
    a.owner_pid = getpid()
    a.state = ARENA_IN_USE      # written last: a file half-initialised by a dead process fails the checksum
    return (<size_t>m, False, why, 0, None)
