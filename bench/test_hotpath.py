"""Micro-benchmarks of the request hot path: raw HTTP/1.1 bytes through edgecore's real client protocol.

Run: pytest bench/ --benchmark-only   (the normal test run, testpaths = tests, does not collect bench/).

Only the public construction is used: `make_context(cfg, cache, counters, loop)` and `ClientProtocol(ctx)`,
driven through `connection_made(transport)` / `data_received(bytes)` with an in-memory transport. The objects
are stored once through the real miss path (a tiny origin on 127.0.0.1, the protocol's own upstream pool),
then every benchmarked call is a fresh hit, answered synchronously inside data_received: no socket, no event
loop turn, so the figure is the Python cost of parse -> key -> lookup -> freshness -> write.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("pytest_benchmark")
protocol = pytest.importorskip(
    "edgecore.protocol", reason="edgecore.protocol (and its cache extension) not built"
)
from edgecore.cache import Cache  # noqa: E402
from edgecore.config import Config, Upstream  # noqa: E402
from edgecore.metrics import SharedCounters  # noqa: E402

BODIES = {"1k": b"a" * 1024, "16k": b"b" * 16384}


class MemoryTransport(asyncio.Transport):
    """Collects what the protocol writes; counts bytes only, unless `keep` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.keep = True
        self.data = bytearray()
        self.written = 0
        self.closed = False

    def write(self, data) -> None:
        self.written += len(data)
        if self.keep:
            self.data += data

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.write(c)

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass


class _Origin(asyncio.Protocol):
    """GET /<name>.bin -> the body with Cache-Control: public, max-age=3600 (one response per request)."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            body = BODIES.get(path.strip(b"/").split(b".")[0].decode(), b"")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Cache-Control: public, max-age=3600\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )


def _request(name: str) -> bytes:
    return (
        f"GET /{name}.bin HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".encode()
    )


def build(cache_size: int = 32 << 20):
    """A loop, the tiny origin on 127.0.0.1:0, and edgecore's real context and client protocol on an
    in-memory transport. -> (loop, server, cache, ctx, proto, transport); `teardown` undoes it."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Origin, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    cfg = Config(upstream=(Upstream("127.0.0.1", port),), cache_size=cache_size)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    ctx = protocol.make_context(cfg, cache, SharedCounters(slots=2).slot_view(1), loop)
    proto = protocol.ClientProtocol(ctx)
    tr = MemoryTransport()
    proto.connection_made(tr)
    return loop, server, cache, ctx, proto, tr


def teardown(loop, server, cache, ctx, proto) -> None:
    proto.connection_lost(None)
    ctx.stop()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    cache.close()


@pytest.fixture(scope="module")
def edge():
    """(loop, ctx, protocol, transport) with every body of BODIES stored in the cache."""
    loop, server, cache, ctx, proto, tr = build()

    async def fill(name: str) -> None:
        # miss: the protocol fetches from the origin and stores; run the loop until the body is written
        tr.data.clear()
        proto.data_received(_request(name))
        for _ in range(1000):
            if tr.data.endswith(BODIES[name]):
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"no response for {name}: {bytes(tr.data[:300])!r}")

    for name in BODIES:
        loop.run_until_complete(fill(name))
        tr.data.clear()
        proto.data_received(_request(name))  # a hit is answered synchronously
        head = bytes(tr.data.split(b"\r\n\r\n", 1)[0]).lower()
        assert tr.data.endswith(BODIES[name]) and b"cache-status: edgecore; hit" in head, bytes(tr.data[:400])
    yield loop, ctx, proto, tr
    teardown(loop, server, cache, ctx, proto)


def _bench_hits(benchmark, edge, name: str, pipelined: int = 1) -> None:
    _, _, proto, tr = edge
    req = _request(name) * pipelined
    tr.keep = False
    start = tr.written
    calls = [0]

    def one() -> None:
        calls[0] += 1
        proto.data_received(req)

    try:
        benchmark(one)
    finally:
        tr.keep = True
    per_call = (tr.written - start) / max(1, calls[0])
    assert per_call >= pipelined * len(BODIES[name]), "a benchmarked request was not answered synchronously"


def test_hit_1k(benchmark, edge):
    """One GET -> one 1 KiB hit, the common case."""
    _bench_hits(benchmark, edge, "1k")


def test_hit_16k(benchmark, edge):
    _bench_hits(benchmark, edge, "16k")


def test_hit_1k_pipelined_x16(benchmark, edge):
    """16 pipelined GETs in one read: per-request cost without the per-read overhead."""
    _bench_hits(benchmark, edge, "1k", pipelined=16)


def test_miss_1k(benchmark, edge):
    """One GET for a key never seen -> a miss: the real upstream pool fetches from the tiny origin on
    127.0.0.1 (same process, so its few µs are included), stores, answers. Each round runs the loop until the
    response is written: the figure is the miss path's Python cost plus two loopback round trips."""
    loop, _, proto, tr = edge
    tr.keep = False
    n = [0]

    async def until(target: int) -> None:
        for _ in range(100_000):
            if tr.written >= target:
                return
            await asyncio.sleep(0)
        raise AssertionError("miss not answered")

    def one() -> None:
        n[0] += 1
        start = tr.written
        proto.data_received(
            f"GET /1k.bin?miss={n[0]} HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: wrk\r\n\r\n".encode()
        )
        loop.run_until_complete(until(start + 1024))

    try:
        benchmark(one)
    finally:
        tr.keep = True
    assert proto.ctx.cache.stats()["stores"] >= n[0]
