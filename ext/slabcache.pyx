# cython: language_level=3
# slabcache.pyx -- the sharded, shared-memory slab cache (edgecore._slabcache).
#
# Owns: one MAP_SHARED mapping of exactly the configured size (anonymous, or a cache file whose first 4 KiB
# are the arena header of slabcache/arena.pxi, so a later process can re-attach to it), holding the header,
# the ban table, per-shard locks/counters/index/ghost/page tables, and the slab pages with every object's
# bytes.
# Invariants:
#   * nothing outside the mapping is needed to use it: a worker forked after construction sees the same cache;
#   * every shard structure is touched only under that shard's robust, process-shared mutex; a mutex found
#     EOWNERDEAD means the shard may be half-written, so the shard is wiped before the mutex is made consistent;
#   * a lookup compares the full key bytes; a hash collision never serves another key's bytes; a lookup that
#     names a tenant never serves an entry stored for another tenant, even under equal key bytes;
#   * the tenant table (slabcache/tenants.pxi) counts every live entry of a tenant exactly, and a store past
#     its tenant's quota evicts only that tenant's entries, or is refused;
#   * one eviction does at most EVICT_STEPS_MAX reinsertion steps; purges and sweeps hold a shard lock for at
#     most CHUNK_SLOTS slots; bytes of purged/deleted objects are zeroed before the slot is reused;
#   * a pinned object's slots (slabcache/pins.pxi) are never moved, overwritten or freed until its last pin goes.
# Must never: call back into Python while holding a lock, let any exception other than MemoryError,
# ValueError or an edgecore.errors type escape, or store a pointer in the mapping.
#
# Where things are: this file only assembles the parts in ext/slabcache/ (see slabcache/parts.pxi for the
# list and reading order); the mapping's structs live in slabcache.pxd, the C helpers in
# slabcache_support.h. The same parts plus slabcache/testhooks.pxi make edgecore._slabcache_debug
# (ext/slabcache_debug.pyx), which tests use; this production module has no test hooks.
# The C-level directives (boundscheck, wraparound, cdivision, initializedcheck) are set by setup.py.

from slabcache cimport *  # the layout contract (ext/slabcache.pxd), found beside this file

include "slabcache/parts.pxi"
