"""Review of the plain-miss fast path (5122f2c..): end-to-end tests against a real `edgecore serve`.

The edge runs with a spy (SpyEdge): PlainMiss's entry points print one line each to stderr, so a test knows
the plain path (not the general one) fetched a request, and EDGECORE_TEST_NO_PLAIN=1 turns the plain path
off, so the same scenario can be compared with what the general path does. The origin (RawOrigin) is a
small scriptable HTTP/1.1 server on 127.0.0.1 that can hold a response behind a gate or close a kept-alive
connection without answering.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from client import Conn, Edge, Response

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `edgecore serve` with PlainMiss instrumented (inherited by the forked workers).
SPY_MAIN = r"""
import os, sys
from edgecore import plainmiss, protocol

def _spy(name):
    orig = getattr(plainmiss.PlainMiss, name)
    def wrapper(self, *a, **kw):
        raw = a[5] if name == "__init__" else self.raw
        target = raw.split(b" ", 2)[1].decode("latin-1")
        sys.stderr.write("SPY %s %d %s\n" % (name, os.getpid(), target))
        sys.stderr.flush()
        return orig(self, *a, **kw)
    setattr(plainmiss.PlainMiss, name, wrapper)

for _n in ("__init__", "_complete", "_hand_over", "lost", "_fail"):
    _spy(_n)
if os.environ.get("EDGECORE_TEST_NO_PLAIN") == "1":
    protocol.ClientProtocol._plain_miss = lambda self, miss, data: False

from edgecore.cli import main
sys.argv = ["edgecore", *sys.argv[1:]]
raise SystemExit(main())
"""

SPY_LINE = re.compile(r"SPY (\S+) (\d+) (\S+)")


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll cond (bounded): True as soon as it holds, False after timeout."""
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return False


# ====================================================================== the origin


