"""A small reference model of edgecore.cache.Cache, for the stateful tests.

Owns: the observable contract of the cache minus eviction: what a lookup may return after any sequence of
stores, deletes, purges, sweeps and lookups. Invariants: an entry is returned only if it was the last thing
stored under its key and nothing (delete, purge, expiry at lookup or sweep) has removed it since; purges
count every matching entry still held, expired or not. Must never: model eviction (the tests either size the
cache so nothing is evicted, or treat a miss on a modelled key as an allowed eviction and drop it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    value: bytes
    expires: float
    flags: int
    tenant: int
    tags: tuple[int, ...]


class CacheModel:
    def __init__(self, max_object_size: int) -> None:
        self.max_object_size = max_object_size
        self.entries: dict[bytes, Entry] = {}

    def store(
        self,
        key: bytes,
        value: bytes,
        now: float,
        expires: float,
        flags: int = 0,
        tenant: int = 0,
        tags: tuple[int, ...] = (),
    ) -> bool:
        if len(key) + len(value) > self.max_object_size:
            self.entries.pop(key, None)  # a refused replacement leaves no stale copy behind
            return False
        self.entries[key] = Entry(value, expires, flags, tenant, tuple(tags))
        return True

    def lookup(self, key: bytes, now: float) -> tuple[bytes, float, int] | None:
        e = self.entries.get(key)
        if e is None:
            return None
        if now >= e.expires:
            del self.entries[key]
            return None
        return (e.value, e.expires, e.flags)

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None

    def _purge(self, match: object) -> int:
        doomed = [k for k, e in self.entries.items() if match(k, e)]  # type: ignore[operator]
        for k in doomed:
            del self.entries[k]
        return len(doomed)

    def purge_tag(self, tag: int) -> int:
        return self._purge(lambda k, e: tag in e.tags)

    def purge_tenant(self, tenant: int) -> int:
        return self._purge(lambda k, e: e.tenant == tenant)

    def purge_prefix(self, prefix: bytes) -> int:
        return self._purge(lambda k, e: k.startswith(prefix))

    def sweep_all(self, now: float) -> int:
        """What a complete sweep at wall-clock `now` removes: every expired entry."""
        return self._purge(lambda k, e: now >= e.expires)

    def forget(self, key: bytes) -> None:
        """The cache evicted key (allowed when the test's cache is under pressure)."""
        self.entries.pop(key, None)
