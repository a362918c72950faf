"""Upstream servers: selection (lb), health as this worker sees it, keep-alive connection pools, one HTTP/1.1
exchange at a time per connection, timeouts, and the one rendering of the request head sent upstream.

Owns: every upstream socket. The caching flow hands an Exchange its request head (and body chunks) and
receives the response through a Sink (head, body chunks, end or failure); or, for a plain miss, takes an
idle connection and reads its bytes itself (a Plain fetch), until it releases the connection or hands it to
an Exchange (adopt).
Invariants:
- a connection carries one exchange (or plain fetch) at a time and goes back to the pool only after a
  complete response that allows keep-alive, reading again; anything else closes it;
- a response body that ends early or errors reaches the sink as `failed`, never as `end`;
- connect, response-head and idle-body timeouts map to UpstreamError (502) / UpstreamTimeout (504);
- the request head sent upstream never carries a hop-by-hop or Connection-listed field (RFC 9110 7.6.1)
  and always carries our Via and X-Forwarded-For/-Proto; Connection can never remove Host, Via, Forwarded,
  X-Forwarded-* or the framing fields (CONNECTION_PROTECTED: the proxy's own fields);
- given the key's (Host, target) (keys.request_form), it sends exactly that request line and Host;
- a request's server is chosen once (`Pool.choose`; a retry on another server chooses again, excluding the
  failed ones): smooth weighted round-robin (nginx), least-request by power of two choices (Envoy's
  default), or weighted rendezvous hashing of the cache key; servers the admin process's active checks mark
  down (the shared health block) or passively ejected here (`max_fails` failures within `fail_timeout`,
  ejected for `fail_timeout`, per worker) are skipped, unless every server is out: then all are used;
- `Server.inflight` counts the exchanges and plain fetches in flight to the server from this worker, each
  once, from start to complete/fail, and is published in the worker's shared block: the
  `max_upstream_requests` circuit breaker counts all workers together;
- retries on another server are allowed by `RetryBudget`: at most `retry_budget` of the requests (plus
  RETRY_BUDGET_MIN) per window, so retries cannot multiply an outage;
- a reload's new Pool (`previous=`) takes over the Servers still configured (their idle connections,
  in-flight counts, ejections) and the exchanges in flight, which finish under the pool they started in;
  a removed Server is retired: its idle connections close at once, busy ones when released. Each Server
  carries its own shared-counter words (its upstream's block, SharedCounters.assign_blocks).
Never: touch a client transport; decide cacheability (policy's job); probe health (the admin process does).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import random
import socket
from collections.abc import Callable
from typing import Protocol

import httptools

from .config import Config, Upstream
from .errors import EdgeError, UpstreamError, UpstreamIncomplete, UpstreamTimeout
from .fields import HOP_BY_HOP, VIA
from .keys import UNKEYED_REQUEST_FIELDS
from .metrics import (
    P_DUR_BUCKETS,
    P_DUR_SUM_NS,
    P_EJECTIONS,
    P_FAILURES,
    P_INFLIGHT,
    P_RETRIES,
    SLOT_WORDS,
    U_DOWN,
    UPSTREAM_BUCKETS,
    SlotCounters,
)

log = logging.getLogger("edgecore.upstream")

Headers = list[tuple[bytes, bytes]]
TICK = 0.1  # seconds between timeout checks of the exchanges in flight

# fields not forwarded upstream when edgecore fetches a GET/HEAD for its cache: the cache answers the client's
# conditionals and ranges itself from the full response, and unkeyed routing fields would poison the entry
# (X-Forwarded-For is not dropped: the proxy appends the peer to it)
CACHE_FETCH_DROP = frozenset(
    (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range")
) | (UNKEYED_REQUEST_FIELDS - {b"x-forwarded-for"})
# never copied from the client's head: hop-by-hop (RFC 9110 7.6.1) and the framing, which is re-done
_NOT_COPIED = HOP_BY_HOP | {b"content-length", b"expect"}
# fields a Connection option can never remove (RFC 9110 7.6.1 lets it name only this hop's fields): the Host
# the key was built from, the proxy's own Via / Forwarded / X-Forwarded-*, and the framing (hop-by-hop
# deletion of these is the "hop-by-hop header abuse" class)
CONNECTION_PROTECTED = frozenset(
    (b"host", b"via", b"forwarded", b"content-length", b"transfer-encoding")
) | frozenset(n for n in UNKEYED_REQUEST_FIELDS if n.startswith(b"x-forwarded-"))


def _connection_removes(conn_listed: frozenset[bytes] | set[bytes]) -> frozenset[bytes] | set[bytes]:
    """The Connection-listed names request_head removes: none of CONNECTION_PROTECTED, nor x-forwarded-*."""
    if not conn_listed:
        return conn_listed
    return frozenset(
        n for n in conn_listed if n not in CONNECTION_PROTECTED and not n.startswith(b"x-forwarded-")
    )


# what the C plain-miss path drops when it renders the same head (it handles Connection and
# X-Forwarded-For itself, as request_head does)
FETCH_DROP_FIELDS = tuple(sorted(_NOT_COPIED | CACHE_FETCH_DROP))


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    conn_listed: frozenset[bytes] | set[bytes],
    peer: bytes,
    drop: frozenset[bytes] = frozenset(),
    extra: Headers | None = None,
    framing: bytes = b"",
    host: bytes | None = None,
) -> bytes:
    """The request head sent upstream (the one rendering; ext/hitpath.pyx's upstream_head is its C twin for
    plain GETs, held to the same bytes by tests): hop-by-hop and Connection-listed fields removed (RFC 9110
    7.6.1; never a CONNECTION_PROTECTED one), and `drop`; `host` (the key's, keys.request_form) replaces
    the client's Host field(s) where the first one was (first when there was none; not sent when empty);
    Via and X-Forwarded-For/-Proto added; `extra` fields and the body's `framing` line (Content-Length or
    Transfer-Encoding, rendered by the caller) last."""
    parts = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    xff = None
    via = proto = False
    conn_listed = _connection_removes(conn_listed)
    for name, value in headers:
        if name in _NOT_COPIED or name in conn_listed or name in drop:
            continue
        if host is not None and name == b"host":
            if host:
                parts.append(b"host: " + host + b"\r\n")
                host = b""
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if name == b"via":
            via = True
            parts.append(b"via: " + value + b", " + VIA + b"\r\n")
            continue
        if name == b"x-forwarded-proto":
            proto = True  # set by a TLS-terminating balancer in front: kept on pass-through
        parts.append(name + b": " + value + b"\r\n")
    if host:  # no Host field from the client (HTTP/1.0, absolute-form): the key's authority
        parts.insert(1, b"host: " + host + b"\r\n")
    if not via:
        parts.append(b"via: " + VIA + b"\r\n")
    parts.append(b"x-forwarded-for: " + (xff + b", " + peer if xff else peer) + b"\r\n")
    if not proto:
        parts.append(b"x-forwarded-proto: http\r\n")
    if extra:
        parts.extend(n + b": " + v + b"\r\n" for n, v in extra)
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


class Timed(Protocol):
    """What the pool's ticker checks for timeouts (an Exchange, or the protocol's plain fetch)."""

    def check(self, now: float) -> None: ...


class Plain(Timed, Protocol):
    """A fetch that reads its connection's bytes itself instead of httptools (the protocol's plain miss)."""

    def data(self, data: bytes) -> None: ...
    def lost(self) -> None: ...


class Sink(Protocol):
    """What receives an upstream response (the client-side request handler)."""

    def interim(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None: ...
    def body(self, chunk: bytes) -> None: ...
    def flush(self) -> None: ...
    def end(self) -> None: ...
    def failed(self, exc: EdgeError) -> None: ...


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small responses and request heads go out at once (no Nagle delay)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Server:
    """One configured upstream as this worker sees it: its idle connections, requests in flight, the smooth
    weighted round-robin's current weight and its passive-ejection state."""

    __slots__ = (
        "index",
        "upstream",
        "weight",
        "idle",
        "inflight",
        "current",
        "fails",
        "ejected_until",
        "hkey",
        "down_word",
        "pbase",
        "inflight_words",
        "retired",
    )

    def __init__(self, index: int, upstream: Upstream) -> None:
        self.index = index
        self.upstream = upstream
        self.weight = upstream.weight
        self.idle: list[UpstreamConnection] = []
        self.inflight = 0
        self.current = 0  # smooth weighted round-robin (nginx ngx_http_upstream_get_peer)
        self.fails: list[float] = []  # loop times of recent failures (passive ejection)
        self.ejected_until = 0.0
        self.hkey = upstream.authority.encode()[:64]  # rendezvous hashing: this server's hash key
        # its words in the shared counters (Pool sets them; -1 / empty: none): they go with the server, so a
        # request that started before a reload counts where it started
        self.down_word = -1
        self.pbase = -1
        self.inflight_words: list[int] = []
        self.retired = False  # removed from the config by a reload: its connections close once idle


