"""CPU per cache miss, in process: the setup of bench/test_hotpath.py::test_miss_1k without its per-round
harness (the requests are sent from inside the running loop, as a real client's would be handled).

Run: python -m bench.profile_miss [N] [prof [sort]], e.g. `python -m bench.profile_miss 20000 prof cumulative`
Prints the process CPU time per miss (the tiny origin's share included); `prof` adds a cProfile listing.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time

from .test_hotpath import build, teardown


def main(argv: list[str]) -> None:
    loop, server, cache, ctx, proto, tr = build(64 << 20)
    tr.keep = False
    seq = [0]

    async def run(count: int) -> None:
        for _ in range(count):
            seq[0] += 1
            start = tr.written
            proto.data_received(
                b"GET /1k.bin?miss=%d HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: wrk\r\n\r\n" % seq[0]
            )
            while tr.written < start + 1024:
                await asyncio.sleep(0)

    n = int(argv[0]) if argv else 20000
    loop.run_until_complete(run(2000))  # warm up
    t = time.process_time()
    loop.run_until_complete(run(n))
    print(f"CPU per miss (origin included): {(time.process_time() - t) / n * 1e6:.1f} us")
    if len(argv) > 1 and argv[1] == "prof":
        pr = cProfile.Profile()
        pr.enable()
        loop.run_until_complete(run(n))
        pr.disable()
        pstats.Stats(pr).sort_stats(argv[2] if len(argv) > 2 else "tottime").print_stats(35)
    teardown(loop, server, cache, ctx, proto)


if __name__ == "__main__":
    main(sys.argv[1:])