def ok(body: bytes, cc: bytes = b"max-age=60", *fields: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncache-control: " + cc + b"\r\n" + b"".join(f + b"\r\n" for f in fields)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


@dataclass
class Seen:
    path: str
    conn: int  # which origin connection carried it (1, 2, ... in accept order)
    head: bytes


@dataclass
class RawOrigin:
    """routes: path -> list of actions, one per request to that path, in order (the last one repeats):
    bytes (write them), ("gate", name, bytes) (write them once the gate opens) or ("gate_drop", name)
    (close the connection without answering once the gate opens). Unknown paths get ok(path)."""

    routes: dict[str, list] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.cond = threading.Condition()
        self.gates: dict[str, asyncio.Event] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        self.nconn = 0
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _gate(self, name: str) -> asyncio.Event:
        if name not in self.gates:
            self.gates[name] = asyncio.Event()
        return self.gates[name]

    def open_gate(self, name: str) -> None:
        self.loop.call_soon_threadsafe(lambda: self._gate(name).set())

    def count(self, path: str) -> int:
        with self.cond:
            return sum(1 for s in self.seen if s.path == path)

    def wait_count(self, path: str, n: int, timeout: float = 10.0) -> bool:
        return wait_for(lambda: self.count(path) >= n, timeout)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.nconn += 1
        cid = self.nconn
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                path = target.split("?")[0]
                with self.cond:
                    n = sum(1 for s in self.seen if s.path == path)
                    self.seen.append(Seen(path, cid, head))
                    self.cond.notify_all()
                plan = self.routes.get(path)
                action = plan[min(n, len(plan) - 1)] if plan else ok(path.encode())
                if isinstance(action, bytes):
                    writer.write(action)
                elif action[0] == "gate":
                    await self._gate(action[1]).wait()
                    writer.write(action[2])
                elif action[0] == "gate_drop":
                    await self._gate(action[1]).wait()
                    return
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            return
        finally:
            self.writers.discard(writer)
            writer.close()


# ====================================================================== the edge, with a spy


class SpyEdge(Edge):
    """A real `edgecore serve` on 127.0.0.1 (ephemeral ports) with PlainMiss instrumented; `plain=False`
    turns the plain path off."""

    def __init__(self, upstream: str, workers: int = 1, plain: bool = True, **env: str) -> None:
        super().__init__(
            upstream,
            workers=workers,
            env={"EDGECORE_TEST_NO_PLAIN": "0" if plain else "1", **env},
            main=[sys.executable, "-c", SPY_MAIN],
        )

    def spy(self, name: str | None = None, target: str | None = None) -> list[tuple[str, int, str]]:
        out = []
        for line in list(self.lines):
            m = SPY_LINE.match(line)
            if m and (name is None or m.group(1) == name) and (target is None or m.group(3) == target):
                out.append((m.group(1), int(m.group(2)), m.group(3)))
        return out


@pytest.fixture
def origin():
    o = RawOrigin()
    yield o
    o.close()


@pytest.fixture
def edges():
    made: list[SpyEdge] = []

    def make(upstream: str, **kw) -> SpyEdge:
        e = SpyEdge(upstream, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def req(target: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    return (
        f"{method} {target} HTTP/{version}\r\nHost: review.test\r\n"
        + "".join(f + "\r\n" for f in fields)
        + "\r\n"
    ).encode("latin-1")


def exchange(conn: Conn, target: str, *fields: str, method: str = "GET") -> Response:
    conn.send(req(target, *fields, method=method))
    return conn.read_response(head_only=method == "HEAD")


def conns_per_worker(edge: SpyEdge, workers: int, prefix: str) -> list[Conn]:
    """One kept-alive client connection per worker (found by which worker's served count moves), each of
    whose workers has fetched a miss, so that it holds an idle pooled upstream connection."""
    found: dict[int, Conn] = {}
    for i in range(64):
        before = edge.stats()["workers"]["requests"]
        c = Conn(edge.port)
        r = exchange(c, f"{prefix}/warm{i}")
        assert r.status == 200
        after = edge.stats()["workers"]["requests"]
        moved = [s for s in range(workers) if after[s] != before[s]]
        assert len(moved) == 1, (before, after)
        if moved[0] in found:
            c.close()
        else:
            found[moved[0]] = c
        if len(found) == workers:
            return [found[s] for s in range(workers)]
    raise AssertionError(f"could not reach {workers} workers: {sorted(found)}")


# ====================================================================== regressions (bugs this review found)


def test_reused_connection_dropped_keeps_waiters_coalesced(origin, edges):
    """An idle pooled connection the origin closes (its keep-alive timeout) just as a miss is sent on it,
    with a second client already waiting for that key. The general path retries on a new connection
    within the same flight: the waiter is served the stored response (collapsed) and the origin sees the
    key twice (the dropped request and the retry). The plain path must do no worse."""
    results = {}
    for plain in (False, True):
        o = RawOrigin()
        try:
            path = "/co"
            o.routes[path] = [("gate_drop", "drop"), ok(b"shared body")]
            e = edges(o.url, plain=plain)
            warm = Conn(e.port)
            assert exchange(warm, "/warm").status == 200  # leaves one idle pooled connection
            a, b = Conn(e.port), Conn(e.port)
            a.send(req(path))
            assert o.wait_count(path, 1)
            warm_conn = next(s.conn for s in o.seen if s.path == "/warm")
            assert o.seen[-1].conn == warm_conn  # sent on the reused connection
            b.send(req(path))
            assert wait_for(lambda e=e: e.stats()["coalescing"]["waiting"] == 1)
            o.open_gate("drop")  # the origin closes that connection without answering
            ra, rb = a.read_response(), b.read_response()
            assert ra.status == rb.status == 200
            assert ra.body == rb.body == b"shared body"
            st = e.stats()
            results[plain] = (rb.cache_status, o.count(path), st["cache"]["hits"], st["cache"]["misses"])
            if plain:
                assert len(e.spy("__init__", path)) == 1 and len(e.spy("lost", path)) == 1
            for c in (warm, a, b):
                c.close()
        finally:
            o.close()
    general = results[False]
    assert "collapsed;" in general[0] and general[1] == 2, general
    assert results[True] == general, results


# ====================================================================== behaviour confirmed


def test_two_workers_coalesce_plain_misses_into_one_upstream_request(origin, edges):
    """Worker 0 fetches a key as a plain miss (holding the cross-worker lock); worker 1, with an idle
    pooled connection of its own, gets the same key meanwhile: it waits for the lock instead of fetching,
    then serves what worker 0 stored. One upstream request."""
    e = edges(origin.url, workers=2)
    c0, c1 = conns_per_worker(e, 2, "/w")
    pids = e.stats()["workers"]["pids"]
    origin.routes["/k"] = [("gate", "k", ok(b"one fetch"))]
    c0.send(req("/k"))
    assert origin.wait_count("/k", 1)
    assert [p for _, p, _ in e.spy("__init__", "/k")] == [pids[0]]  # worker 0: the plain path
    c1.send(req("/k"))
    assert wait_for(lambda: e.stats()["coalescing"]["waiting"] == 1)
    origin.open_gate("k")
    r0, r1 = c0.read_response(), c1.read_response()
    assert r0.status == r1.status == 200 and r0.body == r1.body == b"one fetch"
    assert r0.cache_status.startswith("edgecore; fwd=uri-miss; fwd-status=200; stored")
    assert "collapsed" in r1.cache_status
    assert origin.count("/k") == 1
    assert [p for _, p, _ in e.spy("_complete", "/k")] == [pids[0]]
    # the lock is gone: a third request in either worker is a plain hit
    for c in (c0, c1):
        assert exchange(c, "/k").cache_status.startswith("edgecore; hit")
    assert origin.count("/k") == 1


def test_worker_killed_mid_plain_miss_does_not_wedge_the_key(origin, edges):
    """Worker 0 dies holding the cross-worker lock of a plain miss: worker 1's request for the key waits
    at most the lock's lifetime (response_timeout), then fetches it itself."""
    e = edges(origin.url, workers=2, EDGECORE_RESPONSE_TIMEOUT="1.5")
    c0, c1 = conns_per_worker(e, 2, "/d")
    pids = e.stats()["workers"]["pids"]
    origin.routes["/dead"] = [("gate", "never", b""), ok(b"fetched again")]
    c0.send(req("/dead"))
    assert origin.wait_count("/dead", 1)
    assert [p for _, p, _ in e.spy("__init__", "/dead")] == [pids[0]]
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    r = exchange(c1, "/dead")
    assert r.status == 200 and r.body == b"fetched again"
    assert time.monotonic() - t0 < 8
    assert origin.count("/dead") == 2
    assert exchange(c1, "/dead").cache_status.startswith("edgecore; hit")
    origin.open_gate("never")


def test_sigterm_during_a_plain_miss_finishes_it(origin, edges):
    e = edges(origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    origin.routes["/term"] = [("gate", "term", ok(b"finished"))]
    c.send(req("/term"))
    assert origin.wait_count("/term", 1)
    assert len(e.spy("__init__", "/term")) == 1
    e.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: e.admin("/readyz").status == 503)
    origin.open_gate("term")
    r = c.read_response()
    assert r.status == 200 and r.body == b"finished" and r.complete
    assert c.closed_by_peer()  # draining: the connection closes after the response
    assert e.stop() == 0
    assert len(e.spy("_complete", "/term")) == 1


def test_stats_and_metrics_count_plain_misses_as_the_general_path_does(edges):
    """Plain misses (stored, handed over, uncacheable, 502) count in /stats and /metrics exactly as the
    same requests do on the general path."""
    counts = {}
    for plain in (True, False):
        o = RawOrigin()
        try:
            o.routes["/chunked"] = [
                b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            ]
            o.routes["/nostore"] = [ok(b"x", b"no-store")]
            o.routes["/bad"] = [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-f: a\r\n b\r\n\r\nx"]
            e = edges(o.url, plain=plain)
            c = Conn(e.port)
            assert exchange(c, "/warm").status == 200
            base = e.stats()
            got = []
            for t in ("/s1", "/s2", "/chunked", "/nostore", "/s1", "/chunked"):
                got.append(exchange(c, t).status)
            got.append(exchange(c, "/h", method="HEAD").status)
            assert got == [200] * 7
            st = e.stats()
            metrics = e.admin("/metrics").body.decode()
            # an invalid response: a 502 counted as an error (the general path retries it on a new
            # connection, the handed-over exchange does not: upstream requests are not compared)
            assert exchange(c, "/bad").status == 502
            after = e.stats()
            assert after["cache"]["misses"] == st["cache"]["misses"]
            assert sum(after["workers"]["requests"]) == sum(st["workers"]["requests"]) + 1
            err = re.search(
                r'edgecore_requests_total\{cache_status="error"\} (\S+)', e.admin("/metrics").body.decode()
            )
            assert err is not None and err.group(1) == "1.0"
            reqs = dict(re.findall(r'edgecore_requests_total\{cache_status="(\w+)"\} (\S+)', metrics))
            counts[plain] = (
                st["cache"]["hits"] - base["cache"]["hits"],
                st["cache"]["misses"] - base["cache"]["misses"],
                st["upstream"]["requests"] - base["upstream"]["requests"],
                sum(st["workers"]["requests"]) - sum(base["workers"]["requests"]),
                reqs,
            )
            if plain:
                assert {t for _, _, t in e.spy("__init__")} >= {"/s1", "/s2", "/chunked", "/nostore", "/h"}
            c.close()
        finally:
            o.close()
    assert counts[True] == counts[False], counts
    hits, misses, upstream, served, reqs = counts[True]
    assert (hits, misses, upstream, served) == (2, 5, 5, 7)
    # totals: the warm-up miss counts too; /nostore is uncacheable
    assert (reqs["miss"], reqs["uncacheable"], reqs["hit"]) == ("5.0", "1.0", "2.0")


def test_client_gone_mid_plain_miss_still_stores_and_frees_the_key(origin, edges):
    e = edges(origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    origin.routes["/gone"] = [("gate", "gone", ok(b"kept"))]
    c.send(req("/gone"))
    assert origin.wait_count("/gone", 1)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # reset: the edge sees the client go before the response comes
    origin.open_gate("gone")
    assert wait_for(lambda: len(e.spy("_complete", "/gone")) == 1)
    c2 = Conn(e.port)
    r = exchange(c2, "/gone")
    assert r.status == 200 and r.body == b"kept" and r.cache_status.startswith("edgecore; hit")
    assert origin.count("/gone") == 1
    # the pooled connection went back idle: the next miss is plain again
    assert exchange(c2, "/next").status == 200
    assert len(e.spy("_complete", "/next")) == 1
    c2.close()


def test_pipelined_plain_misses_hits_and_general_requests_in_order(origin, edges):
    e = edges(origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    assert exchange(c, "/hit").status == 200
    origin.routes["/post"] = [ok(b"posted", b"no-store")]
    batch = (
        req("/hit")
        + req("/p1")
        + req("/hit")
        + req("/p2", method="HEAD")
        + b"POST /post HTTP/1.1\r\nHost: review.test\r\nContent-Length: 2\r\n\r\nhi"
        + req("/p1")
        + req("/p3", "Cache-Control: no-cache")
        + req("/p4", version="1.0")
    )
    c.send(batch)
    got = [c.read_response(head_only=i == 3) for i in range(8)]
    assert [r.status for r in got] == [200] * 8
    assert [r.body for r in got] == [b"/hit", b"/p1", b"/hit", b"", b"posted", b"/p1", b"/p3", b"/p4"]
    assert got[3].header("content-length") == "3"
    assert got[5].cache_status.startswith("edgecore; hit")
    assert got[7].header("connection") == "close"
    assert c.closed_by_peer()
    assert {t for _, _, t in e.spy("__init__")} >= {"/p1"}
    c.close()


def test_connection_paused_for_a_slow_client_is_not_reused_paused(origin, edges):
    """A client that does not read: big pipelined hits fill its socket (the edge pauses writing to it), and
    the miss pipelined after them is fetched on the general path while the client is write-paused, so its
    upstream connection is paused too; its whole response is read in one read and the connection goes back
    to the pool. Another client's plain miss then takes that pooled connection."""
    e = edges(origin.url, EDGECORE_RESPONSE_TIMEOUT="1.5")
    origin.routes["/big"] = [ok(b"b" * 1_000_000)]
    c = Conn(e.port)
    assert len(exchange(c, "/big").body) == 1_000_000  # stored
    assert exchange(c, "/big").cache_status.startswith("edgecore; hit")
    c.close()
    slow = Conn(e.port)
    before = e.stats()["cache"]["misses"]
    # more than the kernel buffers on loopback take; Pragma sends /small down the general path (a
    # StoreSink that couples its upstream connection to this client's flow control)
    slow.send(req("/big") * 10 + req("/small", "Pragma: x"))
    assert wait_for(lambda: e.stats()["cache"]["misses"] == before + 1)  # /small answered (not yet read)
    assert [len(slow.read_response().body) for _ in range(10)] == [1_000_000] * 10
    assert slow.read_response().body == b"/small"
    other = Conn(e.port)
    t0 = time.monotonic()
    r = exchange(other, "/next")
    took = time.monotonic() - t0
    assert len(e.spy("__init__", "/next")) == 1  # the plain path took the pooled connection
    assert (r.status, r.body) == (200, b"/next"), (r.status, r.cache_status)
    assert took < 1.0
    for x in (slow, other):
        x.close()
