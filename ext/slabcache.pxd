# slabcache.pxd -- the contract of the shared-memory slab cache: the layout of the one mapping.
#
# Owns: every struct that lives in the shared mapping, and the C helpers from slabcache_support.h.
# Invariants: the mapping holds plain bytes, integers, doubles and process-shared mutexes only; every
# reference inside it is an offset (u64 from the mapping base) or a slot ref (u32, 8-byte units inside one
# shard's data region, 0 = none), never a pointer, so every forked worker can use it at its own address.
# Must never: store a PyObject pointer or an absolute address in the mapping; change a struct without
# bumping SC_MAGIC.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass

cdef extern from "slabcache_support.h" nogil:
    uint64_t sc_hash64(const void *key, size_t n)
    uint32_t sc_fastrange32(uint32_t x, uint32_t n)
    int sc_mutex_init(pthread_mutex_t *m)
    int sc_mutex_lock(pthread_mutex_t *m)
    void sc_mutex_consistent(pthread_mutex_t *m)
    void sc_mutex_unlock(pthread_mutex_t *m)
    uint32_t sc_load32(const uint32_t *p)
    void sc_store32(uint32_t *p, uint32_t v)
    uint32_t sc_add32(uint32_t *p, uint32_t v)
    uint32_t sc_sub32(uint32_t *p, uint32_t v)
    double sc_now()
    int sc_pid_alive(int pid)
    int sc_read_byte(int fd)
    int sc_write_byte(int fd)

# Slot states (slot_hdr.state).
cdef enum:
    SLOT_FREE = 0       # on its class's free list
    SLOT_SMALL = 1      # live, in the probationary FIFO (S3-FIFO "S")
    SLOT_MAIN = 2       # live, in the main CLOCK/FIFO-with-reinsertion ("M")
    SLOT_CHUNK = 3      # a continuation chunk of a chained large object (prev = its head's ref, next = index)
    SLOT_DRAINED = 4    # free, in a page being emptied by a page steal (on no list)
    SLOT_DEAD = 5       # unlinked while pinned (pins.pxi): on no list or chain, freed at its last unpin

cdef enum:
    SC_MAGIC = 0x45444743       # "EDGC" + layout version below
    SC_VERSION = 7              # 4: chained index (slot_hdr.hnext/hash32, u32 bucket heads); 5: pin table;
                                # 6: tenant table; 7: slot_hdr without stored_at (40 bytes)
    MAX_TENANTS = 256           # rows of the tenant table (a power of two: open addressing by tenant id)
    TEN_REVOKED = 1             # tenant_row.flags: revoked (nothing of the tenant is stored)
    TEN_NAME_MAX = 64           # bytes of a tenant's name kept in its row (longer names are not kept)
    HDR_SIZE = 40               # sizeof(slot_hdr), checked at start-up
    MAX_CLASSES = 160
    MAX_TAGS = 8
    MAX_BANS = 32
    BAN_PREFIX_MAX = 256
    PAGE_UNASSIGNED = 0xFF
    FREQ_MAX = 3
    EVICT_STEPS_MAX = 64        # bound on the reinsertion steps one eviction may take
    CHUNK_SLOTS = 512           # bound on slots a purge/sweep visits per shard-lock hold
    PURGE_CHUNK_SLOTS = 64      # what a purge's walk visits per hold (bench/tenant_purge.py: ~8 us a hold)
    HAS_TENANT = 0x80           # slot_hdr.nx bit: an 8-byte tenant id precedes the tags
    CHAINED = 0x40              # slot_hdr.nx bit: a chain table follows the tags (value spills into chunks)
    NTAGS_MASK = 0x3F
    MAX_PAGE = 65536
    MIN_PAGE = 16384
    MAX_PINS = 64               # pin table entries per shard (pins.pxi): distinct (object, process) pairs

# One object slot: the header, then [tenant u64 if HAS_TENANT][tags u64 x ntags]
# [if CHAINED: u32 nchunks, u32 chunk refs x nchunks, padded to 8][key][value (its first part if CHAINED)].
# A chained object's head is a slot of a chunk class (16, 8, 4 or 2 slots a page); its chunks are slots of the
# head's class but the last, which is of the best-fit class for what is left: a header (state SLOT_CHUNK,
# prev = head ref, next = position) followed by class size - HDR_SIZE value bytes each, in chain order.
ctypedef struct slot_hdr:
    uint32_t prev           # towards the queue head (newer); on the free list, the previous free slot
    uint32_t next           # towards the queue tail (older)
    double expires
    uint32_t value_len
    uint32_t ban_seq        # the ban sequence number when stored: only newer bans can match it
    uint16_t key_len
    uint16_t flags          # opaque to the cache, returned by lookup
    uint8_t state           # SLOT_*
    uint8_t freq            # hits since insertion / last reinsertion, saturating at FREQ_MAX
    uint8_t nx              # ntags | HAS_TENANT
    uint8_t cls
    uint32_t hnext          # the next live object in the same index bucket (0 = end of the chain)
    uint32_t hash32         # low 32 bits of the key hash (its bucket; a cheap check before the key compare)

