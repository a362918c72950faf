"""The client-facing HTTP/1.1 protocol: the only code that touches client transports.

Owns: parsing requests (httptools), keep-alive and pipelining (responses strictly in request order),
request bodies (Content-Length or chunked, streamed upstream with flow control), the cache path of GET/HEAD
(lookup, freshness, coalesced misses, store), pass-through of every other method, and turning every
EdgeError into a response (the one place that does).
Invariants:
- one request is handled at a time per connection; later pipelined requests wait in `queue`;
- a fresh plain hit is answered synchronously inside data_received (no task, no await), and a plain miss
  is fetched by callbacks (PlainMiss) unless it turns out to need the general path;
- a response whose body cannot be completed closes the connection: the client never sees a short body
  framed as complete, and such a body is never stored;
- request smuggling is refused: Content-Length with Transfer-Encoding, differing Content-Lengths, or a
  Transfer-Encoding that is not chunked get 400 and the connection closes.
Never: decide cacheability or freshness itself (policy), build keys itself (keys), or block the loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Awaitable
from typing import Any

import httptools

from . import entry, keys, policy
from ._hitpath import HitPath
from .cache import MAX_TAGS, Cache
from .config import Config, fastpath_disabled
from .errors import (
    BadRequest,
    EdgeError,
    HeaderTooLarge,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
)
from .fetch import Exchange, Flights, Pool, UpstreamConnection, set_nodelay
from .metrics import (
    DURATION_BUCKETS,
    F_BAD_REQUESTS,
    F_CONNECTIONS,
    F_DUR_BUCKETS,
    F_DUR_SUM_NS,
    F_SERVED,
    F_UPSTREAM,
    F_UPSTREAM_ERRORS,
    F_WAITING,
    Outcome,
    SlotCounters,
)

Headers = list[tuple[bytes, bytes]]
log = logging.getLogger("edgecore.protocol")

# RFC 9110 7.6.1: hop-by-hop fields, never forwarded either way (plus those listed in Connection)
HOP_BY_HOP = keys.HOP_BY_HOP | {b"proxy-authenticate", b"proxy-authorization"}
# request fields that send a GET/HEAD off the fast hit path
_SLOW_REQUEST_FIELDS = frozenset(
    (
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"authorization",
    )
)
# fields not forwarded upstream when edgecore fetches a GET/HEAD for its cache: the cache answers
# the client's conditionals and ranges itself from the full response
_CACHE_FETCH_DROP = frozenset(
    (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range")
) | (keys.UNKEYED_REQUEST_FIELDS - {b"x-forwarded-for"})  # unkeyed routing fields: cache poisoning
_CACHEABLE_METHODS = frozenset((b"GET", b"HEAD"))
_UNSAFE_KEEP = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
BODY_HIGH_WATER = 256 << 10  # buffered request body bytes before the client is paused
PIPELINE_MAX = 64  # queued pipelined requests before the client is paused


class Context:
    """Everything a worker's connections share."""

    def __init__(
        self,
        cfg: Config,
        cache: Cache,
        counters: SlotCounters,
        loop: asyncio.AbstractEventLoop,
        pool: Pool | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.counters = counters
        self.loop = loop
        self.pool = pool or Pool(cfg, loop, on_request=functools.partial(counters.inc, F_UPSTREAM))
        # the cross-worker miss lock lives in the shared cache; one worker has nobody to share it with
        self.flights = Flights(
            loop, cfg.hit_for_miss_ttl, cache if cfg.workers != 1 else None, lock_ttl=cfg.response_timeout
        )
        self.key_opts = keys.options_for(cfg)
        self.policy_opts = policy.Options(targeted_fields=tuple(n.encode() for n in cfg.cdn_cache_control))
        self.connections: set[ClientProtocol] = set()
        self._draining = False
        self.hitpath = make_hitpath(cfg, cache, counters, self.key_opts)
        self.via = b"1.1 edgecore"
        self.refreshing: set[bytes] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self.hitpath.draining = value

    def start(self) -> None:
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Close clients idle or stalled past client_timeout (slow-loris, dead peers)."""
        now = self.loop.time()
        limit = self.cfg.client_timeout
        for c in list(self.connections):
            c.check_idle(now, limit)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.close()


def make_hitpath(cfg: Config, cache: Cache, counters: SlotCounters, key_opts: keys.KeyOptions) -> HitPath:
    """The C fast path for fresh plain hits, set up to build keys exactly as keys.primary_key does."""
    probe = keys.primary_key(b"GET", b"h", b"/", key_opts)
    prefix = probe[: -len(b"1:h/")]
    default_opts = not key_opts.sort_query and not key_opts.drop_params and key_opts.default_ports == (b"80",)
    return HitPath(
        cache,
        counters.words,
        counters.b + Outcome.HIT,
        counters.b + F_SERVED,
        counters.b + F_DUR_SUM_NS,
        counters.b + F_DUR_BUCKETS,
        DURATION_BUCKETS,
        cfg.max_header_size,
        entry.M,
        entry.FLAG_PLAIN,
        prefix,
        enabled=default_opts and probe.endswith(b"1:h/") and not fastpath_disabled(),
        fetch_drop=tuple(sorted(HOP_BY_HOP | _CACHE_FETCH_DROP | {b"content-length", b"expect"})),
    )


class Request:
    __slots__ = (
        "method",
        "target",
        "headers",
        "host",
        "version",
        "keep_alive",
        "slow",
        "clen",
        "chunked",
        "expect_continue",
        "body",
        "body_done",
        "body_bytes",
        "body_waiter",
        "error",
        "t0",
        "conn_tokens",
        "head_bytes",
        "buffered",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: Headers = []
        self.host = b""
        self.version = b"1.1"
        self.keep_alive = True
        self.slow = False
        self.clen: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.body: collections.deque[bytes] | None = None
        self.body_done = True
        self.body_bytes = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.error: EdgeError | None = None
        self.t0 = 0.0
        self.conn_tokens: list[bytes] = []
        self.head_bytes = 0
        self.buffered = 0  # body bytes received and not yet sent upstream

    def has_body(self) -> bool:
        return self.chunked or bool(self.clen)


class ClientProtocol(asyncio.Protocol):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.req: Request | None = None  # being parsed
        self.active: Request | None = None  # being answered (async)
        self.queue: collections.deque[Request] = collections.deque()
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.upstream: UpstreamConnection | None = None  # streaming to us right now
        self.last_progress = ctx.loop.time()
        self.peer = b"unknown"

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.ctx.connections.add(self)
        self.ctx.counters.inc(F_CONNECTIONS)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ctx.connections.discard(self)
        up = self.upstream
        if up is not None:
            up.resume_reading()
        for r in (self.active, self.req):
            if r is not None and r.body_waiter is not None and not r.body_waiter.done():
                r.body_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_progress = self.ctx.loop.time()
        if self.req is None and self.active is None and not self.queue and not self.closing:
            # between messages with nothing in flight: fresh plain hits are answered in C
            hp = self.ctx.hitpath
            consumed, close = hp.serve(data, self.transport)
            if close:
                self._finish_connection()
                return
            if hp.miss_key is not None and self._plain_miss(hp, data):
                consumed = hp.miss_end
            if consumed:
                if consumed == len(data):
                    return
                data = data[consumed:]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade is hop-by-hop and not supported: answer the request, then close
            for r in (self.req, self.active, *self.queue):
                if r is not None:
                    r.keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as e:
            err = (
                e.__context__
                if isinstance(e.__context__, EdgeError)
                else BadRequest(f"malformed request: {e}")
            )
            self._parse_failed(err)

    def eof_received(self) -> bool | None:
        # half-close from the client: finish what is queued, then close
        if self.active is None and not self.queue:
            return None
        for r in self.queue:
            r.keep_alive = False
        if self.active is not None:
            self.active.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.upstream
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_progress = self.ctx.loop.time()
        up = self.upstream
        if up is not None:
            up.resume_reading()

    def check_idle(self, now: float, limit: float) -> None:
        """Called about once a second: a client that sends nothing (between requests or inside a head or
        body) or reads nothing for `limit` seconds is closed."""
        if self.closing or now - self.last_progress < limit:
            return
        waiting_for_upstream = self.active is not None and not self.write_paused and self.active.body_done
        if not waiting_for_upstream:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _stop_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self.req = Request()

    def on_url(self, url: bytes) -> None:
        r = self.req
        assert r is not None
        r.target += url
        r.head_bytes += len(url)
        if r.head_bytes > self.ctx.cfg.max_header_size:
            raise HeaderTooLarge("request target and header section exceed max_header_size")

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.req
        assert r is not None
        r.head_bytes += len(name) + len(value) + 4
        if r.head_bytes > self.ctx.cfg.max_header_size:
            raise HeaderTooLarge("request header section exceeds max_header_size")
        name = name.lower()
        value = value.strip()
        r.headers.append((name, value))
        if name == b"host":
            if r.host:
                raise BadRequest("more than one Host field")  # RFC 9112 3.2
            r.host = value.lower()
        elif name in _SLOW_REQUEST_FIELDS:
            r.slow = True
        elif name == b"content-length":
            if not value.isdigit():
                raise BadRequest("invalid Content-Length")
            n = int(value)
            if r.clen is not None and r.clen != n:
                raise BadRequest("differing Content-Length values")  # RFC 9112 6.3 (smuggling)
            r.clen = n
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if r.chunked or codings[-1] != b"chunked" or len(codings) != 1:
                raise BadRequest("unsupported Transfer-Encoding")  # RFC 9112 6.1
            r.chunked = True
        elif name == b"expect":
            if value.lower() == b"100-continue":
                r.expect_continue = True
        elif name == b"connection":
            r.conn_tokens.extend(t.strip().lower() for t in value.split(b","))

    def on_headers_complete(self) -> None:
        r = self.req
        assert r is not None
        p = self.parser
        r.method = p.get_method()
        r.version = p.get_http_version().encode()
        r.keep_alive = p.should_keep_alive() and not self.ctx.draining
        r.t0 = time.time()
        if r.chunked and r.clen is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")  # RFC 9112 6.3 (smuggling)
        if r.version == b"1.1" and not r.host:
            raise BadRequest("HTTP/1.1 request without Host")  # RFC 9112 3.2
        if r.clen is not None and r.clen > self.ctx.cfg.max_body_size:
            e = BadRequest("request body exceeds max_body_size")
            e.status, e.reason = 413, "Content Too Large"
            raise e
        if r.has_body():
            r.body = collections.deque()
            r.body_done = False
        self._dispatch(r)

    def on_body(self, body: bytes) -> None:
        r = self.req
        if r is None or r.body is None:
            return
        r.body.append(body)
        r.body_bytes += len(body)
        r.buffered += len(body)
        if r.body_bytes > self.ctx.cfg.max_body_size:
            e = BadRequest("request body exceeds max_body_size")
            e.status, e.reason = 413, "Content Too Large"
            raise e
        w = r.body_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if r.buffered > BODY_HIGH_WATER:
            self._stop_reading()

    def on_message_complete(self) -> None:
        r = self.req
        self.req = None
        if r is None:
            return
        r.body_done = True
        w = r.body_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, r: Request) -> None:
        if self.active is None and not self.queue:
            self._start(r)
        else:
            self.queue.append(r)
            if len(self.queue) >= PIPELINE_MAX:
                self._stop_reading()

    def _start(self, r: Request) -> None:
        self.active = r
        self.ctx.loop.create_task(self._run(r))

    def _after(self, r: Request) -> Request | None:
        """r is answered: close the connection, or make the next pipelined request (in order) the active
        one. -> that request, or None when there is none to answer now."""
        if self.closing or not r.keep_alive or self.ctx.draining:
            self._finish_connection()
            self.active = None
            return None
        if not self.queue:
            self.active = None
            return None
        nxt = self.active = self.queue.popleft()
        if len(self.queue) < PIPELINE_MAX // 2:
            self._resume_reading()
        return nxt

    def _next(self, r: Request) -> None:
        """r was answered outside _run (a plain miss): go on with the next request."""
        nxt = self._after(r)
        if nxt is not None:
            self._start(nxt)

    def _plain_miss(self, hp: HitPath, data: bytes) -> bool:
        """The C path stopped at a plain GET/HEAD with nothing stored for its key: fetch it as a PlainMiss
        when nobody else fetches that key, it is not known uncacheable, and an idle upstream connection is
        at hand. False: the general path (httptools, a task) takes the request."""
        ctx = self.ctx
        key = hp.miss_key
        fl = ctx.flights
        if ctx.draining or fl.uncacheable(key):  # (a key being fetched already: try_lead says no)
            return False
        conn = ctx.pool.take_idle()
        if conn is None:
            return False
        start, end = hp.miss_start, hp.miss_end
        head = hp.upstream_head(data, start, end, self.peer, ctx.via)
        flight = fl.try_lead(key) if head is not None else None
        if flight is None or head is None:
            ctx.pool.release(conn, True)
            return False
        r = Request()
        r.method = b"HEAD" if hp.miss_head_only else b"GET"
        r.version = b"1.0" if hp.miss_http10 else b"1.1"
        r.keep_alive = hp.miss_keep != 0
        r.t0 = time.time()
        self.active = r
        fetch = PlainMiss(self, conn, key, flight, r, data[start:end], hp.miss_keep)
        ctx.pool.send_plain(conn, fetch, head)
        return True

    async def _run(self, r: Request, first: Awaitable[None] | None = None) -> None:
        while True:
            try:
                if first is not None:
                    aw, first = first, None
                    await aw  # the rest of a request started elsewhere (a plain miss handed over)
                else:
                    await self._handle(r)
            except EdgeError as e:
                self._error_response(r, e)
            except Exception as e:  # a worker never dies of one request
                log.exception("internal error answering %s %s", r.method, r.target[:200])
                self._error_response(r, EdgeError(f"internal error: {type(e).__name__}"))
            nxt = self._after(r)
            if nxt is None:
                return
            r = nxt

    def _finish_connection(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _parse_failed(self, err: EdgeError) -> None:
        self.ctx.counters.inc(F_BAD_REQUESTS)
        self._stop_reading()
        r = self.req or Request()
        self.req = None
        r.error = err
        r.keep_alive = False
        if self.active is None and not self.queue:
            self._error_response(r, err)
            self._finish_connection()
        else:
            self.queue.append(r)

    # ------------------------------------------------------------------ responses
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def _conn_header(self, r: Request) -> bytes:
        if not r.keep_alive:
            return b"connection: close\r\n"
        if r.version == b"1.0":
            return b"connection: keep-alive\r\n"
        return b""

    def _error_response(self, r: Request, e: EdgeError, cache_status: bytes | None = None) -> None:
        self.ctx.counters.request(Outcome.ERROR, time.time() - r.t0 if r.t0 else 0.0)
        if isinstance(e, UpstreamError):
            self.ctx.counters.inc(F_UPSTREAM_ERRORS)
        if self.closing:
            return
        status = e.status
        if status >= 500:
            # the details (upstream addresses, internals) go to the log, not to the client
            log.info("%d for %s %s: %s", status, r.method, r.target[:200], e)
            body = f"{status} {e.reason}\n".encode()
        else:
            body = f"{status} {e.reason}: {e}\n".encode()
        if status < 500 or status == 505:
            r.keep_alive = False
        cs = cache_status or policy.cache_status(
            hit=False, fwd="bypass" if status < 500 else "miss", detail=type(e).__name__.lower()
        )
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"cache-status: %s\r\n%s\r\n" % (status, e.reason.encode(), len(body), cs, self._conn_header(r))
        )
        self._write(head if r.method == b"HEAD" else head + body)
        if not r.keep_alive:
            self._finish_connection()

    # ------------------------------------------------------------------ the full path
    async def _handle(self, r: Request) -> None:
        if r.error is not None:
            self._error_response(r, r.error)
            return
        if r.expect_continue and r.version == b"1.1" and not r.body_done:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")  # RFC 9110 10.1.1
        if r.method in _CACHEABLE_METHODS and not r.has_body():
            await self._cache_path(r)
        else:
            await self._pass(
                r, Outcome.BYPASS, fwd=b"method" if r.method not in _CACHEABLE_METHODS else b"bypass"
            )

    async def _cache_path(self, r: Request) -> None:
        ctx = self.ctx
        now = time.time()
        rc = policy.parse_request(r.headers)
        key, found, fwd = self._lookup(r, now)
        if rc.no_store:
            await self._pass(r, Outcome.BYPASS, fwd=b"request", detail=b"request-no-store")
            return
        if found is not None:
            value = found[0]
            m = entry.meta(value)
            f = entry.freshness(m)
            use, _ = policy.decide_use(f, rc, now)
            if use is policy.Use.FRESH or use is policy.Use.STALE:
                ttl = int(m.fresh_until - now) if m.fresh_until > now else -int(now - m.fresh_until) - 1
                self._serve_stored(
                    r,
                    value,
                    m,
                    now,
                    Outcome.HIT if use is policy.Use.FRESH else Outcome.STALE,
                    b"edgecore; hit; ttl=%d" % ttl,
                )
                return
            if use is policy.Use.STALE_REVALIDATE:
                self._serve_stored(
                    r, value, m, now, Outcome.STALE, b"edgecore; fwd=stale; detail=stale-while-revalidate"
                )
                self._background_refresh(r, key, value, m)
                return
            if use is policy.Use.VALIDATE and not rc.only_if_cached:
                if r.method == b"HEAD":
                    await self._head_refresh(r, key, value, m)
                else:
                    await self._revalidate(r, key, value, m, rc)
                return
        if rc.only_if_cached:
            e = UpstreamError("only-if-cached and nothing stored fits")  # RFC 9111 5.2.1.7
            e.status, e.reason = 504, "Gateway Timeout"
            self._error_response(r, e, b"edgecore; fwd=miss; detail=only-if-cached")
            return
        if ctx.flights.uncacheable(key):
            await self._pass(r, Outcome.UNCACHEABLE, fwd=fwd, detail=b"hit-for-miss")
            return
        await self._miss(r, key, fwd)

    def _lookup(self, r: Request, now: float) -> tuple[bytes, Any, bytes]:
        """-> (the request's cache key, what the cache holds there or None, the fwd reason of a miss)."""
        ctx = self.ctx
        key = keys.primary_key(r.method, r.host, r.target, ctx.key_opts)
        found = ctx.cache.lookup(key, now)
        if found is not None and found[3] == entry.FLAG_VARY:
            gen, names = entry.decode_vary(found[0])
            key = keys.secondary_key(key + b"#" + gen, names, r.headers)  # RFC 9111 4.1
            return key, ctx.cache.lookup(key, now), b"vary-miss"
        return key, found, b"uri-miss"

    def _serve_collapsed(self, r: Request) -> bool:
        """After waiting on another request's fetch: serve what it stored, if it stored something fresh
        for this request (its own variant: the lookup is this request's)."""
        now = time.time()
        _, found, _ = self._lookup(r, now)
        if found is None or found[3] & entry.FLAG_VARY:
            return False
        value = found[0]
        m = entry.meta(value)
        if now >= m.fresh_until or m.eflags & entry.E_NO_CACHE:
            return False
        ttl = max(0, int(m.fresh_until - now))
        self._serve_stored(
            r, value, m, now, Outcome.COLLAPSED, b"edgecore; fwd=miss; collapsed; ttl=%d" % ttl
        )
        return True

    def _serve_stored(
        self, r: Request, value: bytes, m: entry.Meta, now: float, outcome: Outcome, cache_status: bytes
    ) -> None:
        """A stored response to the client, with conditional (RFC 9110 13) and range (RFC 9110 14)
        handling when the request asks for them. Counted before it is written: whoever has the response
        can already see it in the metrics."""
        self.ctx.counters.request(outcome, time.time() - r.t0)
        age = max(0, int(now - m.birth))
        conn = self._conn_header(r)
        mo = entry.M
        head_end = mo + m.head_len
        status_line = value[mo : mo + m.statusline_len]
        rest_head = value[mo + m.statusline_len : head_end]
        dyn = b"age: %d\r\ncache-status: %s\r\n%s" % (age, cache_status, conn)
        if r.slow and m.status == 200 and r.method in _CACHEABLE_METHODS:
            stored = entry.headers(value, m)
            if policy.client_not_modified(r.headers, stored):
                self._write(self._head_304(stored, dyn))
                self._close_unless_keep_alive(r)
                return
            rng = _header(r.headers, b"range")
            ir = _header(r.headers, b"if-range")
            if rng is not None and r.method == b"GET" and (ir is None or policy.if_range_matches(ir, stored)):
                total = len(value) - head_end
                span = policy.parse_range(rng, total)
                if span is None:
                    if policy.range_not_satisfiable(rng, total):  # else: the full 200 (RFC 9110 14.2)
                        self._write(
                            b"HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */%d\r\n"
                            b"content-length: 0\r\n%s\r\n" % (total, dyn)
                        )
                        self._close_unless_keep_alive(r)
                        return
                else:
                    first, last = span
                    fields = b"".join(n + b": " + v + b"\r\n" for n, v in stored)
                    self._write(
                        b"".join(
                            (
                                b"HTTP/1.1 206 Partial Content\r\n",
                                fields,
                                b"content-range: bytes %d-%d/%d\r\ncontent-length: %d\r\n"
                                % (first, last, total, last - first + 1),
                                dyn,
                                b"\r\n",
                                value[head_end + first : head_end + last + 1],
                            )
                        )
                    )
                    self._close_unless_keep_alive(r)
                    return
        if r.method == b"HEAD":
            self._write(b"".join((status_line, dyn, rest_head)))
        elif len(value) > _BIG:  # no second copy of a large body: views of the private lookup copy
            if self.transport is not None and not self.closing:
                self.transport.writelines((status_line, dyn, memoryview(value)[mo + m.statusline_len :]))
        else:
            self._write(b"".join((status_line, dyn, value[mo + m.statusline_len :])))
        self._close_unless_keep_alive(r)

    @staticmethod
    def _head_304(stored: Headers, dyn: bytes) -> bytes:
        fields = b"".join(n + b": " + v + b"\r\n" for n, v in policy.not_modified_headers(stored))
        return b"HTTP/1.1 304 Not Modified\r\n" + fields + dyn + b"\r\n"

    def _close_unless_keep_alive(self, r: Request) -> None:
        if not r.keep_alive:
            self._finish_connection()

    # ------------------------------------------------------------------ upstream
    def _upstream_head(
        self,
        r: Request,
        method: bytes | None = None,
        drop: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
    ) -> bytes:
        """The request head sent upstream: hop-by-hop and Connection-listed fields removed (RFC 9110
        7.6.1), Via and X-Forwarded-For/-Proto added, the body re-framed."""
        conn_listed = set(r.conn_tokens)
        parts = [b"%s %s HTTP/1.1\r\n" % (method or r.method, r.target)]
        xff = None
        via = proto = False
        for name, value in r.headers:
            if (
                name in HOP_BY_HOP
                or name in conn_listed
                or name in drop
                or name == b"content-length"
                or name == b"expect"
            ):
                continue
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            if name == b"via":
                via = True
                parts.append(b"via: " + value + b", " + self.ctx.via + b"\r\n")
                continue
            if name == b"x-forwarded-proto":
                proto = True  # set by a TLS-terminating balancer in front: kept on pass-through
            parts.append(name + b": " + value + b"\r\n")
        if not via:
            parts.append(b"via: " + self.ctx.via + b"\r\n")
        parts.append(b"x-forwarded-for: " + (xff + b", " + self.peer if xff else self.peer) + b"\r\n")
        if not proto:
            parts.append(b"x-forwarded-proto: http\r\n")
        if extra:
            parts.extend(n + b": " + v + b"\r\n" for n, v in extra)
        if method is None or method == r.method:
            if r.chunked:
                parts.append(b"transfer-encoding: chunked\r\n")
            elif r.clen is not None:
                parts.append(b"content-length: %d\r\n" % r.clen)
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _send_body(self, r: Request, conn: UpstreamConnection) -> None:
        """Stream the request body upstream (re-chunked when it came chunked), with flow control."""
        if r.body is None:
            return
        while True:
            while r.body:
                chunk = r.body.popleft()
                r.buffered -= len(chunk)
                if r.chunked:
                    conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                else:
                    conn.write(chunk)
                await conn.drain()
            self._resume_reading()
            if r.body_done:
                break
            if self.closing:
                raise UpstreamIncomplete("client went away while sending the request body")
            r.body_waiter = self.ctx.loop.create_future()
            await r.body_waiter
            r.body_waiter = None
        if r.chunked:
            conn.write(b"0\r\n\r\n")

    async def _exchange(
        self,
        r: Request,
        sink: Any,
        method: bytes | None = None,
        drop: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
    ) -> Exchange:
        """Open an upstream exchange (retrying once on a fresh connection when a reused one turns out
        closed before answering a bodiless request) and wait for its response head."""
        pool = self.ctx.pool
        head = self._upstream_head(r, method, drop, extra)
        for attempt in (0, 1):
            conn = await pool.acquire(fresh=attempt == 1)
            reused = conn.reused
            ex = pool.open(conn, method or r.method, head, sink)
            sink.exchange = ex
            if r.body is not None:
                await self._send_body(r, conn)
            try:
                await ex.head_future
                return ex
            except UpstreamError:
                if attempt == 0 and reused and r.body is None and not ex.head_seen and not sink.started:
                    sink.reset()
                    continue
                raise
        raise AssertionError("unreachable")

    async def _pass(self, r: Request, outcome: Outcome, fwd: bytes, detail: bytes | None = None) -> None:
        """Forward upstream and stream the response back; nothing is stored. Unsafe methods invalidate
        (RFC 9111 4.4)."""
        sink: StreamSink
        if r.method == b"POST":
            # RFC 9110 9.3.3: a POST response naming its own target in Content-Location, with explicit
            # freshness, may answer later GETs; StoreSink invalidates first, then stores it
            key = keys.primary_key(b"GET", r.host, r.target, self.ctx.key_opts)
            sink = StoreSink(self.ctx, self, r, key, fwd=fwd, flight=None)
            sink.outcome = outcome
        else:
            sink = StreamSink(self.ctx, self, r, outcome, fwd=fwd, detail=detail)
        await self._exchange(r, sink)
        await sink.finished()
        if r.method not in _UNSAFE_KEEP and r.method != b"POST" and sink.status is not None:
            self._invalidate(r, sink.status, sink.headers)

    def _invalidate(self, r: Request, status: int, headers: Headers) -> None:
        if status >= 400:
            return
        for target in policy.invalidation_targets(r.method, status, r.host, r.target, headers):
            self.ctx.cache.delete(keys.primary_key(b"GET", r.host, target, self.ctx.key_opts))

    async def _miss(self, r: Request, key: bytes, fwd: bytes) -> None:
        """A cache miss: coalesced per key. The leader fetches; waiters get its stored response, or go
        upstream on their own the moment it turns out not storable."""
        ctx = self.ctx
        flight, leader = ctx.flights.join(key)
        if not leader:
            ctx.counters.inc(F_WAITING)
            try:
                assert flight.done is not None
                result = await asyncio.wait_for(asyncio.shield(flight.done), ctx.cfg.response_timeout)
            except TimeoutError:
                ctx.counters.inc(F_WAITING, -1)
                e = UpstreamError("timed out waiting for a coalesced upstream response")
                e.status, e.reason = 504, "Gateway Timeout"
                self._error_response(r, e)
                return
            ctx.counters.inc(F_WAITING, -1)
            if result is not None and self._serve_collapsed(r):
                return
            await self._pass(r, Outcome.UNCACHEABLE, fwd=fwd, detail=b"collapsed-uncacheable")
            return
        if not ctx.flights.lock(flight, key):
            # another worker process is fetching this key: wait for it (nginx's proxy_cache_lock), then
            # serve what it stored; if it stored nothing usable, fetch (and take the lock if still free)
            ctx.counters.inc(F_WAITING)
            try:
                await ctx.flights.wait_unlocked(key, ctx.cfg.response_timeout)
            finally:
                ctx.counters.inc(F_WAITING, -1)
            if self._serve_collapsed(r):
                ctx.flights.finish(key, flight, True)
                return
            ctx.flights.lock(flight, key)
        await self._fetch(r, key, fwd, flight)

    async def _fetch(self, r: Request, key: bytes, fwd: bytes, flight: Any) -> None:
        """The leader's fetch of a miss: stored (and served) through a StoreSink; the flight is finished
        with what was stored, or None when nothing was."""
        sink = StoreSink(self.ctx, self, r, key, fwd=fwd, flight=flight)
        try:
            await self._exchange(r, sink, method=b"GET", drop=_CACHE_FETCH_DROP)
        except BaseException:
            self.ctx.flights.finish(key, flight, None)
            raise
        await _finish_miss(self.ctx, key, flight, sink)

    async def _revalidate(
        self,
        r: Request,
        key: bytes,
        value: bytes,
        m: entry.Meta,
        rc: policy.RequestControl,
    ) -> None:
        """A stored response that may not be used as is: validate it upstream (RFC 9111 4.3.1)."""
        stored = entry.headers(value, m)
        validators = policy.validators_for(stored)
        sink = StoreSink(self.ctx, self, r, key, fwd=b"stale", flight=None, stored=(value, m, stored), rc=rc)
        try:
            await self._exchange(r, sink, method=b"GET", drop=_CACHE_FETCH_DROP, extra=validators)
            await sink.finished()
            if sink.mismatch:
                await self._miss(r, key, b"stale")
            elif sink.stale_on_error:
                self._serve_stored(
                    r,
                    value,
                    m,
                    time.time(),
                    Outcome.STALE,
                    b"edgecore; fwd=stale; fwd-status=%d; detail=stale-if-error" % (sink.status or 0),
                )
        except UpstreamError as e:
            f = entry.freshness(m)
            if not sink.started and policy.may_serve_stale_on_error(f, rc, time.time()):
                self._serve_stored(
                    r, value, m, time.time(), Outcome.STALE, b"edgecore; fwd=stale; detail=stale-if-error"
                )
                return
            raise e

    async def _head_refresh(self, r: Request, key: bytes, value: bytes, m: entry.Meta) -> None:
        """A HEAD for a stored response that must be validated goes upstream as a HEAD; a 200 whose
        validators and length match updates the stored GET response (RFC 9111 4.3.5), anything else
        leaves it stale for the next GET."""
        sink = StreamSink(self.ctx, self, r, Outcome.MISS, fwd=b"stale")
        await self._exchange(r, sink)
        await sink.finished()
        if sink.status is None:
            return
        body = bytes(entry.body(value, m))
        stored = entry.headers(value, m) + [(b"content-length", b"%d" % len(body))]
        merged = policy.head_update(sink.status, stored, sink.headers)
        if merged is None:
            return
        store = StoreSink(self.ctx, None, r, key, fwd=b"stale", flight=None)
        now = time.time()
        fresh, _ = policy.decide_store(
            b"GET",
            m.status,
            r.headers,
            merged,
            request_time=store.request_time,
            response_time=now,
            opts=self.ctx.policy_opts,
        )
        if fresh is not None:
            store.fresh, store.status, store.headers = fresh, m.status, merged
            store.reason_phrase = entry.reason(value, m)
            store.vary = keys.parse_vary([v for n, v in merged if n == b"vary"]) or ()
            store._store(body)

    def _background_refresh(self, r: Request, key: bytes, value: bytes, m: entry.Meta) -> None:
        """stale-while-revalidate (RFC 5861 3): one refresh per key, off the client's path."""
        ctx = self.ctx
        if key in ctx.refreshing:
            return
        ctx.refreshing.add(key)
        bg = Request()
        for s in ("method", "target", "host", "version", "conn_tokens"):
            setattr(bg, s, getattr(r, s))
        bg.method = b"GET"
        bg.headers = list(r.headers)
        bg.t0 = time.time()

        async def run() -> None:
            stored = entry.headers(value, m)
            sink = StoreSink(ctx, None, bg, key, fwd=b"stale", flight=None, stored=(value, m, stored))
            try:
                await self._exchange(
                    bg, sink, method=b"GET", drop=_CACHE_FETCH_DROP, extra=policy.validators_for(stored)
                )
                await sink.finished()
            except EdgeError:
                pass
            finally:
                ctx.refreshing.discard(key)

        ctx.loop.create_task(run())


def _header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


class StreamSink:
    """Streams an upstream response to the client (head, then body chunks as they come)."""

    def __init__(
        self,
        ctx: Context,
        proto: ClientProtocol | None,
        r: Request,
        outcome: Outcome,
        fwd: bytes,
        detail: bytes | None = None,
    ) -> None:
        self.ctx = ctx
        self.proto = proto
        self.r = r
        self.outcome = outcome
        self.fwd = fwd
        self.detail = detail
        self.exchange: Exchange | None = None
        self.status: int | None = None
        self.headers: Headers = []
        self.started = False  # bytes written to the client transport
        self.out: list[bytes] = []  # response bytes not yet written: one write per upstream read
        self.out_len = 0
        self.chunked_out = False
        self.no_body = False
        self.close_delimited = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: EdgeError | None = None

    def reset(self) -> None:
        """Start over for a retried exchange: nothing of the failed attempt may end the new one."""
        self.status = None
        self.headers = []
        self.error = None
        self.out.clear()
        self.out_len = 0
        if self._done.done():
            self._done = asyncio.get_running_loop().create_future()

    def cache_status(self) -> bytes:
        s = b"edgecore; fwd=" + self.fwd
        if self.status is not None:
            s += b"; fwd-status=%d" % self.status
        if self.detail:
            s += b"; detail=" + self.detail
        return s

    def interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """Relay a 1xx (RFC 9110 15.2) to an HTTP/1.1 client before the final response; never stored.
        100 is edgecore's own business (it answers Expect itself) and 101 is never asked for."""
        p = self.proto
        if p is None or self.r.version != b"1.1" or status in (100, 101) or self.started or self.out:
            return
        listed = _connection_listed(headers)
        fields = b"".join(
            n + b": " + v + b"\r\n" for n, v in headers if n not in HOP_BY_HOP and n not in listed
        )
        p._write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, fields))

    def head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        p = self.proto
        if p is None:
            return
        self._attach(p)
        self._send_head(p, status, reason, headers)

    def _attach(self, p: ClientProtocol) -> None:
        """The upstream connection now streams to this client: flow control couples the two."""
        up = self.exchange.conn if self.exchange is not None else None
        p.upstream = up
        if p.write_paused and up is not None:
            up.pause_reading()

    def _send_head(
        self, p: ClientProtocol, status: int, reason: bytes, headers: Headers, extra: bytes = b""
    ) -> None:
        r = self.r
        conn_listed = _connection_listed(headers)
        clen = None
        te = via = False
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for n, v in headers:
            if n in _RESPONSE_SKIP or n in conn_listed:
                if n == b"content-length":
                    clen = v
                elif n == b"transfer-encoding":
                    te = True
                continue
            if n == b"via":
                via = True
                parts.append(b"via: " + v + b", " + p.ctx.via + b"\r\n")
                continue
            parts.append(n + b": " + v + b"\r\n")
        if not via:
            parts.append(b"via: " + p.ctx.via + b"\r\n")
        parts.append(b"cache-status: " + self.cache_status() + b"\r\n")
        parts.append(extra)
        self.no_body = r.method == b"HEAD" or status in (204, 304) or 100 <= status < 200
        if clen is not None and not te:
            parts.append(b"content-length: " + clen + b"\r\n")
        elif not self.no_body:
            if r.version == b"1.1":
                self.chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_delimited = True
                r.keep_alive = False
        parts.append(p._conn_header(r))
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.out.append(head)
        self.out_len += len(head)

    def body(self, chunk: bytes) -> None:
        if self.proto is None or self.no_body:
            return
        if self.chunked_out:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.out.append(chunk)
        self.out_len += len(chunk)
        if self.out_len >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (called after each upstream read, and at the end)."""
        out = self.out
        if out and self.proto is not None:
            self.proto._write(out[0] if len(out) == 1 else b"".join(out))
            self.started = True
            out.clear()
            self.out_len = 0

    def end(self) -> None:
        p = self.proto
        if p is not None:
            p.upstream = None
            p.ctx.counters.request(self.outcome, time.time() - self.r.t0)  # before the last write
            if self.chunked_out:
                self.out.append(b"0\r\n\r\n")
            self.flush()
            if self.close_delimited:
                p._finish_connection()
        if not self._done.done():
            self._done.set_result(None)

    def failed(self, exc: EdgeError) -> None:
        self.error = exc
        self.out.clear()  # a head not yet written is replaced by an error response
        p = self.proto
        if p is not None:
            p.upstream = None
            if self.started:
                # the head is out: the only honest signal left is to close without finishing the body
                p.ctx.counters.inc(F_UPSTREAM_ERRORS)
                p.abort()
        if not self._done.done():
            self._done.set_result(None)

    async def finished(self) -> None:
        await self._done
        if self.error is not None and not self.started:
            raise self.error


class StoreSink(StreamSink):
    """Streams a GET response to the client while keeping its body for the cache; stores it when the
    policy allows and the body completes. Handles 304s to revalidations (RFC 9111 4.3.3/4.3.4)."""

    def __init__(
        self,
        ctx: Context,
        proto: ClientProtocol | None,
        r: Request,
        key: bytes,
        fwd: bytes,
        flight: Any,
        stored: tuple[bytes, entry.Meta, Headers] | None = None,
        rc: policy.RequestControl | None = None,
    ) -> None:
        super().__init__(ctx, proto, r, Outcome.MISS, fwd=fwd)
        self.rc = rc
        self.stale_on_error = False
        self.key = key
        self.flight = flight
        self.stored = stored
        self.parts: list[bytes] | None = None
        self.size = 0
        self.fresh: policy.Freshness | None = None
        self.reason_phrase = b""
        self.stored_value: bytes | None = None
        self.request_time = time.time()
        self.validated = False
        self.mismatch = False
        self.vary: tuple[bytes, ...] = ()
        self.deferred = False  # head not rendered yet: the response may be served from what is stored

    def reset(self) -> None:
        super().reset()
        self.parts = None
        self.size = 0
        self.request_time = time.time()

    def head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.reason_phrase = reason
        now = time.time()
        ctx = self.ctx
        if status == 304 and self.stored is not None:
            self._validated(headers, now)
            return
        if status in _ERROR_STATUSES and self.stored is not None and self.rc is not None:
            f = entry.freshness(self.stored[1])
            if policy.may_serve_stale_on_error(f, self.rc, now):  # RFC 5861 4, RFC 9111 4.2.4
                self.stale_on_error = self.validated = True
                return
        post = self.r.method == b"POST"
        if post and self.proto is not None:
            self.proto._invalidate(self.r, status, headers)  # RFC 9111 4.4, before a store replaces it
        fresh, why = policy.decide_store(
            b"POST" if post else b"GET",
            status,
            self.r.headers,
            headers,
            request_time=self.request_time,
            response_time=now,
            opts=ctx.policy_opts,
            post_target=(self.r.host, self.r.target) if post else None,
        )
        clen = _header(headers, b"content-length")
        if fresh is not None and clen is not None and clen.isdigit() and int(clen) > ctx.cfg.max_object_size:
            fresh, why = None, policy.Reason.TOO_LARGE
        vary = keys.parse_vary([v for n, v in headers if n == b"vary"]) if fresh is not None else ()
        if vary is None:
            fresh, why = None, policy.Reason.VARY_STAR
        self.vary = vary or ()
        if fresh is None:
            if not post:
                self.outcome = Outcome.UNCACHEABLE
            self.detail = why.name.lower().replace("_", "-").encode() if why is not None else None
            if self.stored is not None:
                ctx.cache.delete(self.key)
            if self.flight is not None:
                ctx.flights.mark_uncacheable(self.key)
                ctx.flights.finish(self.key, self.flight, None)  # release waiters at once
                self.flight = None
        else:
            self.fresh = fresh
            self.parts = []
            ctx.flights.forget_uncacheable(self.key)
            # a whole small body is stored first and then served like a hit: one rendering of the head.
            # Not when the stored head would differ from what this client gets (qualified no-cache/private).
            cc = b",".join(v for n, v in headers if n.endswith(b"cache-control")).lower()
            self.deferred = clen is not None and b"no-cache=" not in cc and b"private=" not in cc
        p = self.proto
        if p is None:
            return
        if self.deferred:
            self._attach(p)
        else:
            super().head(status, reason, headers, keep_alive)

    def cache_status(self) -> bytes:
        s = super().cache_status()
        if self.fresh is not None and self.status is not None:
            s += b"; stored; ttl=%d" % max(0, int(self.fresh.lifetime - self.fresh.initial_age))
        return s

    def body(self, chunk: bytes) -> None:
        if self.validated:
            return
        if self.parts is not None:
            self.size += len(chunk)
            if self.size > self.ctx.cfg.max_object_size:
                self._undefer()
                self.parts = None  # streamed through, not cached
                self.fresh = None
                ctx = self.ctx
                if self.flight is not None:
                    ctx.flights.mark_uncacheable(self.key)
                    ctx.flights.finish(self.key, self.flight, None)
                    self.flight = None
            else:
                self.parts.append(chunk)
        if not self.deferred:
            super().body(chunk)

    def _undefer(self) -> None:
        """Render the head and queue the body kept so far: the response is streamed after all."""
        if self.deferred and self.proto is not None and self.status is not None:
            self.deferred = False
            self._send_head(self.proto, self.status, self.reason_phrase, self.headers)
            for chunk in self.parts or ():
                super().body(chunk)

    def flush(self) -> None:
        if self.size >= _FLUSH_AT:
            self._undefer()  # a large body: stream it rather than hold it (nginx buffers similarly)
        super().flush()

    def end(self) -> None:
        if self.validated:
            if not self._done.done():
                self._done.set_result(None)
            return
        if self.parts is not None and self.fresh is not None and self.status is not None:
            self._store(b"".join(self.parts))
        p = self.proto
        if self.deferred and p is not None:
            value = self.stored_value
            if value is not None:
                self.deferred = False
                p.upstream = None
                now = time.time()
                m = entry.meta(value)
                p._serve_stored(self.r, value, m, now, self.outcome, self.cache_status())
                self.started = True
                if not self._done.done():
                    self._done.set_result(None)
                return
            self._undefer()  # not stored after all (refused): render and send what we have
        super().end()

    def _store(self, body: bytes) -> None:
        ctx = self.ctx
        assert self.fresh is not None and self.status is not None
        value, birth, expires, flags = _stored_form(
            ctx, self.status, self.reason_phrase, self.headers, body, self.fresh, self.request_time
        )
        key = self.key
        if self.vary:
            key = self._variant_key(self.vary, birth, expires)
        if ctx.cache.store(key, value, birth, expires, flags, tags=_tags(self.headers)):
            self.stored_value = value

    def _variant_key(self, vary: tuple[bytes, ...], birth: float, expires: float) -> bytes:
        """The secondary key of this response (RFC 9111 4.1), under the URL's Vary marker: the current
        marker's generation when it names the same fields, else a new marker (which orphans old variants)."""
        ctx = self.ctx
        primary = keys.primary_key(b"GET", self.r.host, self.r.target, ctx.key_opts)
        found = ctx.cache.lookup(primary, time.time())
        marker = None
        if found is not None and found[3] == entry.FLAG_VARY:
            gen, names = entry.decode_vary(found[0])
            if names == vary:
                marker = found
        if marker is None or marker[2] < expires:
            value = entry.encode_vary(vary) if marker is None else marker[0]
            ctx.cache.store(primary, value, birth, expires, entry.FLAG_VARY)
            gen, _ = entry.decode_vary(value)
        return keys.secondary_key(primary + b"#" + gen, vary, self.r.headers)

    def _validated(self, headers: Headers, now: float) -> None:
        """304 to our conditional request: update the stored headers (RFC 9111 4.3.4), freshen, serve."""
        assert self.stored is not None
        value, m, stored = self.stored
        ctx = self.ctx
        self.validated = True
        if not policy.matches_304(stored, headers):
            # the 304 is not about what we hold (RFC 9111 4.3.4): drop it and fetch the full response
            self.mismatch = True
            ctx.cache.delete(self.key)
            return
        merged = policy.merge_304(stored, headers)
        if not any(n == b"date" for n, _ in merged):
            merged.append((b"date", policy.http_date(now)))
        fresh, why = policy.decide_store(
            b"GET",
            m.status,
            self.r.headers,
            merged,
            request_time=self.request_time,
            response_time=now,
            opts=ctx.policy_opts,
        )
        body = bytes(entry.body(value, m))
        new_value = None
        if fresh is not None:
            self.fresh = fresh
            self.headers = merged
            self.status = m.status
            self.reason_phrase = entry.reason(value, m)
            self._store(body)
            new_value = self.stored_value
        else:
            ctx.cache.delete(self.key)
        p = self.proto
        if p is not None:
            if new_value is None:
                new_value = entry.encode(
                    m.status,
                    entry.reason(value, m),
                    policy.storable_headers(merged),
                    body,
                    fresh or entry.freshness(m),
                    self.request_time,
                )[0]
            nm = entry.meta(new_value)
            p._serve_stored(
                self.r, new_value, nm, now, Outcome.REVALIDATED, b"edgecore; fwd=stale; fwd-status=304"
            )
        self.started = True


