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

from edgecore import protocol
from edgecore.cache import Cache
from edgecore.config import Config, Upstream
from edgecore.metrics import SharedCounters

from .test_hotpath import MemoryTransport, _Origin


def main(argv: list[str]) -> None:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Origin, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    cfg = Config(upstream=(Upstream("127.0.0.1", port),), cache_size=64 << 20)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    ctx = protocol.make_context(cfg, cache, SharedCounters(slots=2).slot_view(1), loop)
    proto = protocol.ClientProtocol(ctx)
    tr = MemoryTransport()
    tr.keep = False
    proto.connection_made(tr)
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
    ctx.stop()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1:])
