"""Unit tests of edgecore.cache.Cache (the Cython slab cache) in one process.

Owns: the contract of each call (lookup/store/delete/purges/sweep/stats/tag_id), the byte bound, the
metadata budget, full-key comparison on hash collisions, zeroing of purged bytes, argument validation.
Must never: sleep, or leave a mapping open (every cache is closed by its fixture or context manager).
"""

from __future__ import annotations

import inspect
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import mmh3
import pytest

from edgecore import entry
from edgecore._slabcache import SlabCache
from edgecore.cache import DEFAULT_MAX_OBJECT_SIZE, MAX_TAGS, Cache, debug_cache_class
from edgecore.errors import EdgeError

if TYPE_CHECKING:
    from edgecore.cache import DebugCache

FAR = 4e9  # 2096: fresh for any lookup below


@pytest.fixture
def cache() -> Iterator[Cache]:
    c = Cache(8 << 20, 256 * 1024)
    yield c
    c.close()


@pytest.fixture
def dcache() -> Iterator[DebugCache]:
    """The same cache on edgecore._slabcache_debug, for tests that look at the mapping's bytes."""
    c = debug_cache_class()(8 << 20, 256 * 1024)
    yield c
    c.close()


def test_store_then_lookup_returns_bytes_and_times(cache: Cache) -> None:
    assert cache.store(b"k", b"value", 100.5, 200.25, flags=7)
    got = cache.lookup(b"k", 150.0)
    assert got == (b"value", 200.25, 7)  # the time of the store is not kept: an entry's times are its value's
    assert type(got[0]) is bytes
    assert cache.lookup(b"other", 150.0) is None


def test_store_replaces_and_empty_value(cache: Cache) -> None:
    cache.store(b"k", b"one", 1.0, FAR)
    cache.store(b"k", b"", 2.0, FAR, flags=1)
    assert cache.lookup(b"k", 3.0) == (b"", FAR, 1)
    assert cache.stats()["items"] == 1


def test_expired_entry_dies_at_lookup_boundary(cache: Cache) -> None:
    cache.store(b"k", b"v", 0.0, 10.0)
    assert cache.lookup(b"k", 9.999) is not None
    assert cache.lookup(b"k", 10.0) is None  # now >= expires is dead
    s = cache.stats()
    assert s["items"] == 0 and s["expirations"] == 1
    assert cache.lookup(b"k", 0.0) is None  # removed, not just hidden


def test_delete(dcache: DebugCache) -> None:
    dcache.store(b"k", b"secret-bytes-123", 0.0, FAR)
    assert dcache.delete(b"k") is True
    assert dcache.delete(b"k") is False
    assert dcache.lookup(b"k", 1.0) is None
    assert not dcache._test_contains(b"secret-bytes-123")


@pytest.mark.parametrize("n", [0, 1, 15_000, 16_300, 16_384, 16_500, 40_000, 100_000, 256 * 1024 - 20])
def test_sizes_across_page_and_chain_boundaries(cache: Cache, n: int) -> None:
    key = b"/size/%d" % n
    value = os.urandom(n)
    assert cache.store(key, value, 0.0, FAR, tenant=3, tags=(1, 2, 3))
    assert cache.lookup(key, 1.0) == (value, FAR, 0)


def test_too_large_is_refused_and_drops_old_copy(cache: Cache) -> None:
    cache.store(b"k", b"old", 0.0, FAR)
    assert cache.store(b"k", b"x" * (256 * 1024), 0.0, FAR) is False
    assert cache.lookup(b"k", 1.0) is None
    assert cache.stats()["refused"] == 1


