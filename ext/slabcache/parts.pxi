# slabcache/parts.pxi -- every part of the slab cache, in dependency order (each part opens with what it
# owns and its invariants). Included by ext/slabcache.pyx (edgecore._slabcache, production) and
# ext/slabcache_debug.pyx (edgecore._slabcache_debug: the same parts plus testhooks.pxi).
#
# Reading order: slots -> shard -> lists -> index -> ghost -> lifecycle -> eviction -> alloc -> steal
# -> chains -> pins -> recovery -> bans -> sweep -> tenants -> layout -> arena -> stats -> api.

include "decls.pxi"
include "slots.pxi"
include "shard.pxi"
include "lists.pxi"
include "index.pxi"
include "ghost.pxi"
include "lifecycle.pxi"
include "eviction.pxi"
include "alloc.pxi"
include "steal.pxi"
include "chains.pxi"
include "pins.pxi"
include "recovery.pxi"
include "bans.pxi"
include "sweep.pxi"
include "tenants.pxi"
include "layout.pxi"
include "arena.pxi"
include "stats.pxi"
include "api.pxi"
