# cython: language_level=3
# slabcache_debug.pyx -- edgecore._slabcache_debug: the slab cache of edgecore._slabcache, compiled from the
# very same parts (ext/slabcache/parts.pxi), plus the test hooks of ext/slabcache/testhooks.pxi.
#
# Owns: nothing of its own but DebugSlabCache (testhooks.pxi). Its SlabCache is a separate class from the
# production module's, built from the same source; caches of the two modules never share a mapping.
# Invariants: production code never imports this module; tests that need a hook get a Cache built on it
# from edgecore.cache.debug_cache_class(). setup.py builds it on every install (see setup.py for why).
# Must never: contain code of its own beyond the include lines, or the two modules would drift apart.

from slabcache cimport *  # the layout contract (ext/slabcache.pxd)

include "slabcache/parts.pxi"
include "slabcache/testhooks.pxi"
