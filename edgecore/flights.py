"""Single-flight of concurrent misses per key, across the coroutines of a worker and across worker processes.

Owns: the in-worker flights (Varnish's busy object + waiting list), the cross-worker miss lock entries in the
shared cache, and hit-for-miss memory (keys recently found uncacheable skip coalescing).
Invariants:
- a Flight's waiters are released at once when the leader learns the response is not storable;
- finish() is called exactly once per flight and always drops the cross-worker lock it took;
- across worker processes, one leader per key holds a lock entry in the shared cache while it fetches; the
  entry's value is the leader's pid and it carries the purge tag lock_tag(pid), so the supervisor clears a
  reaped worker's entries at once (purge_tag), and a waiter that finds the leader's pid gone stops waiting
  and drops the entry; anything left still expires after lock_ttl.
Never: touch a socket or decide cacheability (it is told).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

from .cache import Cache


class Flight:
    """A miss in progress for one key. Waiters await `done` (made when the first one joins); its result
    tells them what to do. `locked`: the leader holds the cross-worker lock in the shared cache."""

    __slots__ = ("done", "waiters", "locked")

    def __init__(self) -> None:
        self.done: asyncio.Future[Any] | None = None
        self.waiters = 0
        self.locked = False


LOCK_PREFIX = b"\x00lock:"  # lock entries: never the start of a primary ("0:...") or secondary ("V...") key
LOCK_FLAG = 8  # never served: the hit path serves FLAG_PLAIN entries only


def lock_tag(pid: int) -> int:
    """The purge tag of every lock entry worker `pid` takes: the supervisor purges it when it reaps pid."""
    return Cache.tag_id(b"\x00lock-pid:%d" % pid)


def pid_alive(pid: int) -> bool:
    """Does process pid exist (signal 0: nothing is sent)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's (a reused pid)
    return True


class Flights:
    """Single-flight of misses per key (Varnish's busy object + waiting list), plus hit-for-miss memory:
    keys recently found uncacheable skip coalescing so their requests never queue behind each other."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        hit_for_miss_ttl: float,
        cache: Any = None,
        lock_ttl: float = 30.0,
    ) -> None:
        self.loop = loop
        self.hfm_ttl = hit_for_miss_ttl
        self.cache = cache
        self.lock_ttl = lock_ttl
        self._flights: dict[bytes, Flight] = {}
        self._uncacheable: dict[bytes, float] = {}
        self._pid = b"%d" % os.getpid()
        self._tags = (lock_tag(os.getpid()),)

    # Across worker processes the leader of a key also takes a lock entry in the shared cache (an atomic
    # test-and-set); a leader in another worker that finds it taken waits for it to go (polling the shared
    # cache, like nginx's proxy_cache_lock) and then looks in the cache again. A lock left by a killed
    # worker is purged by the supervisor when it reaps the worker (lock_tag), dropped by a waiter that finds
    # its pid gone, and in any case expires after lock_ttl (the upstream response timeout).
    def lock(self, flight: Flight, key: bytes) -> bool:
        if self.cache is None:
            return True
        now = time.time()
        flight.locked = self.cache.store(
            LOCK_PREFIX + key,
            self._pid,
            now,
            now + self.lock_ttl,
            LOCK_FLAG,
            tags=self._tags,
            only_if_absent=True,
        )
        return flight.locked

    def _unlock(self, flight: Flight, key: bytes) -> None:
        if flight.locked:
            flight.locked = False
            self.cache.delete(LOCK_PREFIX + key)

    async def wait_unlocked(self, key: bytes, timeout: float) -> bool:
        """Wait (polling 2 ms, doubling to 25 ms) until no worker holds key's lock, or its holder is gone
        (its pid no longer exists: the entry is dropped). False on timeout."""
        deadline = self.loop.time() + timeout
        delay = 0.002
        lock_key = LOCK_PREFIX + key
        while (found := self.cache.lookup(lock_key, time.time())) is not None:
            holder = found[0]
            if holder.isdigit() and not pid_alive(int(holder)):
                # the leader died (SIGKILL, crash): nobody will release it; the supervisor purges it too
                if self.cache.lookup(lock_key, time.time()) == found:
                    self.cache.delete(lock_key)
                return True
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.025)
        return True

    def join(self, key: bytes) -> tuple[Flight, bool]:
        """(flight, leader?) for key."""
        f = self._flights.get(key)
        if f is not None:
            f.waiters += 1
            if f.done is None:
                f.done = self.loop.create_future()
            return f, False
        f = self._flights[key] = Flight()
        return f, True

    def finish(self, key: bytes, flight: Flight, result: Any) -> None:
        """Leader: publish the outcome (an object the waiters understand; None = go upstream yourselves)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        self._unlock(flight, key)
        if flight.done is not None and not flight.done.done():
            flight.done.set_result(result)

    def try_lead(self, key: bytes) -> Flight | None:
        """Lead a fetch of key at once, or None when another request (in this worker or another) leads one."""
        if key in self._flights:
            return None
        f = Flight()
        if not self.lock(f, key):
            return None
        self._flights[key] = f
        return f

    def busy(self, key: bytes) -> bool:
        """A fetch for key is in flight in this worker."""
        return key in self._flights

    def uncacheable(self, key: bytes) -> bool:
        until = self._uncacheable.get(key)
        if until is None:
            return False
        if self.loop.time() < until:
            return True
        del self._uncacheable[key]
        return False

    def mark_uncacheable(self, key: bytes) -> None:
        if len(self._uncacheable) > 100_000:  # bounded memory: drop the expired, then the oldest
            now = self.loop.time()
            for k in [k for k, t in self._uncacheable.items() if t <= now][:50_000] or list(
                itertools.islice(self._uncacheable, 50_000)
            ):
                del self._uncacheable[k]
        self._uncacheable[key] = self.loop.time() + self.hfm_ttl

    def forget_uncacheable(self, key: bytes) -> None:
        self._uncacheable.pop(key, None)
