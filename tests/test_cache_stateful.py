"""Stateful property tests: random operation sequences against the slab cache and tests/cache_model.py.

Owns: two hypothesis state machines, both on the debug build so that after every step the allocator's
structural checker (_test_check: pages, classes, chunk chains, index chains, counters) must find nothing.
`ExactCache` sizes the cache so nothing is ever evicted and demands the cache agree with the model on every
result (values, times, flags, purge counts, item counts). `PressureCache` uses a tiny cache so evictions and
page steals happen all the time, and demands that whatever the cache returns is exactly what the model
holds for that key (a miss on a modelled key is an allowed eviction). Both also pin and unpin (PinRules):
a pinned value's bytes never change while it is held, whatever else happens.
Must never: sleep, or depend on the wall clock except through times far from now.
"""

from __future__ import annotations

import time
from typing import Any

import hypothesis.strategies as st
from cache_model import CacheModel
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgecore.cache import debug_cache_class

# Times the machine's clock cannot reach during a run: the sweep reads the real clock, so an expiry near
# it (T0 + 10 with T0 = now) would make the cache's sweep and the model's disagree once the suite has run
# for ten seconds.
T0 = time.time() + 3600.0
FAR = T0 + 1e6
PAST = time.time() - 50.0  # already expired for the sweep

KEYS = [b"/a/%d" % i for i in range(6)] + [b"/b/%d" % i for i in range(5)] + [b"/c/" + b"k" * 300]
PREFIXES = [b"/a/", b"/b/", b"/a/1", b"/c/", b"/zz"]
TAGS = [10, 11, 12]
TENANTS = [0, 1, 2]

keys = st.sampled_from(KEYS)
small_values = st.binary(min_size=0, max_size=3000)
big_values = st.integers(min_value=15_000, max_value=70_000).map(lambda n: bytes([n % 251]) * n)
values = st.one_of(small_values, small_values, big_values)
expiries = st.sampled_from([FAR, PAST, T0 + 10.0, T0 + 10.5])
nows = st.sampled_from([T0 - 100.0, T0, T0 + 10.0, T0 + 10.25, T0 + 2e6])
tagsets = st.lists(st.sampled_from(TAGS), max_size=3, unique=True).map(tuple)
MAX_HELD = 6  # pins a machine holds at once (the oldest is released past that)


def _whole(found: tuple | None) -> tuple | None:
    """A lookup_pinned result with a Pinned value read back as bytes (to compare with the model)."""
    if found is None or type(found[0]) is bytes:
        return found
    return (found[0].tobytes(), *found[1:])


class PinRules:
    """Pin and unpin steps shared by both machines (pins.pxi): lookup_pinned must return what the model
    holds, and every value a held pin views must stay byte for byte what it was, whatever the other steps
    (stores, deletes, purges, sweeps, evictions, page steals) did meanwhile; releasing the last pin frees a
    dead object (the structural checker counts dead objects and the pin table)."""

    cache: Any
    model: CacheModel
    held: list[tuple[Any, bytes, list[memoryview]]]

    def _pin_check(self, key: bytes, now: float) -> None:
        got = self.cache.lookup_pinned(key, now, 0)
        want = self.model.lookup(key, now)
        self._agree(key, _whole(got), want)
        if got is not None and type(got[0]) is not bytes:
            self.held.append((got[0], got[0].tobytes(), got[0].views()))
            if len(self.held) > MAX_HELD:
                self.held.pop(0)

    def _agree(self, key: bytes, got: tuple | None, want: tuple | None) -> None:
        assert got == want

    @rule(i=st.integers(0, 1000), drop_views=st.booleans())
    def unpin(self, i: int, drop_views: bool) -> None:
        if not self.held:
            return
        pv, value, views = self.held.pop(i % len(self.held))
        if not drop_views:
            assert b"".join(views) == value  # still intact the moment before release
        del pv, views

    @invariant()
    def pinned_bytes_intact(self) -> None:
        for pv, value, views in self.held:
            assert b"".join(views) == value
            assert pv.tobytes() == value
        s = self.cache.stats()
        assert s["pins"] <= len(self.held) and (s["pins"] >= 1 or not self.held)
        if not self.held:
            assert s["pins"] == 0 and s["pinned_dead_items"] == 0 and s["pinned_dead_bytes"] == 0