RETRY_WINDOW = 10.0  # seconds over which the retry budget compares retries with requests
RETRY_BUDGET_MIN = 3  # retries always allowed per window (Envoy's min_retry_concurrency is 3)


class RetryBudget:
    """Retries allowed while they stay within `ratio` of the requests (plus RETRY_BUDGET_MIN) over the
    current and the previous window (Envoy's retry budget, Finagle's RetryBudget); per worker."""

    __slots__ = ("ratio", "start", "requests", "retries", "prev_requests", "prev_retries")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.start = -math.inf
        self.requests = self.retries = self.prev_requests = self.prev_retries = 0

    def _roll(self, now: float) -> None:
        if now - self.start >= RETRY_WINDOW:
            recent = now - self.start < 2 * RETRY_WINDOW
            self.prev_requests = self.requests if recent else 0
            self.prev_retries = self.retries if recent else 0
            self.requests = self.retries = 0
            self.start = now

    def request(self, now: float) -> None:
        self._roll(now)
        self.requests += 1

    def allow(self, now: float) -> bool:
        """May one more retry go out now? (counts it when it may)"""
        self._roll(now)
        if self.ratio <= 0:
            return False
        done = self.retries + self.prev_retries
        if done >= RETRY_BUDGET_MIN and done + 1 > self.ratio * (self.requests + self.prev_requests):
            return False
        self.retries += 1
        return True


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; carries one Exchange at a time."""

    def __init__(
        self, pool: Pool, upstream: Upstream, idle: list[UpstreamConnection], server: Server | None = None
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        self.server = server if server is not None else pool.server_of(upstream)
        self.idle = idle  # the pool's idle list of this upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.fast: Plain | None = None  # a plain fetch reading this connection's bytes itself
        self.closed = False
        self.reused = False
        self.got_bytes = False  # any byte received for the exchange in flight (a retry elsewhere is off)
        self.paused_by_client = False
        self._can_write = True
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        fast = self.fast
        if fast is not None:
            self.fast = None
            fast.lost()
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            if ex.close_delimited and exc is None:
                # RFC 9112 6.3 (8): a body without length ends when the connection closes cleanly
                # (httptools cannot be told of EOF, so its on_message_complete never comes)
                ex.keep_alive = False
                ex.complete(self)
            else:
                ex.connection_lost()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        fast = self.fast
        if fast is not None:
            fast.data(data)
            return
        ex = self.exchange
        if ex is None:
            # bytes on an idle connection: the upstream broke the protocol; never reuse it
            self.close()
            return
        self.got_bytes = True
        ex.last_activity = ex.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.exchange = None
            ex.fail(UpstreamError(f"invalid response from {self.upstream.authority}: {e}"))
            self.close()
            return
        ex.sink.flush()  # one client write per upstream read

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the exchange

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        self._wake_writer()

    def _wake_writer(self) -> None:
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self._drain_waiter = None

    async def drain(self) -> None:
        """Wait until the upstream takes more request body (flow control client -> upstream)."""
        if self.closed:
            raise UpstreamError(f"connection to {self.upstream.authority} closed while sending the request")
        if self._can_write:
            return
        w = self._drain_waiter = asyncio.get_running_loop().create_future()
        await w
        if self.closed:
            raise UpstreamError(f"connection to {self.upstream.authority} closed while sending the request")

    # -- httptools callbacks (response side)
    def on_status(self, reason: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.headers.append((name.lower(), value.strip()))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # interim response (RFC 9110 15.2): relayed by the sink, then the final one follows
            ex.sink.interim(status, ex.reason, ex.headers)
            ex.headers = []
            ex.reason = b""
            return
        # RFC 9112 6.3: without Content-Length, and without chunked as the final transfer coding, the
        # body ends when the connection closes
        clen = te_chunked = False
        for n, v in ex.headers:
            if n == b"content-length":
                clen = True
            elif n == b"transfer-encoding":
                te_chunked = v.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        ex.close_delimited = not clen and not te_chunked and status not in (204, 304)
        ex.got_head(status, self.parser.should_keep_alive())
        if ex.method == b"HEAD":
            # httptools cannot be told the request was HEAD: the exchange ends here and the parser is
            # replaced so the next response on this connection starts clean (RFC 9110 9.3.2)
            self.exchange = None
            self.parser = httptools.HttpResponseParser(self)
            ex.complete(self)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.got_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or not ex.head_seen:
            return
        self.exchange = None
        ex.complete(self)

    # -- used by Exchange/Pool
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """The client does not take the body as fast as we get it: stop reading (not an idle upstream)."""
        self.paused_by_client = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.paused_by_client = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class Exchange:
    """One request/response on an UpstreamConnection, reported to a Sink."""

    def __init__(self, pool: Pool, conn: UpstreamConnection, method: bytes, sink: Sink) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.conn = conn
        self.server = conn.server
        self.counted = False  # counted in server.inflight (until complete/fail)
        self.method = method
        self.sink = sink
        self.reason = b""
        self.headers: Headers = []
        self.head_seen = False
        self.close_delimited = False
        self.finished = False
        self.keep_alive = False
        self.started_at = self.last_activity = self.loop.time()
        self.head_future: asyncio.Future[None] = self.loop.create_future()

    def start(self, head: bytes) -> None:
        self.conn.exchange = self
        self.conn.got_bytes = False
        self.conn.write(head)
        self.pool.active.add(self)

    def check(self, now: float) -> None:
        """The pool's ticker: response-head and idle-body timeouts (504)."""
        cfg = self.pool.cfg
        if not self.head_seen:
            if now - self.started_at < cfg.response_timeout:
                return
            err = UpstreamTimeout(
                f"no response head from {self.conn.upstream.authority} within {cfg.response_timeout:g}s"
            )
        elif self.conn.paused_by_client or now - self.last_activity < cfg.idle_timeout:
            return
        else:
            err = UpstreamTimeout(
                f"upstream {self.conn.upstream.authority} body idle for {cfg.idle_timeout:g}s"
            )
        self.fail(err)
        self.conn.exchange = None
        self.conn.abort()

    def got_head(self, status: int, keep_alive: bool) -> None:
        self.head_seen = True
        self.keep_alive = keep_alive
        self.pool.answered(self.server, self.loop.time() - self.started_at)
        if not self.head_future.done():
            self.head_future.set_result(None)
        self.sink.head(status, self.reason, self.headers, keep_alive)

    def got_body(self, chunk: bytes) -> None:
        self.sink.body(chunk)

    def complete(self, conn: UpstreamConnection) -> None:
        if self.finished:
            return
        self.finished = True
        self.pool.active.discard(self)
        self._uncount()
        self.pool.release(conn, self.keep_alive)
        self.sink.end()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.pool.count(self.server, -1)

    def fail(self, exc: EdgeError) -> None:
        if self.finished:
            return
        self.finished = True
        self.pool.active.discard(self)
        self._uncount()
        if not self.head_seen and (isinstance(exc, UpstreamTimeout) or not self.conn.reused):
            # the server failed us (a reused connection closed before answering is a keep-alive race)
            self.pool.failed(self.server, exc)
        if not self.head_future.done():
            self.head_future.set_exception(exc)
            self.head_future.exception()  # mark retrieved: the sink hears of it too
        self.sink.failed(exc)

    def connection_lost(self) -> None:
        if self.head_seen:
            self.fail(UpstreamIncomplete(f"upstream {self.conn.upstream.authority} closed mid-body"))
        else:
            self.fail(
                UpstreamError(
                    f"upstream {self.conn.upstream.authority} closed the connection before responding"
                )
            )