class PlainMiss:
    """A plain miss fetched without httptools, a task or a sink: a GET/HEAD the C path parsed and found
    nothing stored for, sent over an idle pooled connection (ClientProtocol._plain_miss). The C path reads
    the response head, policy decides, the complete body is stored and then served from the stored value
    like a hit (as StoreSink does for small bodies). What is not plain (the response head, not storable, a
    body over _FLUSH_AT, Vary, fields named by a qualified no-cache/private) goes to the general path
    (StoreSink + Exchange) with every byte received so far; a reused connection that closes before a whole
    response head has the general path fetch it again (which retries on a new one), in the same flight.
    Invariants: nothing is written to the client before the body is complete and stored; the key's flight
    is finished exactly once, here or by the general path that took it over."""

    __slots__ = (
        "proto",
        "conn",
        "key",
        "flight",
        "r",
        "raw",
        "keep",
        "buf",
        "head",
        "fresh",
        "request_time",
        "started_at",
        "last_activity",
    )

    def __init__(
        self,
        proto: ClientProtocol,
        conn: UpstreamConnection,
        key: bytes,
        flight: Any,
        r: Request,
        raw: bytes,
        keep: int,
    ) -> None:
        self.proto = proto
        self.conn = conn
        self.key = key
        self.flight = flight
        self.r = r
        self.raw = raw  # the client's request head, for the general path
        self.keep = keep  # the C path's keep-alive code of the response
        self.buf = b""
        self.head: tuple[int, bytes, Headers, int, int, bool] | None = None
        self.fresh: policy.Freshness | None = None
        self.request_time = r.t0
        self.started_at = self.last_activity = proto.ctx.loop.time()

    def data(self, data: bytes) -> None:
        ctx = self.proto.ctx
        self.last_activity = ctx.loop.time()
        buf = self.buf + data if self.buf else data
        h = self.head
        if h is None:
            parsed = ctx.hitpath.parse_response(buf)
            if parsed is None:
                self.buf = buf
                return
            if parsed is False or not self._storable(parsed):
                self._hand_over(buf)
                return
            h = self.head = parsed
        end = h[3] + h[4]
        if len(buf) < end:
            self.buf = buf
            return
        self._complete(h, buf, end)

    def _storable(self, h: tuple[int, bytes, Headers, int, int, bool]) -> bool:
        """Stored and then served whole: policy allows it (the request has no Authorization or Cache-Control:
        the C path took only such requests), it is small, and the stored head is what this client gets."""
        status, _, fields, _, clen, _ = h
        ctx = self.proto.ctx
        if clen > _FLUSH_AT or clen > ctx.cfg.max_object_size:
            return False
        for n, v in fields:
            if n == b"vary":
                return False
            if n.endswith(b"cache-control"):
                lv = v.lower()
                if b"no-cache=" in lv or b"private=" in lv:
                    return False
        fresh, _ = policy.decide_store(
            b"GET",
            status,
            [],
            fields,
            request_time=self.request_time,
            response_time=time.time(),
            opts=ctx.policy_opts,
        )
        self.fresh = fresh
        return fresh is not None

    def _complete(self, h: tuple[int, bytes, Headers, int, int, bool], buf: bytes, end: int) -> None:
        status, reason, fields, hlen, _, keep_alive = h
        p = self.proto
        ctx = p.ctx
        fresh = self.fresh
        assert fresh is not None
        self.conn.fast = None
        ctx.pool.active.discard(self)
        ctx.pool.release(self.conn, keep_alive and len(buf) == end)  # extra bytes: never reused
        value, birth, expires, flags = _stored_form(
            ctx, status, reason, fields, buf[hlen:end], fresh, self.request_time
        )
        stored = ctx.cache.store(self.key, value, birth, expires, flags, tags=_tags(fields))
        ctx.flights.finish(self.key, self.flight, True if stored else None)
        r = self.r
        ctx.counters.request(Outcome.MISS, time.time() - r.t0)  # before the write
        if not p.closing:
            cs = b"edgecore; fwd=uri-miss; fwd-status=%d; stored; ttl=%d" % (
                status,
                max(0, int(fresh.lifetime - fresh.initial_age)),
            )
            if not ctx.hitpath.respond(
                value, p.transport, self.keep if r.keep_alive else 0, r.method == b"HEAD", cs
            ):
                log.error("unrenderable stored response for %s", r.target[:200])  # never: we just encoded it
                p.abort()
        p._next(r)

    def _request(self) -> Request:
        """The request, with every field, as the general path's parser would have built it."""
        r = self.r
        r.method, r.target, r.headers = self.proto.ctx.hitpath.request_fields(self.raw, 0, len(self.raw))
        for n, v in r.headers:
            if n == b"host":
                r.host = v.lower()
            elif n == b"connection":
                r.conn_tokens.extend(t.strip().lower() for t in v.split(b","))
        return r

    def _hand_over(self, buf: bytes) -> None:
        """The general path takes this fetch over: a StoreSink on an Exchange of the same connection, fed
        the bytes received so far, its end awaited by the client's _run (which then goes on in order)."""
        p = self.proto
        ctx = p.ctx
        ctx.pool.active.discard(self)
        self.conn.fast = None
        r = self._request()
        sink = StoreSink(ctx, p, r, self.key, fwd=b"uri-miss", flight=self.flight)
        sink.request_time = self.request_time
        sink.exchange = ctx.pool.adopt(self.conn, b"GET", sink, self.started_at)
        ctx.loop.create_task(p._run(r, first=_finish_miss(ctx, self.key, self.flight, sink)))
        self.conn.data_received(buf)

    def lost(self) -> None:
        """The connection closed before the response was complete."""
        ctx = self.proto.ctx
        ctx.pool.active.discard(self)
        if self.head is None:
            # a reused connection the upstream had closed (before a whole response head): the general path
            # fetches again, as it retries a reused connection that fails before the head, and the key's
            # waiters keep waiting for that fetch
            p = self.proto
            r = self._request()
            ctx.loop.create_task(p._run(r, first=p._fetch(r, self.key, b"uri-miss", self.flight)))
            return
        self._fail(UpstreamIncomplete(f"upstream {self.conn.upstream.authority} closed mid-body"))

    def check(self, now: float) -> None:
        """The pool's ticker: response-head and idle-body timeouts (504), as Exchange.check."""
        cfg = self.proto.ctx.cfg
        authority = self.conn.upstream.authority
        if self.head is None:
            if now - self.started_at < cfg.response_timeout:
                return
            err = UpstreamTimeout(f"no response head from {authority} within {cfg.response_timeout:g}s")
        elif now - self.last_activity < cfg.idle_timeout:
            return
        else:
            err = UpstreamTimeout(f"upstream {authority} body idle for {cfg.idle_timeout:g}s")
        self.proto.ctx.pool.active.discard(self)
        self.conn.fast = None
        self.conn.abort()
        self._fail(err)

    def _fail(self, err: EdgeError) -> None:
        p = self.proto
        p.ctx.flights.finish(self.key, self.flight, None)
        r = self._request()
        p._error_response(r, err)
        p._next(r)