def test_full_key_compared_on_hash_collision() -> None:
    # find keys whose 64-bit hashes share the low 32 bits (same bucket and same fingerprint in the index)
    by_low: dict[int, bytes] = {}
    pair = None
    for i in range(400_000):
        k = b"/collide/%d" % i
        low = Cache.hash64(k) & 0xFFFFFFFF
        if low in by_low:
            pair = (by_low[low], k)
            break
        by_low[low] = k
    assert pair is not None, "no 32-bit collision among 400k keys"
    a, b = pair
    with Cache(2 << 20, 64 * 1024, shards=1) as c:
        assert c.store(a, b"value-of-a", 0.0, FAR)
        assert c.lookup(b, 1.0) is None  # b is not stored: a's bytes must not be served
        assert c.store(b, b"value-of-b", 0.0, FAR)
        assert c.lookup(a, 1.0)[0] == b"value-of-a"
        assert c.lookup(b, 1.0)[0] == b"value-of-b"
        assert c.delete(a)
        assert c.lookup(b, 1.0)[0] == b"value-of-b"


def test_hash_is_mmh3() -> None:
    for k in [b"", b"a", b"x" * 15, b"y" * 16, b"z" * 17, os.urandom(200)]:
        assert Cache.hash64(k) == mmh3.hash64(k, 0, signed=False)[0]


def test_purge_tag_tenant_prefix_counts_and_zeroes(dcache: DebugCache) -> None:
    for i in range(50):
        tags = (Cache.tag_id("even"),) if i % 2 == 0 else (Cache.tag_id("odd"),)
        dcache.store(b"/t/%d" % i, b"payload-%05d-marker" % i, 0.0, FAR, tenant=1 + i % 3, tags=tags)
    assert dcache.purge_tag(Cache.tag_id("even")) == 25
    assert dcache.lookup(b"/t/0", 1.0) is None and dcache.lookup(b"/t/1", 1.0) is not None
    assert not dcache._test_contains(b"payload-00000-marker")
    assert dcache._test_contains(b"payload-00001-marker")
    left_tenant_2 = sum(1 for i in range(1, 50, 2) if 1 + i % 3 == 2)
    assert dcache.purge_tenant(2) == left_tenant_2
    assert dcache.purge_tenant(2) == 0
    by_prefix = sum(1 for i in range(1, 50, 2) if str(i).startswith("1") and 1 + i % 3 != 2)
    assert dcache.purge_prefix(b"/t/1") == by_prefix
    s = dcache.stats()
    assert s["purged"] == 25 + left_tenant_2 + by_prefix
    assert s["items"] == sum(1 for i in range(1, 50, 2) if 1 + i % 3 != 2 and not str(i).startswith("1"))


def test_purge_of_large_chained_object_zeroes_every_chunk(dcache: DebugCache) -> None:
    marker = b"CHAINED-MARKER-"
    value = b"".join(marker + b"%06d" % i for i in range(8000))  # ~170 KB over several chunks
    dcache.store(b"/big", value, 0.0, FAR, tags=(5,))
    assert dcache._test_contains(marker + b"007999")
    assert dcache.purge_tag(5) == 1
    assert not dcache._test_contains(marker)


def test_sweep_is_bounded_and_removes_expired(cache: Cache) -> None:
    now = time.time()
    for i in range(300):
        cache.store(b"/e/%d" % i, b"v" * 50, now - 10, now - 1 if i % 3 else FAR)
    removed = 0
    for _ in range(1000):  # bounded: each call visits at most 64 slots
        got = cache.sweep(64)
        assert 0 <= got <= 64
        removed += got
        if removed == 200:
            break
    assert removed == 200
    s = cache.stats()
    assert s["items"] == 100 and s["expirations"] == 200


def test_sweep_zero_budget(cache: Cache) -> None:
    assert cache.sweep(0) == 0