class Pool:
    """Keep-alive connections to the configured upstreams, the choice among them (lb), this worker's view of
    their health, and the retry budget."""

    def __init__(
        self,
        cfg: Config,
        loop: asyncio.AbstractEventLoop,
        on_request: Callable[[], None] | None = None,
        counters: SlotCounters | None = None,
        previous: Pool | None = None,
    ) -> None:
        if not cfg.upstream:
            raise ValueError("no upstream configured")
        self.cfg = cfg
        self.loop = loop
        # a reload's new pool (Context.configure) takes over the previous one's servers that are still
        # configured (their idle connections, in-flight counts and ejections) and its exchanges in flight
        kept = {s.upstream.authority: s for s in previous.servers} if previous is not None else {}
        self.servers: list[Server] = []
        for i, u in enumerate(cfg.upstream):
            s = kept.pop(u.authority, None)
            if s is None:
                s = Server(i, u)
            else:
                s.index, s.upstream, s.weight = i, u, u.weight
            self.servers.append(s)
        for s in kept.values():  # removed: idle connections close now, busy ones when they are released
            s.retired = True
            for conn in s.idle:
                conn.close()
            s.idle.clear()
        self._by_upstream = {s.upstream: s for s in self.servers}
        self._total_weight = sum(s.weight for s in self.servers)
        self._lb = cfg.lb
        self.budget: RetryBudget = RetryBudget(cfg.retry_budget) if previous is None else previous.budget
        self.budget.ratio = cfg.retry_budget
        # the shared health block (written by the admin process's checks) and this process's per-upstream
        # counters; absent when the counters have no upstream blocks (a context built by a test)
        self._words: memoryview | None = None
        if counters is not None:
            shared = counters.shared
            slot = counters.b // SLOT_WORDS - 1
            blocks = [shared.block_of(s.upstream.authority, s.index) for s in self.servers]
            if all(b is not None for b in blocks):
                self._words = shared.words
                for s, b in zip(self.servers, blocks, strict=True):
                    assert b is not None
                    s.down_word = shared.upstream_word(b, U_DOWN)
                    s.pbase = shared.per_upstream_base(slot, b)
                    s.inflight_words = [
                        shared.per_upstream_base(p, b) + P_INFLIGHT for p in range(shared.slots)
                    ]
        self._on_request = on_request
        # exchanges and plain fetches in flight, checked by the ticker (each against its own pool's timeouts)
        self.active: set[Timed] = set() if previous is None else previous.active
        if previous is not None:
            previous._ticker.cancel()
        self._ticker: asyncio.TimerHandle = loop.call_later(TICK, self._tick)

    def server_of(self, upstream: Upstream) -> Server:
        return self._by_upstream[upstream]

    def _tick(self) -> None:
        if self.active:
            now = self.loop.time()
            for ex in list(self.active):
                ex.check(now)
        self._ticker = self.loop.call_later(TICK, self._tick)

    # -- selection and health
    def usable(self, s: Server, now: float) -> bool:
        """Neither marked down by the active checks nor passively ejected."""
        if self._words is not None and s.down_word >= 0 and self._words[s.down_word]:
            return False
        if s.ejected_until:
            if now < s.ejected_until:
                return False
            s.ejected_until = 0.0
            log.info(
                "upstream %s back in rotation: ejection of %gs over",
                s.upstream.authority,
                self.cfg.fail_timeout,
            )
        return True

    def none_usable(self) -> bool:
        """Every server is marked down or ejected: a request that may be answered stale is answered so at once
        rather than sent to a server known dead ("no live upstreams", as nginx answers from
        proxy_cache_use_stale)."""
        now = self.loop.time()
        return not any(self.usable(s, now) for s in self.servers)

    def choose(
        self, key: bytes = b"", exclude: list[Server] | None = None, commit: bool = True
    ) -> Server | None:
        """The server for a request (once per request; a retry passes the servers that failed it in
        `exclude`): among the usable servers, or among all when none is usable (never eject the last);
        None when `exclude` leaves nothing. `commit` False only looks (plainmiss.start: an idle connection
        of the server may not be at hand; take_idle then commits)."""
        now = self.loop.time()
        cands = [s for s in self.servers if (not exclude or s not in exclude) and self.usable(s, now)]
        if not cands:
            cands = [s for s in self.servers if not exclude or s not in exclude]
            if not cands:
                return None
        if len(cands) == 1:
            best = cands[0]  # (the round-robin's weights stay as they are)
        elif self._lb == "least_request":
            # power of two choices (Envoy's default): the fewer requests in flight per unit of weight
            a, b = random.sample(cands, 2)
            best = a if a.inflight * b.weight <= b.inflight * a.weight else b
        elif self._lb == "consistent_hash":
            best = max(cands, key=lambda s: _rendezvous(key, s))
        else:
            # smooth weighted round-robin: the highest current + weight (commit adds and subtracts)
            best = max(cands, key=lambda s: s.current + s.weight)
            if commit and not exclude:
                self._commit_rr(best, cands)
                self.budget.request(now)
                return best
        if commit and not exclude:
            self.budget.request(now)
        return best

    def _commit_rr(self, best: Server, cands: list[Server]) -> None:
        total = 0
        for s in cands:
            s.current += s.weight
            total += s.weight
        best.current -= total

    def commit(self, s: Server, key: bytes = b"") -> None:
        """Commit a choice made with commit=False (the round-robin moves on, the budget counts a request)."""
        if self._lb == "round_robin":
            now = self.loop.time()
            cands = [x for x in self.servers if self.usable(x, now)] or self.servers
            if s in cands and len(cands) > 1:
                self._commit_rr(s, cands)
        self.budget.request(self.loop.time())

    def count(self, s: Server, delta: int) -> None:
        """A request to s starts (+1) or ends (-1): this worker's count, published in its shared block."""
        s.inflight += delta
        if self._words is not None and s.pbase >= 0:
            self._words[s.pbase + P_INFLIGHT] = s.inflight

    def full(self, s: Server) -> bool:
        """max_upstream_requests in flight to s, all workers together (the shared blocks; this worker's own
        count when there are none)."""
        limit = self.cfg.max_upstream_requests
        if self._words is None or s.inflight >= limit or not s.inflight_words:
            return s.inflight >= limit
        w = self._words
        return sum(w[i] for i in s.inflight_words) >= limit

    def failed(self, s: Server, exc: EdgeError) -> None:
        """A connect error, reset or head timeout of s: passive ejection after max_fails within fail_timeout
        (nginx's max_fails/fail_timeout), for fail_timeout."""
        self._inc(s, P_FAILURES)
        cfg = self.cfg
        if not cfg.max_fails:
            return
        now = self.loop.time()
        fails = s.fails = [t for t in s.fails if now - t < cfg.fail_timeout]
        fails.append(now)
        if len(fails) >= cfg.max_fails and not s.ejected_until:
            s.ejected_until = now + cfg.fail_timeout
            s.fails = []
            self._inc(s, P_EJECTIONS)
            log.warning(
                "upstream %s ejected for %gs: %d failure(s) within %gs, last: %s",
                s.upstream.authority,
                cfg.fail_timeout,
                len(fails),
                cfg.fail_timeout,
                exc,
            )

    def answered(self, s: Server, seconds: float) -> None:
        """A response head from s, `seconds` after the request went out."""
        s.fails.clear()
        if self._words is not None and s.pbase >= 0:
            w = self._words
            b = s.pbase
            w[b + P_DUR_SUM_NS] += int(seconds * 1e9)
            w[b + P_DUR_BUCKETS + bisect.bisect_left(UPSTREAM_BUCKETS, seconds)] += 1

    def retried(self, s: Server) -> None:
        """A request that failed on s goes to another server."""
        self._inc(s, P_RETRIES)

    def _inc(self, s: Server, field: int) -> None:
        if self._words is not None and s.pbase >= 0:
            self._words[s.pbase + field] += 1

    # -- connections
    async def _connect(self, upstream: Upstream, idle: list[UpstreamConnection]) -> UpstreamConnection:
        server = self._by_upstream[upstream]
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self, upstream, idle, server), upstream.host, upstream.port
                ),
                self.cfg.connect_timeout,
            )
        except TimeoutError:
            err: UpstreamError = UpstreamTimeout(
                f"connect to {upstream.authority} timed out after {self.cfg.connect_timeout:g}s"
            )
            self.failed(server, err)
            raise err
        except OSError as e:
            err = UpstreamError(f"cannot connect to {upstream.authority}: {e.strerror or e}")
            self.failed(server, err)
            raise err
        return conn

    async def acquire(self, fresh: bool = False, server: Server | None = None) -> UpstreamConnection:
        """A connection to `server` (default: the next choice), idle or new."""
        s = server if server is not None else self.choose()
        assert s is not None
        idle = s.idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return await self._connect(s.upstream, idle)

    def has_idle(self, s: Server) -> bool:
        idle = s.idle
        while idle and idle[-1].closed:
            idle.pop()
        return bool(idle)

    def take_idle(self, server: Server | None = None, key: bytes = b"") -> UpstreamConnection | None:
        """An idle keep-alive connection to `server` (default: the next choice), or None (this never
        connects); the choice is committed only when a connection is returned."""
        s = server if server is not None else self.choose(key, commit=False)
        if s is None or not self.has_idle(s):
            return None
        self.commit(s, key)
        return s.idle.pop()

    def send_plain(self, conn: UpstreamConnection, fetch: Plain, head: bytes) -> None:
        """Start a plain fetch on an idle connection taken with take_idle: the request head goes out now and
        the connection's bytes go to fetch.data until it gives the connection back (release) or to an
        Exchange (adopt). It counts in the server's inflight until plain_done, or the adopting Exchange's
        end."""
        if self._on_request is not None:
            self._on_request()
        conn.fast = fetch
        self.count(conn.server, 1)
        self.active.add(fetch)
        conn.write(head)

    def plain_done(self, conn: UpstreamConnection) -> None:
        """A plain fetch on conn ended without an Exchange adopting it."""
        self.count(conn.server, -1)

    def adopt(self, conn: UpstreamConnection, method: bytes, sink: Sink, started_at: float) -> Exchange:
        """Hand a plain fetch's connection (its request already sent) to a general Exchange."""
        ex = Exchange(self, conn, method, sink)
        ex.started_at = started_at
        ex.counted = True  # the plain fetch's count passes to the exchange
        conn.exchange = ex
        self.active.add(ex)
        return ex

    def release(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        idle = conn.idle
        if (
            keep_alive
            and not conn.closed
            and not conn.server.retired
            and len(idle) < self.cfg.upstream_pool_size
        ):
            conn.reused = True
            if conn.paused_by_client:
                conn.resume_reading()  # paused for the last client's sake: the next exchange reads it
            idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        idle = conn.idle
        if idle and conn in idle:
            idle.remove(conn)

    def open(self, conn: UpstreamConnection, method: bytes, head: bytes, sink: Sink) -> Exchange:
        """Start an exchange on an acquired connection: the request head goes out now."""
        if self._on_request is not None:
            self._on_request()
        ex = Exchange(self, conn, method, sink)
        ex.counted = True
        self.count(conn.server, 1)
        ex.start(head)
        return ex

    def close(self) -> None:
        self._ticker.cancel()
        for s in self.servers:
            for conn in s.idle:
                conn.close()
            s.idle.clear()


def _rendezvous(key: bytes, s: Server) -> float:
    """Weighted rendezvous (highest random weight) score of server s for key: when a server leaves, only
    the keys it had move, each to its next-highest server."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=s.hkey).digest(), "big")
    return -s.weight / math.log((h + 1) / 18446744073709551617.0)
