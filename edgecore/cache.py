"""The thin Python face of the shared-memory slab cache (the extension edgecore._slabcache).

Owns: the `Cache` type the proxy uses, tag/tenant ids, and the shape of the cache stats.
Invariants: a `Cache` is constructed once in the parent before workers fork; every process then uses the
inherited object and sees the same entries. `lookup`/`store`/`delete` are one C call each (the methods are the
extension's own, not Python wrappers). Entries with `now >= expires` are never returned. A lookup returns a
copy of the stored bytes, so a transport may keep it as long as it likes; lookup_pinned returns a value
longer than min_len as a `Pinned` instead: read in place from the mapping, its object pinned (never moved,
overwritten or freed, even when evicted, purged or replaced: it is only unlinked) until the Pinned and every
view it gave are gone; a dead worker's pins are released by the supervisor (release_pins). The pinned bytes
are bounded (at most half of a shard's pages, MAX_PINS objects per shard: past that lookup_pinned copies) and
counted in bytes_used until freed.
Must never: wrap the hot-path methods in Python code, hold Python objects in the mapping, or let an exception
other than MemoryError, ValueError or an edgecore.errors type escape.

The extension's methods, as the proxy calls them:
    lookup(key: bytes, now: float, tenant: int | None = None) -> tuple[bytes, float, int] | None
                                        # value,expires,flags; with tenant, another's is a miss
    lookup_pinned(key: bytes, now: float, min_len: int, tenant: int | None = None)
        -> tuple[bytes | Pinned, float, int] | None   # a value above min_len pinned in place
    release_pins(pid: int) -> int                                             # a dead worker's pins
    store(key: bytes, value: bytes, now: float, expires: float, flags: int = 0, tenant: int = 0,
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

The arena can live in a named file (config `cache_file`, usually on /dev/shm): open_cache_file() opens it,
takes its flock (one edgecore per file: a second one gets CacheFileInUse, naming the file) and re-attaches to
the cache a previous edgecore left (the file: a 4 KiB header, then the same mapping an anonymous cache of
the same arguments has) when everything its header records matches this build and this config
(ext/slabcache/arena.pxi checks magic, layout version, struct sizes, size, arguments, class table, hash seed
and ARENA_FORMAT, the facts about stored values that live in Python: entry.py's format), else starts cold. An
upgrade hands the running file's descriptor over (the same open file, so the same flock): it is attached
shared, or, when incompatible, replaced by a new file at the same path (the old process keeps its inode).

Tests that need the extension's `_test_*` hooks use `debug_cache_class()`: the same Cache on
edgecore._slabcache_debug, built from the same source plus the hooks; production never imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import TYPE_CHECKING, Any, Self, cast

import mmh3

from edgecore._slabcache import Pinned, SlabCache
from edgecore.errors import CacheError

from . import entry

if TYPE_CHECKING:
    from edgecore._slabcache_debug import DebugSlabCache

__all__ = [
    "ARENA_FORMAT",
    "Cache",
    "CacheFileInUse",
    "DEFAULT_MAX_OBJECT_SIZE",
    "MAX_TAGS",
    "Pinned",
    "debug_cache_class",
    "open_cache_file",
]

log = logging.getLogger("edgecore")

# Facts the extension also knows (ext/slabcache.pxd, SlabCache.__cinit__'s defaults);
# tests/test_cache.py::test_python_facts_match_the_extension fails if they ever differ.
DEFAULT_MAX_OBJECT_SIZE = 1 << 20
MAX_TAGS = 8

# What a stored value means, beyond the slab layout (which the extension checks itself): a cache file written
# under other facts is never re-attached. Change entry.VERSION (or anything named here) and files start cold.
ARENA_FORMAT = (
    f"entry={entry.VERSION};meta={entry.META.format};flags={entry.FLAG_PLAIN},{entry.FLAG_VARY},"
    f"{entry.FLAG_RESPONSE};eflags={entry.E_MUST_REVALIDATE},{entry.E_NO_CACHE};tag=mmh3x64-0"
)


def arena_compat(fmt: str | None = None) -> int:
    """The 64-bit id of a format description (default ARENA_FORMAT), recorded in a cache file's header."""
    return int(mmh3.hash64((ARENA_FORMAT if fmt is None else fmt).encode(), 0, signed=False)[0])


if TYPE_CHECKING:
    _FaceBase = SlabCache
else:
    _FaceBase = object


class _CacheFace(_FaceBase):
    """What Cache adds to the extension type (a mixin at run time, typed against SlabCache), shared by
    Cache and the debug-backed DebugCache so the two cannot drift apart."""

    file_fd: int = -1  # a cache file's descriptor (open_cache_file), -1 for an anonymous mapping
    file_path: str | None = None

    def __init__(
        self,
        capacity_bytes: int,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
        shards: int = 0,
        avg_object_size: int = 1024,
        growth: float = 1.0625,
        fd: int = -1,
        compat: int = 0,
        exclusive: bool = True,
        fresh: bool = False,
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


class CacheFileInUse(Exception):
    """Another running edgecore holds the cache file (its flock)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"cache_file {path} is in use by another running edgecore (take it over with "
            "`serve --upgrade-from`, or give this one another cache_file)"
        )
        self.path = path


def open_cache_file(
    path: str,
    capacity_bytes: int,
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    *,
    handed_fd: int | None = None,
    cls: type[Cache] | None = None,
) -> Cache:
    """The cache in file `path`: re-attached when compatible, else cold (the reason logged). Without
    handed_fd, the file is opened (created 0600 if missing) and flocked: CacheFileInUse when another process
    holds it. With handed_fd (an upgrade: the running edgecore's own descriptor of the file), the arena is
    shared with it; when incompatible, a new file replaces path (unlinked first: the old process keeps its
    mapping) and starts cold. The descriptor stays open (the flock lives with it; forked workers share it);
    the Cache carries it as .file_fd, the path as .file_path. MemoryError when it cannot be allocated."""
    make = cls or Cache
    compat = arena_compat()
    if handed_fd is not None:
        try:
            c = make(capacity_bytes, max_object_size, fd=handed_fd, compat=compat, exclusive=False)
        except CacheError as e:
            log.warning("cache file %s: %s; starting cold in a new file", path, e)
            os.close(handed_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            return _tag_file(c, handed_fd, path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheFileInUse(path)
        c = make(capacity_bytes, max_object_size, fd=fd, compat=compat, exclusive=True)
    except BaseException:
        os.close(fd)
        raise
    info = c.arena_info or {}
    if info.get("attached"):
        how = "stopped cleanly" if info["left"] == "clean" else "did not stop cleanly: locks checked"
        log.info(
            "cache file %s: re-attached (the previous process %s; %d shard(s) wiped)",
            path,
            how,
            info["wiped_shards"],
        )
    else:
        log.info("cache file %s: cold start (%s)", path, info["reason"])
    return _tag_file(c, fd, path)


def _tag_file(c: Cache, fd: int, path: str) -> Cache:
    c.file_fd = fd
    c.file_path = path
    return c


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