def test_evictions_keep_the_byte_bound_and_hot_keys() -> None:
    with Cache(2 << 20, 128 * 1024) as c:
        hot = [b"/hot/%d" % i for i in range(20)]
        for k in hot:
            c.store(k, b"h" * 1000, 0.0, FAR)
        for i in range(20_000):
            c.store(b"/cold/%d" % i, os.urandom(100 + (i * 37) % 3000), 0.0, FAR)
            if i % 50 == 0:
                for k in hot:
                    c.lookup(k, 1.0)
        s = c.stats()
        assert s["evictions"] > 10_000
        assert s["bytes_used"] <= s["capacity_bytes"] == 2 << 20
        assert sum(1 for k in hot if c.lookup(k, 1.0) is not None) >= 18  # frequent keys survive the churn


def test_byte_bound_of_the_mapping() -> None:
    def shared_zero_maps() -> list[int]:
        sizes = []
        with open("/proc/self/maps") as f:
            for line in f:
                if "/dev/zero" in line or "SYSV" in line:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    sizes.append(hi - lo)
        return sizes

    before = shared_zero_maps()
    cap = 3 * 1024 * 1024 + 123
    c = Cache(cap, 64 * 1024)
    try:
        new = [s for s in shared_zero_maps() if s not in before or before.count(s) < 1]
        lay = c.layout()
        assert lay["mapping_size"] <= cap
        assert lay["mapping_size"] in new  # the one mapping holds everything
        assert lay["header_bytes"] + lay["shards"] * lay["shard_stride"] <= lay["mapping_size"]
        for i in range(5000):
            c.store(b"/fill/%d" % i, b"z" * ((i * 7919) % 60_000), 0.0, FAR, tags=(1, 2))
            if i % 500 == 0:
                s = c.stats()
                assert s["bytes_used"] <= s["capacity_bytes"] <= cap
                assert s["data_bytes"] + s["metadata_bytes"] <= s["bytes_used"]
    finally:
        c.close()


def test_metadata_per_object_is_at_most_64_bytes() -> None:
    with Cache(64 << 20, 1 << 20) as c:
        n = 0
        while c.store(b"https://api.example.com/v1/items/%08d" % n, b"v" * 1024, 0.0, FAR):
            n += 1
            if c.stats()["evictions"] or n > 200_000:
                break
        s = c.stats()
        assert s["items"] > 30_000
        assert s["metadata_bytes"] / s["items"] <= 64.0


def test_the_index_never_binds_before_memory() -> None:
    # 8 MiB of 100-byte objects: ~140-byte slots, so memory holds ~55k of them. The linear-probing index sized
    # from the 1 KiB average hint capped the shards at about 9.3k objects (85% of its buckets) and evicted
    # from there on; the chained index has no item bound, so nothing is evicted until the pages are full.
    with Cache(8 << 20, 1 << 20) as c:
        n = 0
        while n < 40_000 and c.store(b"/s/%06d" % n, b"v" * 100, 0.0, FAR):
            n += 1
        s = c.stats()
        assert n == 40_000
        assert s["evictions"] == 0
        assert s["items"] == 40_000
        assert c.layout()["max_items_per_shard"] * s["shards"] >= 40_000


@pytest.mark.parametrize(
    "capacity, value",
    [
        (8 << 20, 8_700),  # just over half a 16 KiB page: was one object a page (share 0.53)
        (8 << 20, 16_700),  # just over a page: was chained over two whole pages (0.50)
        (64 << 20, 40_000),  # over half a 64 KiB page (0.61)
        (64 << 20, 70_000),  # just over a 64 KiB page (0.53)
    ],
)
def test_large_objects_fill_the_budget(capacity: int, value: int) -> None:
    # chained objects take half-page chunks and a best-fit last chunk, so what does not fill a whole page
    # costs at most one class step of the last chunk: at the first eviction, >= 0.85 of the budget is data
    cache_cls = debug_cache_class()
    with cache_cls(capacity, 1 << 20) as c:
        n = 0
        while n < 20_000 and c.store(b"/l/%06d" % n, b"v" * value, 0.0, FAR):
            n += 1
            if c.stats()["evictions"]:
                break
        s = c.stats()
        assert s["evictions"] >= 1
        assert s["data_bytes"] / s["capacity_bytes"] >= 0.85
        assert c._test_check() == []
        assert c.lookup(b"/l/%06d" % (n - 1), 1.0)[0] == b"v" * value


