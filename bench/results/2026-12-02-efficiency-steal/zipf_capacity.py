"""How many objects a whole-cache S3-FIFO model needs to match exact LRU on bench.zipfproxy's trace
(1 KiB bodies, 100,000 keys, 200,000 requests, Zipf s, seed 42, second half measured). A model, not the
proxy: it says how far per-object bytes are from what the s = 1.1 point asks.
Run from the repository root: python bench/results/2026-12-02-efficiency-steal/zipf_capacity.py [s]"""

import sys
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.hitratio import zipf_trace  # noqa: E402
from bench.zipfproxy import lru_hit_ratio  # noqa: E402


def s3fifo(trace: list[int], cap: int, half: int) -> float:
    small: deque[int] = deque()
    main: deque[int] = deque()
    freq: dict[int, int] = {}
    ghost: OrderedDict[int, None] = OrderedDict()
    hits = 0

    def evict() -> None:
        while True:
            if small and (len(small) >= 0.1 * cap or not main):
                k = small.pop()
                if freq[k] >= 1:
                    freq[k] = 0
                    main.appendleft(k)
                    continue
                del freq[k]
                ghost[k] = None
                if len(ghost) > cap:
                    ghost.popitem(last=False)
                return
            k = main.pop()
            if freq[k] > 0:
                freq[k] -= 1
                main.appendleft(k)
                continue
            del freq[k]
            return

    for i, k in enumerate(trace):
        if k in freq:
            hits += i >= half
            freq[k] = min(3, freq[k] + 1)
            continue
        if len(freq) >= cap:
            evict()
        if k in ghost:
            del ghost[k]
            main.appendleft(k)
        else:
            small.appendleft(k)
        freq[k] = 0
    return hits / (len(trace) - half)


# the objects the proxy's reference LRU holds in 16 MiB at body + URL each
LRU_HELD = (16 << 20) // (1024 + len(b"/obj?id=99999") + len(b"bench.local"))

if __name__ == "__main__":
    s = float(sys.argv[1]) if len(sys.argv) > 1 else 1.1
    trace = zipf_trace(100_000, 200_000, s, np.random.default_rng(42))
    half = len(trace) // 2
    ref = lru_hit_ratio(trace, 1, LRU_HELD, half)
    print(f"s={s}: exact LRU holding {LRU_HELD} objects (the proxy's reference): {ref:.4f}")
    for held in (13_000, 13_500, 14_000, 14_500, 15_000):
        print(f"  S3-FIFO model holding {held}: {s3fifo(trace.tolist(), held, half):.4f}")
