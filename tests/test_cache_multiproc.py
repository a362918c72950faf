"""Multi-process tests of the shared slab cache: one mapping, many forked workers, robust locks.

Owns: concurrent stores and reads from two processes, purges seen by every process, and recovery when a
process is SIGKILLed while it holds a shard lock (the next locker repairs the shard, nobody wedges).
Invariants: processes synchronise only through pipes (never sleeps); every wait has a deadline; every child
is reaped (and killed first if still alive) in a finally block.
Must never: let a child run pytest machinery (children leave through os._exit).
"""

from __future__ import annotations

import json
import os
import select
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from edgecore.cache import Cache, debug_cache_class

if TYPE_CHECKING:
    from edgecore.cache import DebugCache

FAR = 4e9
DEADLINE = 30.0


class Child:
    """A forked process running fn(cache, inbox_fd, outbox_fd); its JSON result arrives on a pipe."""

    def __init__(self, fn: Callable[[int, int], Any]) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, to_parent_w = os.pipe()
        res_r, res_w = os.pipe()
        self.result_fd = res_r
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 0
            try:
                os.close(self.to_child)
                os.close(self.from_child)
                os.close(res_r)
                out = fn(to_child_r, to_parent_w)
                os.write(res_w, json.dumps(out).encode())
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                os.write(res_w, json.dumps({"error": repr(e)}).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(to_child_r)
        os.close(to_parent_w)
        os.close(res_w)

    def send(self, b: bytes = b"g") -> None:
        os.write(self.to_child, b)

    def wait_signal(self) -> bytes:
        r, _, _ = select.select([self.from_child], [], [], DEADLINE)
        assert r, "child did not signal in time"
        return os.read(self.from_child, 1)

    def result(self) -> Any:
        chunks = []
        while True:
            r, _, _ = select.select([self.result_fd], [], [], DEADLINE)
            assert r, "child did not finish in time"
            b = os.read(self.result_fd, 65536)
            if not b:
                break
            chunks.append(b)
        out = json.loads(b"".join(chunks) or b"null")
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        assert isinstance(out, dict) and "error" not in out, out
        assert os.waitstatus_to_exitcode(status) == 0
        return out

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0

    def close(self) -> None:
        self.kill()
        for fd in (self.to_child, self.from_child, self.result_fd):
            try:
                os.close(fd)
            except OSError:
                pass


@contextmanager
def children() -> Iterator[list[Child]]:
    kids: list[Child] = []
    try:
        yield kids
    finally:
        for k in kids:
            k.close()


def wait_byte(fd: int) -> bytes:
    r, _, _ = select.select([fd], [], [], DEADLINE)
    if not r:
        raise TimeoutError("no message from the parent")
    return os.read(fd, 1)


def value_for(key: bytes) -> bytes:
    return (key + b"#") * (1 + len(key) % 40)


@pytest.fixture
def cache() -> Iterator[Cache]:
    c = Cache(16 << 20, 256 * 1024, shards=4)
    yield c
    c.close()


@pytest.fixture
def dcache() -> Iterator[DebugCache]:
    """The same cache on edgecore._slabcache_debug, for tests that hold a lock (_test_hold_shard_lock)."""
    c = debug_cache_class()(16 << 20, 256 * 1024, shards=4)
    yield c
    c.close()


def test_two_processes_store_and_read_at_once(cache: Cache) -> None:
    n = 3000

    def worker(me: str, other: str) -> Callable[[int, int], Any]:
        def run(inbox: int, outbox: int) -> Any:
            wait_byte(inbox)  # start together
            seen_other = wrong = 0
            for i in range(n):
                k = b"/%s/%d" % (me.encode(), i)
                assert cache.store(k, value_for(k), 0.0, FAR, tags=(1 if me == "a" else 2,))
                ok = b"/%s/%d" % (other.encode(), i)
                got = cache.lookup(ok, 1.0)
                if got is not None:
                    seen_other += 1
                    wrong += got[0] != value_for(ok)
            return {"seen_other": seen_other, "wrong": wrong}

        return run

    with children() as kids:
        kids.append(Child(worker("a", "b")))
        kids.append(Child(worker("b", "a")))
        for k in kids:
            k.send()
        results = [k.result() for k in kids]
    assert all(r["wrong"] == 0 for r in results)
    # everything both stored is visible here, in the parent
    for who in (b"a", b"b"):
        for i in range(n):
            k = b"/%s/%d" % (who, i)
            assert cache.lookup(k, 1.0) == (value_for(k), FAR, 0)
    s = cache.stats()
    assert s["items"] == 2 * n and s["stores"] == 2 * n  # counters are shared by all processes


def test_purge_by_one_process_is_seen_by_all(cache: Cache) -> None:
    def run(inbox: int, outbox: int) -> Any:
        for i in range(200):
            cache.store(
                b"/p/%d" % i,
                b"x" * 100,
                0.0,
                FAR,
                tenant=7 if i < 50 else 8,
                tags=(Cache.tag_id("blue"),) if i % 2 else (),
            )
        os.write(outbox, b"s")  # stored
        wait_byte(inbox)  # parent purged tag "blue"
        blue_left = sum(cache.lookup(b"/p/%d" % i, 1.0) is not None for i in range(1, 200, 2))
        purged_tenant = cache.purge_tenant(7)  # now the child purges, the parent checks
        return {"blue_left": blue_left, "purged_tenant": purged_tenant}

    with children() as kids:
        kids.append(Child(run))
        kid = kids[0]
        assert kid.wait_signal() == b"s"
        assert cache.purge_tag(Cache.tag_id("blue")) == 100
        kid.send()
        out = kid.result()
    assert out == {"blue_left": 0, "purged_tenant": 25}  # even i < 50 are tenant 7 and not blue
    assert all(cache.lookup(b"/p/%d" % i, 1.0) is None for i in range(50))
    assert sum(cache.lookup(b"/p/%d" % i, 1.0) is not None for i in range(50, 200)) == 75


def _keys_by_shard(cache: Cache | DebugCache, shard: int, n: int, other: bool = False) -> list[bytes]:
    out = []
    i = 0
    while len(out) < n and i < 100_000:
        k = b"/shard/%d" % i
        if (cache.shard_of(k) == shard) != other:
            out.append(k)
        i += 1
    return out


@pytest.mark.parametrize("scribble", [True, False])
def test_killed_lock_holder_does_not_wedge_the_cache(dcache: DebugCache, scribble: bool) -> None:
    victim_keys = _keys_by_shard(dcache, 1, 20)
    other_keys = _keys_by_shard(dcache, 1, 20, other=True)
    for k in victim_keys + other_keys:
        assert dcache.store(k, value_for(k), 0.0, FAR)

    def holder(inbox: int, outbox: int) -> Any:
        # takes shard 1's lock, (scribbles over the shard,) tells the parent, then blocks on the pipe forever
        dcache._test_hold_shard_lock(1, inbox, scribble, outbox)
        return {"unexpected": "released"}

    def waiter(inbox: int, outbox: int) -> Any:
        wait_byte(inbox)  # the holder has the lock: this lookup blocks inside pthread_mutex_lock
        got = dcache.lookup(victim_keys[0], 1.0)
        stored = dcache.store(victim_keys[1], b"after-recovery", 0.0, FAR)
        return {"got": got is not None, "stored": stored}

    with children() as kids:
        kids.append(Child(holder))
        hold = kids[0]
        assert hold.wait_signal() == b"L"  # inside the critical section
        kids.append(Child(waiter))
        wait = kids[1]
        wait.send()
        hold.kill()  # SIGKILL while holding the lock
        out = wait.result()  # the blocked waiter got EOWNERDEAD, repaired the shard and carried on
    assert out == {"got": False, "stored": True}  # the shard was wiped: its old entries are gone
    assert dcache.lookup(victim_keys[1], 1.0) == (b"after-recovery", FAR, 0)
    for k in other_keys:  # other shards are untouched
        assert dcache.lookup(k, 1.0) == (value_for(k), FAR, 0)
    for k in victim_keys[2:]:
        assert dcache.lookup(k, 1.0) is None
        assert dcache.store(k, value_for(k), 0.0, FAR)
        assert dcache.lookup(k, 1.0) == (value_for(k), FAR, 0)
    s = dcache.stats()
    assert s["lock_recoveries"] == 1
    assert s["items"] == len(other_keys) + 1 + len(victim_keys[2:])
    assert dcache.purge_prefix(b"/shard/") == s["items"]  # walks the repaired shard fine


def test_killed_holder_recovered_by_the_parent_itself(dcache: DebugCache) -> None:
    k = _keys_by_shard(dcache, 2, 1)[0]
    dcache.store(k, b"v", 0.0, FAR)
    with children() as kids:
        kids.append(Child(lambda inbox, outbox: dcache._test_hold_shard_lock(2, inbox, True, outbox)))
        assert kids[0].wait_signal() == b"L"
        kids[0].kill()
    assert dcache.lookup(k, 1.0) is None
    assert dcache.store(k, b"w", 0.0, FAR) and dcache.lookup(k, 1.0) == (b"w", FAR, 0)
    assert dcache.stats()["lock_recoveries"] == 1


def test_sweep_in_one_process_expires_for_all(cache: Cache) -> None:
    for i in range(100):
        cache.store(b"/x/%d" % i, b"v", 0.0, 1.0 if i % 2 else FAR)  # odd ones expired long ago

    def run(inbox: int, outbox: int) -> Any:
        removed = 0
        for _ in range(100):
            removed += cache.sweep(4096)
            if removed >= 50:
                break
        return {"removed": removed}

    with children() as kids:
        kids.append(Child(run))
        out = kids[0].result()
    assert out == {"removed": 50}
    s = cache.stats()
    assert s["items"] == 50 and s["expirations"] == 50