ctypedef struct class_state:
    uint32_t small_head, small_tail, main_head, main_tail, free_head
    uint32_t nsmall, nmain, nfree, npages
    uint32_t _pad
    uint64_t demand         # decayed slot bytes requested by stores: the page share this class deserves

# One pin table entry: `count` views of the object whose head slot is `ref`, held by process `pid`.
ctypedef struct pin_t:
    uint32_t ref            # head slot ref; 0 = a free entry
    int32_t pid
    uint32_t count
    uint32_t _pad

ctypedef struct shard_t:
    pthread_mutex_t lock
    uint64_t hits, misses, stores, evictions, expirations, purged, deletes, refused, steals, recoveries
    uint64_t items, data_bytes, extra_bytes, slot_bytes   # live objects: key+value, tenant+tags, slot sizes
    uint64_t demand_total
    uint64_t index_off, ghost_off, pagedesc_off, data_off  # from the mapping base
    uint32_t nbuckets, max_items, nghost, npages, pages_used
    uint32_t _pad
    class_state classes[MAX_CLASSES]
    # pins (pins.pxi): objects whose bytes a process's transports hold views of
    uint64_t pinned_bytes   # slot bytes of the distinct objects pinned (live or dead), bounded by half the pages
    uint64_t dead_bytes     # slot bytes of SLOT_DEAD objects (unlinked, kept until their last pin goes)
    uint32_t dead_items, npins
    pin_t pins[MAX_PINS]

ctypedef struct ban_t:
    uint32_t active         # 0 free, 1 live (written last, read first)
    uint32_t seq
    uint32_t kind           # BAN_TAG / BAN_TENANT / BAN_PREFIX
    int32_t owner_pid
    uint64_t ident
    uint64_t registered_pass
    uint32_t prefix_len
    uint32_t _pad
    unsigned char prefix[BAN_PREFIX_MAX]

cdef enum:
    BAN_TAG = 1
    BAN_TENANT = 2
    BAN_PREFIX = 3
    BAN_ANYT_PREFIX = 4     # the key past its tenant part ("N:name") starts with prefix: every tenant
    BAN_ANYT_URL = 5        # the key past its tenant part is prefix, or prefix + "#..." (its variants)

ctypedef struct tenant_row:
    uint64_t id             # tenant id (0 = free row); written once by compare-and-swap, never freed
    uint64_t bytes          # key + value bytes of the tenant's live entries (atomic)
    uint64_t items          # the tenant's live entries (atomic)
    uint64_t quota          # key + value bytes the tenant may hold (0 = no quota)
    uint32_t flags          # TEN_REVOKED
    uint32_t explicit       # 1: set by tenant_set (config or revocation), not only seen on a store
    uint32_t name_len       # bytes of name (0 = not named yet; written after the name, with release order)
    uint32_t _pad
    unsigned char name[TEN_NAME_MAX]   # the tenant's name as the workers saw it (for GET /tenants)

ctypedef struct header_t:
    uint64_t magic
    uint64_t mapping_size
    uint64_t capacity
    uint64_t max_object
    uint64_t fixed_meta     # header + shard structs + index + ghost + page descriptors
    uint64_t shards_off, shard_stride
    uint32_t nshards, nclasses, page_size, avg_hint
    uint32_t class_size[MAX_CLASSES]
    uint32_t class_per_page[MAX_CLASSES]
    # bans (purge by tag/tenant/prefix in progress)
    pthread_mutex_t ban_lock
    uint32_t ban_seq
    uint32_t nbans_active
    ban_t bans[MAX_BANS]
    # background sweep cursor
    pthread_mutex_t sweep_lock
    uint64_t sweep_pass
    uint32_t sweep_shard, sweep_page, sweep_slot
    uint32_t _pad2
    # the tenant table (slabcache/tenants.pxi): per-tenant live bytes, quota and flags, shared by all workers
    tenant_row tenants[MAX_TENANTS]
