"""The thin Python face of the shared-memory slab cache (the extension edgecore._slabcache).

Owns: the `Cache` type the proxy uses, tag/tenant ids, and the shape of the cache stats.
Invariants: a `Cache` is constructed once in the parent before workers fork; every process then uses the
inherited object and sees the same entries. `lookup`/`store`/`delete` are one C call each (the methods are the
extension's own, not Python wrappers). Entries with `now >= expires` are never returned. A lookup returns a
copy of the stored bytes, so a transport may keep it as long as it likes.
Must never: wrap the hot-path methods in Python code, hold Python objects in the mapping, or let an exception
other than MemoryError, ValueError or an edgecore.errors type escape.

The extension's methods, as the proxy calls them:
    lookup(key: bytes, now: float, tenant: int | None = None) -> tuple[bytes, float, float, int] | None
                                        # value,stored_at,expires,flags; with tenant, another's is a miss
    store(key: bytes, value: bytes, stored_at: float, expires: float, flags: int = 0, tenant: int = 0,
          tags: tuple[int, ...] = (), only_if_absent: bool = False) -> bool   # False when refused
                                        # (only_if_absent: or when a live entry holds key: test-and-set)
    delete(key: bytes) -> bool
    purge_tag(tag: int) -> int;  purge_tenant(tenant: int) -> int;  purge_prefix(prefix: bytes) -> int
    sweep(budget: int = 1024) -> int
    tenant_set(tenant, quota=None, revoked=None, name=None, explicit=True) -> dict | None  # the tenant table
    tenant_rows() -> list[dict];  tenant_revoked(tenant: int) -> bool   # (ext/slabcache/tenants.pxi)
    purge_any_tenant(rest: bytes, url: bool) -> int;  purge_tag_tenant(tag: int, tenant: int) -> int
    soft_purge(kind, ident, match, layout, flags_mask, now) -> int      # mark stale in place
    stats() -> dict;  layout() -> dict;  shard_of(key: bytes) -> int;  close() -> None
Their precise signatures are in edgecore/_slabcache.pyi, which mypy checks callers against.

Tests that need the extension's `_test_*` hooks use `debug_cache_class()`: the same Cache on
edgecore._slabcache_debug, built from the same source plus the hooks; production never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, cast

import mmh3

from edgecore._slabcache import SlabCache

if TYPE_CHECKING:
    from edgecore._slabcache_debug import DebugSlabCache

__all__ = ["Cache", "DEFAULT_MAX_OBJECT_SIZE", "MAX_TAGS", "debug_cache_class"]

# Facts the extension also knows (ext/slabcache.pxd, SlabCache.__cinit__'s defaults);
# tests/test_cache.py::test_python_facts_match_the_extension fails if they ever differ.
DEFAULT_MAX_OBJECT_SIZE = 1 << 20
MAX_TAGS = 8

if TYPE_CHECKING:
    _FaceBase = SlabCache
else:
    _FaceBase = object


class _CacheFace(_FaceBase):
    """What Cache adds to the extension type (a mixin at run time, typed against SlabCache), shared by
    Cache and the debug-backed DebugCache so the two cannot drift apart."""

    def __init__(
        self,
        capacity_bytes: int,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
        shards: int = 0,
        avg_object_size: int = 1024,
        growth: float = 1.0625,
    ) -> None:
        # all the work happens in SlabCache.__cinit__, which receives the same arguments
        super().__init__()

    @staticmethod
    def tag_id(name: str | bytes) -> int:
        """Stable 63-bit id of a tag or tenant name (mmh3 x64-128, first half, top bit cleared)."""
        data = name.encode() if isinstance(name, str) else bytes(name)
        return int(mmh3.hash64(data, 0, signed=False)[0]) & 0x7FFF_FFFF_FFFF_FFFF

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Cache(_CacheFace, SlabCache):
    """One cache for all worker processes, bounded to exactly `capacity_bytes` of shared memory.

    `max_object_size` bounds key + value bytes (at most capacity_bytes/8); larger objects are refused by
    `store` (the proxy streams them through uncached). `shards=0` chooses a power of two giving every shard
    at least 64 pages. `avg_object_size` sizes the index (buckets = data bytes / avg / 0.75, 4 bytes each):
    the index is chained through the slot headers, so it never limits how many objects fit (objects much
    smaller than the hint only make its chains longer).
    """


_DEBUG_DOC = "Cache on edgecore._slabcache_debug: the same cache plus the `_test_*` hooks (tests only)."

if TYPE_CHECKING:

    class DebugCache(_CacheFace, DebugSlabCache):
        """Cache on edgecore._slabcache_debug: the same cache plus the `_test_*` hooks (tests only)."""


_debug_cache: type[DebugCache] | None = None


def debug_cache_class() -> type[DebugCache]:
    """For tests: the Cache type on edgecore._slabcache_debug (the same parts compiled with the `_test_*`
    hooks). Imported on first use, so production processes never load the debug module."""
    global _debug_cache
    if _debug_cache is None:
        from edgecore._slabcache_debug import DebugSlabCache

        # the class declared under TYPE_CHECKING above, made here so that importing edgecore.cache
        # does not load the debug module
        body = {"__module__": __name__, "__qualname__": "DebugCache", "__doc__": _DEBUG_DOC}
        _debug_cache = cast("type[DebugCache]", type("DebugCache", (_CacheFace, DebugSlabCache), body))
    return _debug_cache
