"""End to end: availability on the bad day, with real sockets and real failures.

- Stale by operator policy (RFC 9111 4.2.4, RFC 5861; config stale_if_error / stale_while_revalidate /
  stale_keep): an expired plain response is served stale when the origin refuses, resets, times out, answers
  5xx or closes before answering; never against must-revalidate / no-cache / a request that forbids it; a
  failed background refresh never replaces a copy that may still be served.
- Workers: a worker SIGKILLed while it leads a coalesced miss releases its lock at once.
- Clients: a pipelining client that reads nothing is bounded; a trickled head is closed at
  client_header_timeout; max_connections per worker.
Every test runs on both paths (`path`: the C fast paths on, and off).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
from client import Conn, Edge, Response, get, wait_for
from origin import close_listener


def ok(body: bytes, cc: bytes = b"max-age=1", *fields: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncache-control: " + cc + b"\r\n" + b"".join(f + b"\r\n" for f in fields)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def status(n: int, body: bytes = b"broken") -> bytes:
    return b"HTTP/1.1 %d Oops\r\ncontent-length: %d\r\n\r\n%s" % (n, len(body), body)


class FailOrigin:
    """A scriptable origin (127.0.0.1, port 0, its own thread and loop) that fails for real. routes: path ->
    list of actions, one per request to that path (the last repeats): bytes (written), "drop" (close without
    answering), "reset" (half a response, then a TCP RST), "hang" (never answer). stop() closes the listener
    and every connection (the origin is down: connections are refused); start() listens again on the same
    port."""

    def __init__(self) -> None:
        self.routes: dict[str, list] = {}
        self.seen: list[str] = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str) -> int:
        with self.cond:
            return self.seen.count(path)

    def start(self) -> None:
        async def go() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)
            self.port = self.server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        async def go() -> None:
            if self.server is not None:
                await close_listener(self.server)
                self.server = None
            for w in list(self.writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def close(self) -> None:
        self.stop()

        async def cancel() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
                with self.cond:
                    n = self.seen.count(path)
                    self.seen.append(path)
                    self.cond.notify_all()
                plan = self.routes.get(path) or [ok(path.encode())]
                action = plan[min(n, len(plan) - 1)]
                if action == "drop":
                    return
                if action == "hang":
                    await asyncio.Event().wait()
                if action == "reset":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 100\r\n\r\nhalf"
                    )
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(action)
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


@pytest.fixture
def fo():
    o = FailOrigin()
    yield o
    o.close()


@pytest.fixture
def edges(path):
    made: list[Edge] = []

    def make(upstream: str, workers: int = 1, **env: str) -> Edge:
        e = Edge(
            upstream, workers=workers, path=path, env={"EDGECORE_" + k.upper(): v for k, v in env.items()}
        )
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def expire(r: Response) -> None:
    """Wait (bounded) until a response stored with max-age=1 is stale: freshness is wall-clock time."""
    age = int(r.header("age") or 0)
    time.sleep(max(0.0, 1.2 - age))


# ---------------------------------------------------------------------- stale by operator policy


FAILURES = {"drop": "drop", "reset": "reset", "503": status(503), "500": status(500), "timeout": "hang"}
NEVER = {
    "must-revalidate": (b"max-age=1, must-revalidate", {}),  # RFC 9111 5.2.2.2
    "proxy-revalidate": (b"max-age=1, proxy-revalidate", {}),  # RFC 9111 5.2.2.8 (shared cache)
    "s-maxage": (b"max-age=1, s-maxage=1", {}),  # RFC 9111 5.2.2.10: implies proxy-revalidate
    "no-cache": (b"max-age=1, no-cache", {}),  # RFC 9111 5.2.2.4 (stored: it has a validator)
    "request-no-cache": (b"max-age=1", {"Cache-Control": "no-cache"}),  # RFC 9111 5.2.1.4
    "request-max-stale": (b"max-age=1", {"Cache-Control": "max-stale=0"}),  # RFC 9111 5.2.1.2
}


@pytest.fixture(scope="module")
def primed(path):
    """One origin and one edge (default stale settings, response_timeout 1 s, and no passive ejection, so that
    every case really goes upstream first) with an expired entry per case below, primed together and waited
    for once (freshness is wall-clock time)."""
    o = FailOrigin()
    e = Edge(o.url, path=path, env={"EDGECORE_RESPONSE_TIMEOUT": "1", "EDGECORE_MAX_FAILS": "0"})
    try:
        for name, action in FAILURES.items():
            o.routes[f"/f/{name}"] = [ok(b"good"), action]
        for name, (cc, _) in NEVER.items():
            o.routes[f"/n/{name}"] = [ok(b"good", cc, b'etag: "v"'), "drop"]
        firsts = [get(e.port, t) for t in [*o.routes]]
        assert all(r.status == 200 and "stored" in r.cache_status for r in firsts)
        expire(firsts[0])
        yield o, e
    finally:
        e.stop()
        o.close()


@pytest.mark.parametrize("failure", FAILURES)
def test_expired_plain_response_is_served_stale_when_the_origin_fails(primed, failure):
    """RFC 9111 4.2.4, RFC 5861 4 with the operator's stale_if_error (default 60 s): a plain max-age=1
    response without validators or stale-if-error of its own is kept (stale_keep) and served stale when the
    origin closes before answering (the cache-tests "stale-close"), resets mid-body, answers 5xx or times
    out."""
    o, e = primed
    r = get(e.port, f"/f/{failure}")
    assert r.status == 200 and r.body == b"good", (r.status, r.body)
    assert r.cache_status.startswith("edgecore; fwd=stale") and "detail=stale-if-error" in r.cache_status
    if failure in ("503", "500"):
        assert f"fwd-status={failure}" in r.cache_status
    assert int(r.header("age") or 0) >= 1  # RFC 9111 4.2.3: served from cache
    assert o.count(f"/f/{failure}") >= 2  # it did go upstream first
    assert wait_for(lambda: any("serving stale /f/" + failure in line for line in e.lines), 5)


@pytest.mark.parametrize("case", NEVER)
def test_never_stale_against_the_response_or_the_request(primed, case):
    _, e = primed
    r = get(e.port, f"/n/{case}", NEVER[case][1])
    assert r.status == 502 and r.body != b"good", (r.status, r.cache_status)


def test_expired_plain_response_is_served_stale_when_the_origin_is_down(fo, edges):
    """The origin process gone (connections refused): the stored copy answers, again and again."""
    e = edges(fo.url)
    fo.routes["/down"] = [ok(b"good")]
    expire(get(e.port, "/down"))
    fo.stop()
    for _ in range(3):
        r = get(e.port, "/down")
        assert r.status == 200 and r.body == b"good" and "detail=stale-if-error" in r.cache_status
    assert wait_for(lambda: any("cannot connect" in line and "serving stale" in line for line in e.lines), 5)


def test_stale_is_served_at_once_while_every_upstream_is_known_down(fo, edges):
    """The one upstream failed and is ejected (max_fails 1 within fail_timeout): an expired entry is served
    stale without another attempt on the dead server ("no live upstreams", as nginx answers from
    proxy_cache_use_stale), until the ejection ends."""
    e = edges(fo.url, fail_timeout="30")
    fo.routes["/gone"] = [ok(b"good"), "drop"]
    expire(get(e.port, "/gone"))
    first = get(e.port, "/gone")  # tries, the origin closes without answering: stale, and the server ejected
    assert first.status == 200 and first.body == b"good" and "detail=stale-if-error" in first.cache_status
    tried = fo.count("/gone")
    assert tried >= 2  # it did go upstream (a reused connection closed is retried once on a fresh one)
    for _ in range(3):
        r = get(e.port, "/gone")
        assert r.status == 200 and r.body == b"good" and "detail=stale-if-error" in r.cache_status
    assert fo.count("/gone") == tried  # not sent to the server known dead
    assert wait_for(lambda: any("no upstream is up" in line for line in e.lines), 5)


def test_stale_if_error_off_gives_502(fo, edges):
    """The same failure with stale_if_error = 0 and a response that allows nothing: a clear 502."""
    e = edges(fo.url, stale_if_error="0")
    fo.routes["/off"] = [ok(b"good"), "drop"]
    expire(get(e.port, "/off"))
    r = get(e.port, "/off")
    assert r.status == 502 and "stale" not in r.cache_status


def test_failed_background_refresh_never_replaces_a_servable_copy(fo, edges):
    """RFC 5861 3 and 4 together: the refresh behind stale-while-revalidate gets a 503; the stored copy stays
    (it used to be replaced by the 503, then hit-for-miss)."""
    e = edges(fo.url)
    fo.routes["/swr"] = [ok(b"good", b"max-age=1, stale-while-revalidate=60, stale-if-error=60"), status(503)]
    expire(get(e.port, "/swr"))
    r = get(e.port, "/swr")
    assert r.status == 200 and r.body == b"good" and "detail=stale-while-revalidate" in r.cache_status
    assert wait_for(lambda: fo.count("/swr") >= 2)
    for _ in range(3):  # each one triggers (or finds) a refresh that fails again: still the stored copy
        r = get(e.port, "/swr")
        assert r.status == 200 and r.body == b"good", (r.status, r.cache_status)
    assert wait_for(lambda: fo.count("/swr") >= 3)
    assert get(e.port, "/swr").body == b"good"


def test_operator_stale_while_revalidate_default(fo, edges):
    """stale_while_revalidate = N applies to a response that names none (RFC 5861 3): served at once while
    refreshed in the background."""
    e = edges(fo.url, stale_while_revalidate="30")
    fo.routes["/d"] = [ok(b"one"), ok(b"two")]
    expire(get(e.port, "/d"))
    r = get(e.port, "/d")
    assert r.body == b"one" and "detail=stale-while-revalidate" in r.cache_status
    assert wait_for(lambda: get(e.port, "/d").body == b"two")


def test_stale_keep_zero_drops_plain_entries_at_expiry(fo, edges):
    """stale_keep = 0 (and no stale window): an entry without validators is gone when it expires, so an
    origin failure is a 502 (the behaviour before stale_keep)."""
    e = edges(fo.url, stale_keep="0", stale_if_error="0")
    fo.routes["/k"] = [ok(b"good"), "drop"]
    expire(get(e.port, "/k"))
    assert get(e.port, "/k").status == 502


# ---------------------------------------------------------------------- clients


def vm_rss(pid: int) -> int:
    """Resident set size of a process, in bytes (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle(sample: Callable[[], object], timeout: float = 10.0, quiet: float = 0.5) -> object:
    """Poll sample() until it stops changing for `quiet` seconds (bounded by timeout): the last value."""
    deadline = time.monotonic() + timeout
    last, since = sample(), time.monotonic()
    for _ in range(10_000):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        now = sample()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def test_pipelining_client_that_reads_nothing_costs_a_bounded_amount(fo, edges):
    """500 pipelined GETs of a 256 KiB cached object, nothing read: the worker stops reading the client and
    answering once its write buffer is above the high-water mark (the C hit path between pipelined hits, the
    general path's request task), so its RSS grows by far less than the 125 MiB of answers; once the client
    reads, every answer arrives, complete and in order."""
    big = b"x" * (256 << 10)
    fo.routes["/big"] = [ok(big, b"max-age=600")]
    e = edges(fo.url)
    assert get(e.port, "/big").body == big
    assert get(e.port, "/big").cache_status.startswith("edgecore; hit")
    pid = e.stats()["workers"]["pids"][0]
    before = vm_rss(pid)
    c = Conn(e.port, timeout=30)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        n = 500
        c.send(b"GET /big HTTP/1.1\r\nHost: edge.test\r\n\r\n" * n)
        served = settle(lambda: e.stats()["workers"]["requests"][0])
        grown = vm_rss(pid) - before
        assert grown < 32 << 20, f"RSS grew {grown >> 20} MiB with {served} requests answered"
        # now read it all: the rest is answered as the buffer drains
        for i in range(n):
            r = c.read_response()
            assert r.status == 200 and r.body == big, i
    finally:
        c.close()


def test_trickled_head_is_closed_at_client_header_timeout(fo, edges):
    """A head trickled one byte at a time keeps client_timeout (silence) from firing; client_header_timeout
    is a deadline for the whole head (nginx's client_header_timeout): 408, then close."""
    e = edges(fo.url, client_header_timeout="2")
    s = socket.create_connection(("127.0.0.1", e.port))
    try:
        s.sendall(b"GET /trickle HTTP/1.1\r\nHost: edge.test\r\nX-Slow: ")
        s.settimeout(0.1)
        t0 = time.monotonic()
        got = b""
        closed = False
        for _ in range(200):  # one byte per 0.1 s at most: 20 s, far past the deadline
            if time.monotonic() - t0 > 15:
                break
            try:  # read first: what the edge sent is taken before a byte of ours could provoke a reset
                chunk = s.recv(65536)
            except TimeoutError:
                chunk = None
            except OSError:  # reset
                closed = True
                break
            if chunk == b"":
                closed = True
                break
            if chunk:
                got += chunk
                continue  # the rest of the 408, then the close
            try:
                s.sendall(b"a")
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - t0
        # the deadline (2 s) plus the once-a-second sweep, with margin; a 408 when it arrives before the close
        assert closed and elapsed < 6, (elapsed, got[:100])
        assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got[:100]
    finally:
        s.close()


def test_max_connections_stops_accepting_until_below(fo, edges):
    """max_connections = 2 on one worker: a third connection is not accepted (it waits in the listening
    socket's queue: the worker closed its copy of the socket, the supervisor's keeps it) until one of the two
    closes; then new connections are served again."""
    e = edges(fo.url, max_connections="2")
    a, b = Conn(e.port), Conn(e.port)
    try:
        for c in (a, b):
            c.request("GET", "/m")
            assert c.read_response().status == 200
        third_served = False
        try:
            r = get(e.port, "/m")
            third_served = r.status == 200
        except OSError:
            pass
        assert not third_served
        a.close()
        assert wait_for(lambda: _served(e.port))
        assert any("max_connections reached" in line for line in e.lines)
    finally:
        a.close()
        b.close()


def _served(port: int) -> bool:
    try:
        return get(port, "/m").status == 200
    except OSError:
        return False


def test_open_files_soft_limit_is_raised_to_the_hard_limit(fo, path):
    """Started with a soft limit of 512, edgecore raises it to the hard limit and says so."""
    import resource
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard open-files limit is {hard}")
    wrapper = (
        "import resource, runpy, sys\n"
        "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, h))\n"
        "sys.argv = ['edgecore', *sys.argv[1:]]\n"
        "runpy.run_module('edgecore', run_name='__main__')\n"
    )
    e = Edge(fo.url, path=path, main=[sys.executable, "-c", wrapper])
    try:
        pid = e.stats()["workers"]["pids"][0]
        with open(f"/proc/{pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        soft = line.split()[3]
        want = str(hard) if hard != resource.RLIM_INFINITY else str(1 << 20)
        assert soft == want, line
        assert any("open files limit raised from 512" in x for x in e.lines)
    finally:
        e.stop()
