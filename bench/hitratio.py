"""Hit-ratio simulation: the slab cache against exact LRU, plain CLOCK and SIEVE at equal bytes.

Owns: synthetic request traces (Zipf 0.7/0.9/1.1 and Zipf 0.9 with periodic one-time scans; log-normal
value sizes, or one fixed size with --fixed) and the reference
models (exact LRU, plain CLOCK, SIEVE). Invariants: every cache sees the same trace with the same keys and
values; "equal bytes" means the models may hold key+value bytes up to the capacity while the slab cache must
fit everything (index, headers, slab slack) into the same capacity, so the comparison is conservative for the
slab cache. The models are single whole-cache queues (no shards, no size classes).
Must never: be collected as a test (run it as a script: `python bench/hitratio.py [--requests N]`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecore.cache import Cache  # noqa: E402


def object_sizes(n: int, rng: np.random.Generator, median: int) -> np.ndarray:
    """Value sizes: log-normal (HTTP responses), median `median`, clipped to 64 B .. 64 KiB."""
    s = rng.lognormal(mean=np.log(median), sigma=1.0, size=n)
    return np.clip(s, 64, 64 * 1024).astype(np.int64)


def zipf_trace(n_objects: int, n_requests: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    ranks = np.arange(1, n_objects + 1, dtype=np.float64)
    w = ranks ** (-alpha)
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(n_requests), side="right")
    perm = rng.permutation(n_objects)  # popularity independent of id (and so of size)
    return perm[np.minimum(idx, n_objects - 1)]


def scan_trace(
    n_objects: int, n_requests: int, alpha: float, rng: np.random.Generator, every: int, scan_len: int
) -> np.ndarray:
    """Zipf requests with a burst of `scan_len` never-repeated ids after every `every` requests."""
    base = zipf_trace(n_objects, n_requests, alpha, rng)
    out = []
    next_id = n_objects
    for start in range(0, n_requests, every):
        out.append(base[start : start + every])
        out.append(np.arange(next_id, next_id + scan_len))
        next_id += scan_len
    return np.concatenate(out)


def key_of(i: int) -> bytes:
    return b"GET https://api.example.com/v1/objects/%d?fields=all" % i


def run_lru(trace: np.ndarray, sizes: np.ndarray, capacity: int) -> float:
    lru: OrderedDict[bytes, int] = OrderedDict()
    used = 0
    hits = 0
    for i in trace.tolist():
        k = key_of(i)
        if k in lru:
            lru.move_to_end(k)
            hits += 1
            continue
        sz = len(k) + int(sizes[i])
        if sz > capacity:
            continue
        lru[k] = sz
        used += sz
        while used > capacity:
            _, s = lru.popitem(last=False)
            used -= s
    return hits / len(trace)


def run_clock(
    trace: np.ndarray, sizes: np.ndarray, capacity: int, insert_ref: bool = False
) -> tuple[float, float]:
    """Plain byte-bounded CLOCK: one reference bit, second chance, a hand. New entries start with a clear bit
    (FIFO-reinsertion, as in libCacheSim and the S3-FIFO paper) or, with `insert_ref`, with the bit set (the
    textbook variant where the miss counts as the first reference).

    The ring is kept as a FIFO whose front is the hand: a referenced entry under the hand has its bit cleared
    and goes to the back (the hand moves past it), an unreferenced one is evicted, a new entry is placed just
    behind the hand. A hit only sets the bit. Returns (hit ratio, mean entries the hand examined per
    eviction).
    """
    ring: OrderedDict[bytes, int] = OrderedDict()  # key -> key+value bytes, front = under the hand
    ref: set[bytes] = set()
    used = 0
    hits = 0
    steps = 0
    evictions = 0
    for i in trace.tolist():
        k = key_of(i)
        if k in ring:
            ref.add(k)
            hits += 1
            continue
        sz = len(k) + int(sizes[i])
        if sz > capacity:
            continue
        while used + sz > capacity:
            k0, s0 = ring.popitem(last=False)
            steps += 1
            if k0 in ref:
                ref.discard(k0)
                ring[k0] = s0
            else:
                used -= s0
                evictions += 1
        ring[k] = sz
        used += sz
        if insert_ref:
            ref.add(k)
    return hits / len(trace), steps / max(evictions, 1)


def run_sieve(trace: np.ndarray, sizes: np.ndarray, capacity: int) -> tuple[float, float]:
    """Byte-bounded SIEVE (Zhang et al., NSDI '24): FIFO insertion order, a visited bit, a hand that walks
    from the oldest entry towards the newest, clears visited bits, evicts the first unvisited entry and stays
    there; survivors are never moved. Returns (hit ratio, mean entries the hand examined per eviction).
    """
    order: list[bytes | None] = []  # oldest first; evicted entries are holes (None) until compaction
    size: dict[bytes, int] = {}
    visited: set[bytes] = set()
    hand = 0
    holes = 0
    used = 0
    hits = 0
    steps = 0
    evictions = 0
    for i in trace.tolist():
        k = key_of(i)
        if k in size:
            visited.add(k)
            hits += 1
            continue
        sz = len(k) + int(sizes[i])
        if sz > capacity:
            continue
        while used + sz > capacity:
            if hand >= len(order):
                hand = 0
            k0 = order[hand]
            if k0 is None:
                hand += 1
                continue
            steps += 1
            if k0 in visited:
                visited.discard(k0)
            else:
                order[hand] = None
                holes += 1
                used -= size.pop(k0)
                evictions += 1
            hand += 1
        if holes > 1024 and 2 * holes > len(order):
            hand -= order[:hand].count(None)
            order = [x for x in order if x is not None]
            holes = 0
        order.append(k)
        size[k] = sz
        used += sz
    return hits / len(trace), steps / max(evictions, 1)


def run_slab(
    trace: np.ndarray, sizes: np.ndarray, capacity: int, max_object: int, avg: int
) -> tuple[float, dict]:
    cache = Cache(capacity, max_object, avg_object_size=avg)
    values: dict[int, bytes] = {}
    hits = 0
    lookup = cache.lookup
    store = cache.store
    for i in trace.tolist():
        k = key_of(i)
        if lookup(k, 1.0) is not None:
            hits += 1
            continue
        v = values.get(int(sizes[i]))
        if v is None:
            v = values[int(sizes[i])] = b"v" * int(sizes[i])
        store(k, v, 0.0, 1e12)
    st = cache.stats()
    cache.close()
    return hits / len(trace), st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--median", type=int, default=2048, help="median value size in bytes")
    ap.add_argument("--fractions", default="0.02,0.1", help="cache size as fractions of the unique bytes")
    ap.add_argument("--max-object", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="", help="also write the markdown table here")
    ap.add_argument("--fixed", type=int, default=0, help="every value this many bytes (fixed-size trace)")
    ap.add_argument("--capacities", default="", help="absolute capacities in MiB (instead of --fractions)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.objects
    scan_len = n // 5
    sizes = object_sizes(n + scan_len * (args.requests // 100_000 + 1), rng, args.median)
    if args.fixed:
        sizes = np.full_like(sizes, args.fixed)
    unique_bytes = int(sum(len(key_of(i)) for i in range(n)) + sizes[:n].sum())
    avg = int(unique_bytes / n) + 40
    traces = {
        "zipf-0.7": zipf_trace(n, args.requests, 0.7, rng),
        "zipf-0.9": zipf_trace(n, args.requests, 0.9, rng),
        "zipf-1.1": zipf_trace(n, args.requests, 1.1, rng),
        "zipf-0.9+scans": scan_trace(n, args.requests, 0.9, rng, every=100_000, scan_len=scan_len),
    }
    rows = []
    if args.capacities:
        caps = [int(float(c) * 2**20) for c in args.capacities.split(",")]
    else:
        caps = [max(int(unique_bytes * float(f)), 8 * args.max_object) for f in args.fractions.split(",")]
    for cap in caps:
        for name, tr in traces.items():
            t0 = time.perf_counter()
            lru = run_lru(tr, sizes, cap)
            t1 = time.perf_counter()
            clock, clock_steps = run_clock(tr, sizes, cap)
            clock1, _ = run_clock(tr, sizes, cap, insert_ref=True)
            t2 = time.perf_counter()
            sieve, sieve_steps = run_sieve(tr, sizes, cap)
            t3 = time.perf_counter()
            slab, st = run_slab(tr, sizes, cap, args.max_object, avg)
            t4 = time.perf_counter()
            rows.append((name, cap, lru, clock, clock1, sieve, slab, st))
            print(
                f"{name:16s} cap={cap / 2**20:7.1f}MiB lru={lru:.4f} clock={clock:.4f}/{clock1:.4f} "
                f"sieve={sieve:.4f} "
                f"slab={slab:.4f} slab-lru={100 * (slab - lru):+.2f}pt items={st['items']} "
                f"steals={st['page_steals']} hand/evict clock={clock_steps:.2f} sieve={sieve_steps:.2f} "
                f"({t1 - t0:.1f}s/{t2 - t1:.1f}s/{t3 - t2:.1f}s/{t4 - t3:.1f}s)",
                flush=True,
            )
    lines = [
        f"Hit ratio, {args.requests} requests over {n} objects ("
        + (f"fixed {args.fixed} B values" if args.fixed else f"log-normal values, median {args.median} B")
        + f", keys ~50 B), max_object_size {args.max_object} B. LRU, CLOCK and SIEVE are whole-cache models "
        "counting key+value bytes only; the slab cache fits index, headers and slab slack into the same "
        "capacity. CLOCK: new entries start with the bit clear; CLOCK-set: with it set. Differences are in "
        "percentage points against exact LRU.",
        "",
        "| trace | capacity | exact LRU | CLOCK | CLOCK-set | SIEVE | slab cache (S3-FIFO per class) "
        "| CLOCK − LRU | CLOCK-set − LRU | SIEVE − LRU | slab − LRU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cap, lru, clock, clock1, sieve, slab, _ in rows:
        ratios = " | ".join(f"{x:.4f}" for x in (lru, clock, clock1, sieve, slab))
        diffs = " | ".join(f"{100 * (x - lru):+.2f} pt" for x in (clock, clock1, sieve, slab))
        lines.append(f"| {name} | {cap / 2**20:.1f} MiB | {ratios} | {diffs} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
