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
from edgecore.config import Config, RouteConfig, Upstream  # noqa: E402
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


def build(cache_size: int = 32 << 20, routes: tuple[RouteConfig, ...] = ()):
    """A loop, the tiny origin on 127.0.0.1:0, and edgecore's real context and client protocol on an
    in-memory transport (with `routes` as [[routes]]). -> (loop, server, cache, ctx, proto, transport);
    `teardown` undoes it."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Origin, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    cfg = Config(upstream=(Upstream("127.0.0.1", port),), cache_size=cache_size, routes=routes)
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


# eight [[routes]] none of which matches the benchmark's requests (Host bench.example, /1k.bin)
UNMATCHED_ROUTES = (
    RouteConfig(host="api.example", path_prefix="/v1", default_ttl=30),
    RouteConfig(host="*.cdn.example", max_ttl=5),
    RouteConfig(host="static.example", key_sort_query=True),
    RouteConfig(host="*.bench.example", bypass=True),
    RouteConfig(path_prefix="/admin/", bypass=True),
    RouteConfig(path_prefix="/search", key_drop_params=("utm_source",)),
    RouteConfig(host="bench.example", path_prefix="/1k.bin/x", ignore_client_no_cache=True),
    RouteConfig(host="geo.example", key_headers=("x-country",)),
)
# a route that matches them (and changes nothing about a hit): the general path answers
MATCHED_ROUTE = (RouteConfig(host="bench.example", max_ttl=600),)


@pytest.fixture(scope="module")
def edge():
    yield from _edge(())


@pytest.fixture(scope="module")
def edge_unmatched_routes():
    yield from _edge(UNMATCHED_ROUTES)


@pytest.fixture(scope="module")
def edge_matched_route():
    yield from _edge(MATCHED_ROUTE)


@pytest.fixture(scope="module")
def edge_general():
    yield from _edge((), general=True)


def _edge(routes: tuple[RouteConfig, ...], general: bool = False):
    """(loop, ctx, protocol, transport) with every body of BODIES stored in the cache; `general`: with the
    C hit path off (as EDGECORE_NO_FASTPATH=1)."""
    loop, server, cache, ctx, proto, tr = build(routes=routes)
    if general:
        ctx.hitpath.enabled = False

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
        proto.data_received(_request(name))  # a hit is answered synchronously (on the C path)
        if routes is MATCHED_ROUTE or general:
            loop.run_until_complete(fill(name))  # the general path answers in the request's task
        head = bytes(tr.data.split(b"\r\n\r\n", 1)[0]).lower()
        assert tr.data.endswith(BODIES[name]) and b"cache-status: edgecore; hit" in head, bytes(tr.data[:400])
    yield loop, ctx, proto, tr
    teardown(loop, server, cache, ctx, proto)


def _bench_hits(benchmark, edge, name: str, pipelined: int = 1, run_loop: bool = False) -> None:
    loop, _, proto, tr = edge
    req = _request(name) * pipelined
    tr.keep = False
    start = tr.written
    calls = [0]

    async def until(target: int) -> None:
        for _ in range(100_000):
            if tr.written >= target:
                return
            await asyncio.sleep(0)
        raise AssertionError("hit not answered")

    def one() -> None:
        calls[0] += 1
        before = tr.written
        proto.data_received(req)
        if run_loop:  # the general path answers in the request's task: run the loop until it is written
            loop.run_until_complete(until(before + len(BODIES[name])))

    try:
        benchmark(one)
    finally:
        tr.keep = True
    per_call = (tr.written - start) / max(1, calls[0])
    assert per_call >= pipelined * len(BODIES[name]), "a benchmarked request was not answered synchronously"


def test_hit_1k(benchmark, edge):
    """One GET -> one 1 KiB hit, the common case."""
    _bench_hits(benchmark, edge, "1k")


@pytest.mark.benchmark(group="hit-1k-routes")
def test_hit_1k_no_routes(benchmark, edge):
    """Side by side with the next two (one group): a 1 KiB hit without [[routes]] ..."""
    _bench_hits(benchmark, edge, "1k")


@pytest.mark.benchmark(group="hit-1k-routes")
def test_hit_1k_unmatched_routes(benchmark, edge_unmatched_routes):
    """... with eight [[routes]] that do not match it (the C hit path checks its table and answers) ..."""
    assert edge_unmatched_routes[1].routes.match(b"bench.example", b"/1k.bin") is None
    _bench_hits(benchmark, edge_unmatched_routes, "1k")


@pytest.mark.benchmark(group="hit-1k-routes")
def test_hit_1k_matched_route(benchmark, edge_matched_route):
    """... and on a route (the general path answers it, applying the route; each call runs the loop until
    the response is written, as a general-path hit needs)."""
    assert edge_matched_route[1].routes.match(b"bench.example", b"/1k.bin") is not None
    _bench_hits(benchmark, edge_matched_route, "1k", run_loop=True)


@pytest.mark.benchmark(group="hit-1k-routes")
def test_hit_1k_general_path_no_routes(benchmark, edge_general):
    """The general path's own cost for the same hit, without routes, measured as the matched one is."""
    _bench_hits(benchmark, edge_general, "1k", run_loop=True)


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
