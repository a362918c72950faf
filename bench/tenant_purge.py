"""How long a tenant purge of a million entries holds any shard lock (issue 14 point 6, tenants row).

A purge by tenant (SlabCache.purge_tenant, as POST /purge {"tenant": ...} and a revocation run it) registers
a ban, so lookups treat the tenant's entries as gone at once, then walks every shard PURGE_CHUNK_SLOTS (64)
slots per shard-lock hold, zeroing what it removes. This measures that hold two ways while a purge of N
entries runs:

- directly (the debug module's `_test_timed_purge_tenant`: the same ban and the same shard walk as
  purge_tenant, with a clock read right after each lock is taken and right before it is released): the
  longest hold, the number of holds and their mean, and
- from outside: a second process (forked after the cache is built, so it shares the mapping) looks up keys of
  every shard in a loop and records each lookup's latency: a lookup that meets a held lock waits for it, so
  the slowest lookups bound the longest hold (plus scheduling noise on a shared machine).

    python bench/tenant_purge.py [--entries 1000000] [--others 200000]

Target (issue 14): no lock held over 1 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

from edgecore.cache import Cache, debug_cache_class


def _prober(cache: Cache, keys: list[bytes], stop: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    lat: list[int] = []
    i = 0
    n = len(keys)
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        k = keys[i % n]
        t0 = time.perf_counter_ns()
        cache.lookup(k, 1.0)
        lat.append(time.perf_counter_ns() - t0)
        i += 1
    out.put(lat)


def _summary(lat: list[int]) -> str:
    s = sorted(lat)
    q = statistics.quantiles(s, n=1000)
    return (
        f"{len(s)} lookups: p50 {s[len(s) // 2] / 1e3:.1f} us, p99 {q[989] / 1e3:.1f} us, "
        f"p99.9 {q[998] / 1e3:.1f} us, max {s[-1] / 1e3:.1f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries of the purged tenant")
    ap.add_argument("--others", type=int, default=200_000, help="entries of another tenant (kept)")
    ap.add_argument("--cache-size", type=int, default=512 << 20)
    ap.add_argument("--budget", type=int, default=0, help="slots per lock hold (0: as purge_tenant)")
    a = ap.parse_args()
    cache: Cache = debug_cache_class()(a.cache_size, 1 << 20, avg_object_size=128)
    victim, other = 0x1111, 0x2222
    t0 = time.perf_counter()
    for i in range(a.entries):
        if not cache.store(b"v/%d" % i, b"x" * 40, 0.0, 1e12, tenant=victim):
            raise SystemExit(f"store {i} refused: raise --cache-size")
    for i in range(a.others):
        cache.store(b"o/%d" % i, b"y" * 40, 0.0, 1e12, tenant=other)
    print(f"filled {a.entries} + {a.others} entries in {time.perf_counter() - t0:.1f} s")
    lay = cache.layout()
    shards = lay.get("shards") or lay.get("nshards")
    # probe keys: a few per shard, of the tenant that is kept
    probe: dict[int, list[bytes]] = {}
    for i in range(a.others):
        k = b"o/%d" % i
        probe.setdefault(cache.shard_of(k), []).append(k)
        if len(probe) == shards and all(len(v) >= 4 for v in probe.values()):
            break
    keys = [k for v in probe.values() for k in v[:4]]
    ctx = mp.get_context("fork")
    for label, purge in (("baseline (no purge)", False), ("during the tenant purge", True)):
        stop, out = ctx.Event(), ctx.Queue()
        p = ctx.Process(target=_prober, args=(cache, keys, stop, out))
        p.start()
        time.sleep(0.3)  # (a benchmark, not a test: let the prober reach its loop)
        t1 = time.perf_counter()
        if purge:
            timed = cache._test_timed_purge_tenant  # type: ignore[attr-defined]
            n, held = timed(victim, a.budget) if a.budget else timed(victim)
            took = time.perf_counter() - t1
        else:
            time.sleep(1.0)
            n, took = 0, time.perf_counter() - t1
        stop.set()
        lat = out.get(timeout=60)
        p.join(30)
        print(f"{label}: {_summary(lat)}")
        if purge:
            hs = sorted(held)
            over = sum(1 for x in hs if x > 1_000_000)
            p50, p99 = hs[len(hs) // 2] / 1e3, hs[len(hs) * 99 // 100] / 1e3
            print(
                f"purged {n} entries in {took * 1e3:.0f} ms over {shards} shards: {len(hs)} shard-lock holds "
                f"of up to {a.budget or 64} slots: p50 {p50:.1f} us, p99 {p99:.1f} us, "
                f"max {hs[-1] / 1e3:.1f} us, mean {sum(hs) / len(hs) / 1e3:.1f} us; {over} over 1 ms"
            )
    left = sum(1 for i in range(0, a.others, max(1, a.others // 1000)) if cache.lookup(b"o/%d" % i, 1.0))
    print(
        f"other tenant's entries still there: {left} of {len(range(0, a.others, max(1, a.others // 1000)))}"
    )
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