def test_stats_shape_and_class_fill(cache: Cache) -> None:
    cache.store(b"a", b"1" * 100, 0.0, FAR)
    cache.store(b"b", b"2" * 5000, 0.0, FAR)
    cache.lookup(b"a", 1.0)
    cache.lookup(b"zz", 1.0)
    s = cache.stats()
    for k in [
        "items",
        "bytes_used",
        "data_bytes",
        "metadata_bytes",
        "capacity_bytes",
        "hits",
        "misses",
        "evictions",
        "expirations",
        "stores",
        "purged",
        "classes",
    ]:
        assert k in s
    assert (s["items"], s["hits"], s["misses"], s["stores"]) == (2, 1, 1, 2)
    assert s["data_bytes"] == 1 + 100 + 1 + 5000
    used = [cl for cl in s["classes"] if cl["used"]]
    assert len(used) == 2 and all(cl["slots"] >= cl["used"] for cl in used)
    assert all({"size", "slots", "used"} <= set(cl) for cl in s["classes"])


def test_tag_id_is_stable_63_bit() -> None:
    assert Cache.tag_id("product:42") == Cache.tag_id(b"product:42")
    assert Cache.tag_id("product:42") == mmh3.hash64(b"product:42", 0, signed=False)[0] & (2**63 - 1)
    assert 0 <= Cache.tag_id("x") < 2**63
    assert Cache.tag_id("a") != Cache.tag_id("b")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.lookup("str-key", 1.0),
        lambda c: c.store(b"k", "str-value", 0.0, 1.0),
        lambda c: c.store(b"k", b"v", 0.0, 1.0, flags=1 << 16),
        lambda c: c.store(b"k", b"v", 0.0, 1.0, flags=-1),
        lambda c: c.store(b"k", b"v", 0.0, 1.0, tenant=-3),
        lambda c: c.store(b"k", b"v", 0.0, 1.0, tags=tuple(range(9))),
        lambda c: c.store(b"k", b"v", 0.0, 1.0, tags=(2**64,)),
        lambda c: c.store(b"", b"v", 0.0, 1.0),
        lambda c: c.store(b"k", b"v", 0.0, float("nan")),
        lambda c: c.purge_prefix(b"p" * 300),
        lambda c: c.purge_tag(-1),
    ],
)
def test_misuse_raises_value_error(cache: Cache, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call(cache)


@pytest.mark.parametrize("args", [(1000, 100), (1 << 20, 1 << 18), (1 << 20, 10), (1 << 20, 1 << 17, 999)])
def test_bad_geometry_is_value_error(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        Cache(*args)


def test_closed_cache_raises_value_error() -> None:
    c = Cache(1 << 20, 1 << 17)
    c.close()
    with pytest.raises(ValueError):
        c.lookup(b"k", 1.0)
    c.close()  # idempotent


def test_bytearray_and_memoryview_values(cache: Cache) -> None:
    cache.store(b"ba", bytearray(b"abc"), 0.0, FAR)
    cache.store(b"mv", memoryview(b"defg"), 0.0, FAR)
    assert cache.lookup(b"ba", 1.0)[0] == b"abc" and cache.lookup(b"mv", 1.0)[0] == b"defg"


def test_explicit_shards_spread_keys() -> None:
    with Cache(32 << 20, 1 << 20, shards=8) as c:
        per: dict[int, int] = defaultdict(int)
        for i in range(4000):
            per[c.shard_of(b"/s/%d" % i)] += 1
        assert c.layout()["shards"] == 8 and len(per) == 8
        assert min(per.values()) > 300


def test_lock_errors_are_edge_errors() -> None:
    from edgecore.errors import CacheError

    assert issubclass(CacheError, EdgeError)


def test_store_only_if_absent_is_a_test_and_set():
    with Cache(2 << 20, 64 << 10) as c:
        now = 1_000_000.0
        assert c.store(b"lock", b"a", now, now + 5, only_if_absent=True)
        assert not c.store(b"lock", b"b", now + 1, now + 6, only_if_absent=True)  # held
        assert c.lookup(b"lock", now + 1)[0] == b"a"
        assert c.store(b"lock", b"c", now + 5, now + 9, only_if_absent=True)  # expired: taken over
        assert c.lookup(b"lock", now + 6)[0] == b"c"
        assert c.delete(b"lock")
        assert c.store(b"lock", b"d", now + 6, now + 9, only_if_absent=True)  # released: free again
        assert c.store(b"lock", b"e", now + 6, now + 9)  # plain store replaces


# ---------------------------------------------------------------- facts Python shares with the extension


def test_python_facts_match_the_extension() -> None:
    """Every constant edgecore/*.py duplicates from ext/slabcache.pxd or SlabCache.__cinit__ is the same."""
    consts = debug_cache_class()._test_constants()
    # MAX_TAGS (protocol.py truncates a response's tags to it): the pxd's bound, and the production module's
    assert consts["MAX_TAGS"] == MAX_TAGS
    with Cache(8 << 20, 256 * 1024) as c:
        assert c.store(b"/tags/max", b"v", 0.0, FAR, tags=tuple(range(1, MAX_TAGS + 1)))
        with pytest.raises(ValueError, match=f"at most {MAX_TAGS} tags"):
            c.store(b"/tags/over", b"v", 0.0, FAR, tags=tuple(range(1, MAX_TAGS + 2)))
    # Cache.__init__'s defaults are documentation only: __cinit__ applies its own. They must agree, or a
    # Cache built with "the defaults" would not be the cache its signature promises.
    defaults = {
        k: p.default
        for k, p in inspect.signature(Cache.__init__).parameters.items()
        if p.default is not p.empty
    }
    assert defaults["max_object_size"] == DEFAULT_MAX_OBJECT_SIZE
    for cap in (8 << 20, 64 << 20):
        with Cache(cap) as implicit, Cache(cap, **defaults) as explicit:
            raw = SlabCache(cap)
            try:
                assert implicit.layout() == explicit.layout() == raw.layout()
                assert implicit.stats()["max_object_size"] == raw.stats()["max_object_size"]
                assert implicit.stats()["max_object_size"] == DEFAULT_MAX_OBJECT_SIZE
            finally:
                raw.close()
    # stored flags are a u16 in the slot header: every flag edgecore.entry stores must fit
    for name, value in vars(entry).items():
        if name.startswith("FLAG_") and isinstance(value, int):
            assert 0 <= value <= consts["FLAGS_MAX"], name
    # tag and tenant ids are 63-bit, inside what store/purge_tag/purge_tenant accept
    assert 0 <= Cache.tag_id(b"\xff" * 40) < 2**64


def test_production_module_has_no_test_hooks() -> None:
    hooks = [n for n in dir(Cache) if n.startswith("_test_")]
    assert hooks == []
    import edgecore._slabcache as prod

    assert not hasattr(prod, "DebugSlabCache")
    assert {n for n in dir(debug_cache_class()) if n.startswith("_test_")} == {
        "_test_contains",
        "_test_hold_shard_lock",
        "_test_constants",
        "_test_check",
        "_test_pins",
        "_test_timed_purge_tenant",
    }


def test_debug_module_is_the_same_cache() -> None:
    """edgecore._slabcache_debug is compiled from the same parts: same geometry, same answers."""
    debug = debug_cache_class()
    for args in [(8 << 20, 256 * 1024), (64 << 20, 1 << 20, 4, 2048, 1.2)]:
        with Cache(*args) as a, debug(*args) as b:
            assert a.layout() == b.layout()
            for c in (a, b):
                c.store(b"/same/1", b"x" * 100_000, 0.0, FAR, flags=7, tenant=3, tags=(9,))
                c.store(b"/same/2", b"y", 0.0, 10.0)
            assert a.lookup(b"/same/1", 1.0) == b.lookup(b"/same/1", 1.0)
            assert a.lookup(b"/same/2", 11.0) is None and b.lookup(b"/same/2", 11.0) is None
            sa, sb = a.stats(), b.stats()
            assert sa == sb


def _value(n: int) -> bytes:
    return (b"%d:" % n + bytes(range(256)) * (n // 256 + 1))[:n]


def test_objects_a_page_holds_few_of_take_two_pieces_when_that_saves_bytes(dcache: DebugCache) -> None:
    # layout.pxi class_for: between the chunk class and the page size, classes are page/n apart (12-14% at 8
    # and 7 slots a page); a head of any class below the object's, plus one best-fit last chunk, can take
    # fewer slot bytes than one slot or a head of the chunk class: the fewest is taken.
    geo = dcache.layout()
    hdr, classes, page = geo["slot_header_bytes"], geo["class_sizes"], geo["page_size"]

    def fit(need: int) -> int:
        return min(c for c in classes if c >= need)

    need = hdr + 6 + 1808  # a 1,808-byte value under a 6-byte key
    chunk16 = max(c for c in classes if page // c >= 16)
    one_slot, chunk_head = fit(need), chunk16 + fit(need + 8 - chunk16 + hdr)  # (+8: the chain table)
    best = min(c + fit(need + 8 - c + hdr) for c in classes if chunk16 < c < need)
    assert best < chunk_head < one_slot  # the case this layout is for (16 KiB pages)
    keys = [b"k%05d" % i for i in range(40)]
    for k in keys:
        assert dcache.store(k, _value(1808), 0.0, FAR)
    assert dcache._test_check() == []
    for k in keys:
        assert dcache.lookup(k, 1.0) == (_value(1808), FAR, 0)
    st = dcache.stats()
    assert st["items"] == len(keys)
    assert st["bytes_used"] - st["fixed_metadata_bytes"] == len(keys) * best
    # every size from the chunk class to the page reads back byte for byte, and the invariants hold
    sizes = range(1100, page - 200, 97)
    for m in sizes:
        assert dcache.store(b"s%d" % m, _value(m), 0.0, FAR)
    for m in sizes:
        assert dcache.lookup(b"s%d" % m, 1.0) == (_value(m), FAR, 0)
    for k in [*keys, *(b"s%d" % m for m in sizes)]:
        assert dcache.delete(k)
    assert dcache._test_check() == [] and dcache.stats()["items"] == 0


def test_a_class_keeps_its_only_page_while_a_class_of_tails_needs_slots() -> None:
    # alloc.pxi pick_donor: large objects' last pieces live in classes holding only such tails, which take a
    # page from the class with the most surplus whenever they run out. A class of one page is never that
    # donor while the page is within its share: otherwise the few small objects there (a 1,808-byte value
    # in two pieces: two classes of one page each) were all evicted at the large objects' next store.
    c = debug_cache_class()(8 << 20, 1 << 20, shards=1)
    try:
        big = _value(150_000)
        for i in range(80):  # more than the capacity: every page is assigned, to the large objects' classes
            assert c.store(b"big%d" % i, big, 0.0, FAR)
        small = [b"small%d" % i for i in range(5)]
        for k in small:
            assert c.store(k, _value(1808), 0.0, FAR)
        for i in range(80, 110):  # 4.5 MB more: no demand decay, the small objects' share stays
            assert c.store(b"big%d" % i, big, 0.0, FAR)
        assert [k for k in small if c.lookup(k, 1.0) is None] == []
        assert c._test_check() == []
    finally:
        c.close()
