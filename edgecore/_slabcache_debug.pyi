"""Type stub of the extension edgecore._slabcache_debug (ext/slabcache_debug.pyx): the classes and functions
of edgecore._slabcache, compiled again from the same parts, plus DebugSlabCache with the test hooks
(ext/slabcache/testhooks.pxi). Only tests use it, through edgecore.cache.debug_cache_class().
"""

# The module compiles the same parts again: its SlabCache and functions have exactly edgecore._slabcache's
# API (a distinct class at run time, the same shape for the type checker), so the stub says it once.
from ._slabcache import Pinned as Pinned
from ._slabcache import SlabCache as SlabCache
from ._slabcache import _class_sizes as _class_sizes
from ._slabcache import _page_size_for as _page_size_for

class DebugSlabCache(SlabCache):
    def _test_contains(self, needle: bytes) -> bool: ...
    def _test_check(self) -> list[str]: ...
    def _test_pins(self) -> list[tuple[int, int, int, int]]: ...
    def _test_hold_shard_lock(
        self, shard: int, fd: int, scribble: bool = True, notify_fd: int = -1
    ) -> None: ...
    @staticmethod
    def _test_constants() -> dict[str, int]: ...
    def _test_timed_purge_tenant(self, tenant: int, budget: int = ...) -> tuple[int, list[int]]: ...
