"""What any cache can reach on bench.zipfproxy's 1 KiB trace (100,000 keys, 200,000 requests, Zipf s,
seed 42, second half measured), by how many objects it holds: exact LRU, the S3-FIFO model of
../2026-12-02-efficiency-steal/zipf_capacity.py, and LFU with perfect knowledge of every past request
(it keeps the objects requested most often so far, admitting a new one only over a less requested one:
the best a history-based policy can do on an independent-reference trace). Models, not the proxy.
The object counts: edgecore's items through the proxy, what 16 MiB holds at the bytes edgecore's /stats
says an object holds (key + stored head + body, with no index, slot header or slack: zero overhead), and
what the proxy's reference LRU holds at body + URL.
Run from the repository root:
    python bench/results/2026-12-02-session7-zipf/headroom.py [s] [items] [held B]"""

import heapq
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.hitratio import zipf_trace  # noqa: E402
from bench.zipfproxy import lru_hit_ratio  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "zipf_capacity", Path(__file__).resolve().parents[1] / "2026-12-02-efficiency-steal" / "zipf_capacity.py"
)
assert _spec and _spec.loader
zipf_capacity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zipf_capacity)


def perfect_lfu(trace: list[int], cap: int, half: int) -> float:
    count: dict[int, int] = {}
    held: dict[int, int] = {}  # key -> its count when last pushed
    heap: list[tuple[int, int, int]] = []
    hits = 0
    for i, k in enumerate(trace):
        c = count.get(k, 0) + 1
        count[k] = c
        if k in held:
            hits += i >= half
        elif len(held) >= cap:
            while heap[0][2] not in held or held[heap[0][2]] != heap[0][0]:
                heapq.heappop(heap)  # stale entries
            if c <= heap[0][0]:
                continue  # not admitted: requested no more often than the least requested held object
            del held[heapq.heappop(heap)[2]]
        held[k] = c
        heapq.heappush(heap, (c, i, k))
    return hits / (len(trace) - half)


s = float(sys.argv[1]) if len(sys.argv) > 1 else 1.1
items = int(sys.argv[2]) if len(sys.argv) > 2 else 13_156
held_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 1168
trace = zipf_trace(100_000, 200_000, s, np.random.default_rng(42))
half = len(trace) // 2
tl = trace.tolist()
seen: set[int] = set()
cold = 0
for i, k in enumerate(tl):
    cold += i >= half and k not in seen
    seen.add(k)
print(f"s={s}: an unbounded cache: {1 - cold / (len(tl) - half):.4f}")
rows = [
    ("edgecore's items through the proxy", items),
    (f"16 MiB at {held_bytes} B an object, zero overhead", (16 << 20) // held_bytes),
    ("the proxy's reference LRU (body + URL)", zipf_capacity.LRU_HELD),
]
print("| objects held | count | exact LRU | S3-FIFO model | perfect LFU |\n|---|---:|---:|---:|---:|")
for label, n in rows:
    print(
        f"| {label} | {n:,} | {lru_hit_ratio(trace, 1, n, half):.4f} "
        f"| {zipf_capacity.s3fifo(tl, n, half):.4f} | {perfect_lfu(tl, n, half):.4f} |"
    )
