"""In-process check of the page-steal rule: mixed sizes stored into one 8 MiB slab cache (one shard), objects
held per body size, beside an exact byte-LRU of the same sequence with no overhead at all.
Run from the repository root: python bench/results/2026-12-02-efficiency-steal/inprocess_mixed.py"""

import collections
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from edgecore.cache import Cache  # noqa: E402

SIZES = [100, 200, 500, 1500, 4200, 8500, 16500, 40000, 70000, 150000]
HEAD = 300  # about the nginx origin's stored head


def run(cap: int, seq: list[int]) -> tuple[int, list[int]]:
    c = Cache(cap, max_object_size=min(1 << 20, cap // 8))
    keys = []
    for n, s in enumerate(seq):
        key = b"0:3:GET15:127.0.0.1:12345/e/%d/x-1-%d" % (s, n)
        c.store(key, b"x" * (s + HEAD), 1000.0, 1e9)
        keys.append((key, s))
    held = collections.Counter(s for key, s in keys if c.lookup(key, 1000.0) is not None)
    c.close()
    return sum(held.values()), [held[s] for s in SIZES]


def byte_lru(cap: int, seq: list[int], key: int = 45) -> int:
    total = n = 0
    for s in reversed(seq):
        total += s + HEAD + key
        if total > cap:
            break
        n += 1
    return n


cap = 8 << 20
for fill in (1.3, 4.0):
    for seed in range(4):
        rng = random.Random(seed)
        seq = [rng.choice(SIZES) for _ in range(max(400, int(fill * cap / 29150) + 1))]
        tot, held = run(cap, seq)
        print(f"fill {fill} seed {seed}: held {tot} (byte-LRU {byte_lru(cap, seq)}) per size {held}")