async def _finish_miss(ctx: Context, key: bytes, flight: Any, sink: StoreSink) -> None:
    """The end of a miss the general path fetches: waiters look in the cache for their own variant; None
    sends them upstream on their own."""
    try:
        await sink.finished()
    finally:
        ctx.flights.finish(key, flight, True if sink.stored_value is not None else None)


_ERROR_STATUSES = frozenset((500, 502, 503, 504))
_BIG = 32 << 10  # stored responses above this are written as views, not joined into one buffer
_FLUSH_AT = 64 << 10  # pending response bytes that are written without waiting for the end of a read
# response fields never relayed as received: hop-by-hop (RFC 9110 7.6.1), framing (re-done), our own
_RESPONSE_SKIP = HOP_BY_HOP | {b"content-length", b"cache-status"}


def _stored_form(
    ctx: Context,
    status: int,
    reason: bytes,
    headers: Headers,
    body: bytes,
    fresh: policy.Freshness,
    request_time: float,
) -> tuple[bytes, float, float, int]:
    """(value, birth, expires, cache flags) of a response to store: the storable fields (RFC 9111 3.1) with
    our Via, encoded by entry; kept past freshness for stale-while-revalidate/-if-error, and a while longer
    when it has validators so that it can be revalidated."""
    stored_headers = policy.storable_headers(headers)
    via = ctx.via
    validators = False
    for i, (n, v) in enumerate(stored_headers):
        if n == b"via":
            stored_headers[i] = (n, v + b", " + ctx.via)
            via = b""
        elif n == b"etag" or n == b"last-modified":
            validators = True
    if via:
        stored_headers.append((b"via", via))
    value, birth, fresh_until, flags = entry.encode(status, reason, stored_headers, body, fresh, request_time)
    keep = max(fresh.stale_while_revalidate, fresh.stale_if_error, _STALE_KEEP if validators else 0.0)
    expires = max(fresh_until + keep, time.time() + 1.0) if validators else fresh_until + keep
    return value, birth, expires, flags


def _tags(headers: Headers) -> tuple[int, ...]:
    """Purge tags of a response: Surrogate-Key (space-separated) and Cache-Tag (comma-separated), at most
    MAX_TAGS, as the cache's 63-bit ids (POST /purge {"tag": ...} hashes the same way)."""
    names: list[bytes] = []
    for n, v in headers:
        if n == b"surrogate-key":
            names.extend(v.split())
        elif n == b"cache-tag":
            names.extend(t.strip() for t in v.split(b","))
    if not names:
        return ()
    return tuple(dict.fromkeys(Cache.tag_id(t) for t in names if t))[:MAX_TAGS]


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    listed = [v for n, v in headers if n == b"connection"]
    if not listed:
        return frozenset()
    return frozenset(t.strip().lower() for v in listed for t in v.split(b","))


_STALE_KEEP = 600.0  # seconds a stale response with validators is kept for revalidation


def make_context(
    cfg: Config, cache: Cache, counters: SlotCounters, loop: asyncio.AbstractEventLoop
) -> Context:
    return Context(cfg, cache, counters, loop)
