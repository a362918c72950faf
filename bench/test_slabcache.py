"""Micro-benchmarks of the slab cache beside a plain dict and an OrderedDict LRU (pytest-benchmark).

Owns: lookup-hit, lookup-miss and store for 100 B, 1 KiB and 16 KiB values, each implementation in the same
run and the same benchmark group; metadata bytes per object. Invariants: every benchmark calls the bound
method directly (one Python call per operation, as the proxy does); the caches are closed afterwards.
Must never: run in the normal test run (this lives in bench/; run it with
`python -m pytest bench/test_slabcache.py --benchmark-only`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgecore.cache import Cache

FAR = 4e9
NOW = 1.0
SIZES = {"100B": 100, "1KiB": 1024, "16KiB": 16 * 1024}
KEY = b"GET https://api.example.com/v1/catalogue/items/1234567?fields=all"  # 64 bytes
MISS = b"GET https://api.example.com/v1/catalogue/items/7654321?fields=all"


class LRU:
    """The exact LRU a Python proxy would write: OrderedDict, byte-bounded."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.od: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        v = self.od.get(key)
        if v is not None:
            self.od.move_to_end(key)
        return v

    def put(self, key: bytes, value: bytes) -> None:
        old = self.od.pop(key, None)
        if old is not None:
            self.used -= len(key) + len(old)
        self.od[key] = value
        self.used += len(key) + len(value)
        while self.used > self.capacity:
            k, v = self.od.popitem(last=False)
            self.used -= len(k) + len(v)


@pytest.fixture(scope="module")
def slab() -> Iterator[Cache]:
    c = Cache(256 << 20, 1 << 20)
    yield c
    c.close()


def _ops(impl: str, slab: Cache, value: bytes) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    if impl == "slabcache":
        slab.store(KEY, value, 0.0, FAR)
        return {
            "hit": (slab.lookup, (KEY, NOW)),
            "miss": (slab.lookup, (MISS, NOW)),
            "store": (slab.store, (KEY, value, 0.0, FAR)),
        }
    if impl == "dict":
        d = {KEY: value}
        return {"hit": (d.get, (KEY,)), "miss": (d.get, (MISS,)), "store": (d.__setitem__, (KEY, value))}
    lru = LRU(256 << 20)
    lru.put(KEY, value)
    return {"hit": (lru.get, (KEY,)), "miss": (lru.get, (MISS,)), "store": (lru.put, (KEY, value))}


@pytest.mark.parametrize("impl", ["slabcache", "dict", "OrderedDict-LRU"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", ["hit", "miss", "store"])
def test_op(benchmark: Any, slab: Cache, op: str, size: str, impl: str) -> None:
    value = b"v" * SIZES[size]
    fn, args = _ops(impl, slab, value)[op]
    benchmark.group = f"{op} {size}"
    benchmark.extra_info.update(op=op, size=size, impl=impl)
    result = benchmark(fn, *args)
    if op == "hit":
        got = result[0] if impl == "slabcache" else result
        assert got == value
    elif op == "miss":
        assert result is None


def test_metadata_bytes_per_object(benchmark: Any) -> None:
    """Fill a cache with 1 KiB objects (64-byte keys) until the first eviction; report metadata/object."""
    with Cache(64 << 20, 1 << 20) as c:
        value = b"v" * 1024
        n = 0
        while c.store(b"GET https://api.example.com/v1/catalogue/items/%017d" % n, value, 0.0, FAR):
            n += 1
            if n % 1000 == 0 and c.stats()["evictions"]:
                break
        s = c.stats()
        per_object = s["metadata_bytes"] / s["items"]
        benchmark.extra_info.update(
            items=s["items"],
            metadata_bytes=s["metadata_bytes"],
            per_object=round(per_object, 1),
            data_bytes=s["data_bytes"],
            slack_bytes=s["slack_bytes"],
            capacity=s["capacity_bytes"],
        )
        print(
            f"\nmetadata per 1 KiB object: {per_object:.1f} B ({s['items']} items, "
            f"data {s['data_bytes']} B, slack {s['slack_bytes']} B of {s['capacity_bytes']} B)"
        )
        assert per_object <= 64
        benchmark.pedantic(c.stats, rounds=3, iterations=1)


def markdown(json_path: str) -> str:
    """The µs-per-call table of a `--benchmark-json` file (median of rounds), for bench/results/."""
    import json

    with open(json_path) as f:
        data = json.load(f)
    cpu = data["machine_info"].get("cpu", {}).get("brand_raw", "unknown CPU")
    med: dict[tuple[str, str, str], float] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "op" in info:
            med[(info["op"], info["size"], info["impl"])] = b["stats"]["median"] * 1e6
    impls = ["slabcache", "dict", "OrderedDict-LRU"]
    lines = [
        "Median µs per call from Python, one run of"
        f" `python -m pytest bench/test_slabcache.py --benchmark-only` ({cpu}, 2 noisy cores). Keys are 64 B;"
        " slabcache = shared-memory Cache(256 MiB), lookup returns (bytes copy, expires, flags);"
        " OrderedDict-LRU = byte-bounded move_to_end LRU in Python (process-local, no TTL, no sharing).",
        "",
        "| operation | value | " + " | ".join(impls) + " |",
        "|---|---|" + "---:|" * len(impls),
    ]
    for op in ["hit", "miss", "store"]:
        for size in SIZES:
            cells = [f"{med[(op, size, i)]:.3f}" if (op, size, i) in med else "-" for i in impls]
            lines.append(
                f"| lookup-{op} | {size} | " + " | ".join(cells) + " |"
                if op != "store"
                else f"| store | {size} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(markdown(sys.argv[1]), end="")