class ExactCache(PinRules, RuleBasedStateMachine):
    MAX_OBJECT = 256 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.cache = debug_cache_class()(4 << 20, self.MAX_OBJECT)
        self.model = CacheModel(self.MAX_OBJECT)
        self.held = []

    def teardown(self) -> None:
        self.held.clear()
        self.cache.close()

    @rule(key=keys, now=nows)
    def pin(self, key: bytes, now: float) -> None:
        self._pin_check(key, now)

    @rule(
        key=keys,
        value=values,
        expires=expiries,
        flags=st.integers(0, 0xFFFF),
        tenant=st.sampled_from(TENANTS),
        tags=tagsets,
    )
    def store(
        self, key: bytes, value: bytes, expires: float, flags: int, tenant: int, tags: tuple[int, ...]
    ) -> None:
        now = T0 - 1.0
        got = self.cache.store(key, value, now, expires, flags, tenant, tags)
        assert got == self.model.store(key, value, now, expires, flags, tenant, tags)

    @rule(key=keys)
    def store_too_large(self, key: bytes) -> None:
        value = b"x" * (self.MAX_OBJECT - len(key) + 1)
        assert self.cache.store(key, value, T0, FAR) is False
        assert self.model.store(key, value, T0, FAR) is False

    @rule(key=keys, now=nows)
    def lookup(self, key: bytes, now: float) -> None:
        assert self.cache.lookup(key, now) == self.model.lookup(key, now)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        assert self.cache.delete(key) == self.model.delete(key)

    @rule(tag=st.sampled_from(TAGS + [99]))
    def purge_tag(self, tag: int) -> None:
        assert self.cache.purge_tag(tag) == self.model.purge_tag(tag)

    @rule(tenant=st.sampled_from(TENANTS + [7]))
    def purge_tenant(self, tenant: int) -> None:
        assert self.cache.purge_tenant(tenant) == self.model.purge_tenant(tenant)

    @rule(prefix=st.sampled_from(PREFIXES))
    def purge_prefix(self, prefix: bytes) -> None:
        assert self.cache.purge_prefix(prefix) == self.model.purge_prefix(prefix)

    @rule()
    def sweep_everything(self) -> None:
        assert self.cache.sweep(10**6) == self.model.sweep_all(time.time())

    @invariant()
    def counts_agree(self) -> None:
        s = self.cache.stats()
        assert s["items"] == len(self.model.entries)
        assert s["evictions"] == 0
        assert s["data_bytes"] == sum(len(k) + len(e.value) for k, e in self.model.entries.items())
        assert s["bytes_used"] <= s["capacity_bytes"]
        assert sum(c["used"] for c in s["classes"]) == s["items"]
        assert self.cache._test_check() == []


class PressureCache(PinRules, RuleBasedStateMachine):
    MAX_OBJECT = 128 * 1024
    KEYS = [b"/p/%d" % i for i in range(40)]

    def __init__(self) -> None:
        super().__init__()
        self.cache = debug_cache_class()(1 << 20, self.MAX_OBJECT)
        self.model = CacheModel(self.MAX_OBJECT)
        self.held = []

    def teardown(self) -> None:
        self.held.clear()
        self.cache.close()

    def _agree(self, key: bytes, got: tuple | None, want: tuple | None) -> None:
        if got is None:
            self.model.forget(key)  # evicted (or expired: the model agrees then)
        else:
            assert got == want

    @rule(i=st.integers(0, 39))
    def pin(self, i: int) -> None:
        self._pin_check(self.KEYS[i], T0)

    def _check(self, key: bytes, now: float) -> None:
        got = self.cache.lookup(key, now)
        want = self.model.lookup(key, now)
        if got is None:
            self.model.forget(key)  # evicted (or expired: the model agrees then)
        else:
            assert got == want

    @rule(
        i=st.integers(0, 39),
        n=st.one_of(st.integers(0, 4000), st.integers(10_000, 60_000)),
        tenant=st.sampled_from(TENANTS),
        tags=tagsets,
    )
    def store(self, i: int, n: int, tenant: int, tags: tuple[int, ...]) -> None:
        key = self.KEYS[i]
        value = (key + b"|") * (n // (len(key) + 1) + 1)
        value = value[:n]
        if self.cache.store(key, value, T0, FAR, i, tenant, tags):
            self.model.store(key, value, T0, FAR, i, tenant, tags)
        else:
            # refused only when pins hold the room it needs (pins.pxi): the old copy is gone either way
            assert self.held
            self.model.delete(key)

    @rule(i=st.integers(0, 39))
    def lookup(self, i: int) -> None:
        self._check(self.KEYS[i], T0)

    @rule(i=st.integers(0, 39))
    def delete(self, i: int) -> None:
        had = self.cache.delete(self.KEYS[i])
        modelled = self.model.delete(self.KEYS[i])
        assert modelled or not had  # the cache can only hold what the model holds

    @precondition(lambda self: len(self.model.entries) > 0)
    @rule(tag=st.sampled_from(TAGS))
    def purge_tag(self, tag: int) -> None:
        # learn which modelled entries the cache still holds, then the purge must count exactly those
        for k in list(self.model.entries):
            self._check(k, T0)
        expected = self.model.purge_tag(tag)
        assert self.cache.purge_tag(tag) == expected

    @rule(tenant=st.sampled_from(TENANTS))
    def purge_tenant(self, tenant: int) -> None:
        for k in list(self.model.entries):
            self._check(k, T0)
        assert self.cache.purge_tenant(tenant) == self.model.purge_tenant(tenant)

    @invariant()
    def bounded(self) -> None:
        s = self.cache.stats()
        assert s["bytes_used"] <= s["capacity_bytes"]
        assert s["items"] <= len(self.model.entries)
        assert s["metadata_bytes"] + s["data_bytes"] <= s["bytes_used"]

    @invariant()
    def allocator_consistent(self) -> None:
        # pages, classes, chains (head and best-fit last chunk), index chains and counters agree
        assert self.cache._test_check() == []


common = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestExactCache = ExactCache.TestCase
TestExactCache.settings = common
TestPressureCache = PressureCache.TestCase
TestPressureCache.settings = common
