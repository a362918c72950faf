"""One request's caching flow (RFC 9111): lookup (with Vary), serve stored, revalidate (304 merging), HEAD
refresh, stale-while-revalidate in the background, stale-if-error, coalesced misses, store, pass-through of
everything else, and invalidation after unsafe methods.

Owns: the order of the decisions for one request (first, with tenancy on, its tenant: part of its key and
checked on lookup; a tenant revoked or outside its regions is passed through before anything is looked up,
coalesced or stored) and the upstream exchanges they need (one server chosen per
request; one retry on a fresh connection when a reused one closes before answering a bodiless request; a
connect failure or a reset before any response byte of a bodiless idempotent request retried on another
server, up to `retries`, within the pool's retry budget; 503 + Retry-After past max_upstream_requests).
Invariants:
- it talks to its connection only through `context.Client` (write, finish, abort, couple, error, done, spawn);
- every decision comes from policy (store, reuse, stale, retention), every key from keys, every Cache-Status
  from cachestatus, with the key and policy options of the request's route (routes.match, once per request
  in handle; a background refresh carries the route of the request that started it); an error is raised
  as an EdgeError and becomes a response in the protocol;
- a coalesced flight is finished exactly once, with what was stored or None;
- with an invalidation bus, a stored entry is served as is only within the node's lease (policy.decide_lease
  over the shared deadline, ctx.lease_index); past it, it is revalidated (Cache-Status detail=unverified);
- background work (stale-while-revalidate refreshes) is kept in ctx.tasks until done and its failures are
  logged, never lost.
Never: touch a transport, parse a request, or render an error response itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import cachestatus, entry, keys, policy, tenants
from .context import LARGE_BODY, Client, Context, Request, log_text
from .errors import NotCached, UpstreamError, UpstreamIncomplete, UpstreamOverloaded, UpstreamTimeout
from .fields import HOP_BY_HOP
from .flights import Flight
from .metrics import F_WAITING, Outcome
from .serve import serve_stored
from .sinks import StoreSink, StreamSink, invalidate, store
from .upstream import (
    CACHE_FETCH_DROP,
    CONNECTION_PROTECTED,
    Exchange,
    Server,
    UpstreamConnection,
    request_head,
)

Headers = list[tuple[bytes, bytes]]
log = logging.getLogger("edgecore.cachepath")

_CACHEABLE_METHODS = frozenset((b"GET", b"HEAD"))
_UNSAFE_KEEP = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))  # methods that invalidate nothing
# idempotent methods (RFC 9110 9.2.2): retried on another server when bodiless
_RETRY_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
_STALE_REVALIDATE = cachestatus.render(fwd=b"stale", detail=cachestatus.STALE_WHILE_REVALIDATE)
_STALE_IF_ERROR = cachestatus.render(fwd=b"stale", detail=cachestatus.STALE_IF_ERROR)


async def handle(c: Client, r: Request) -> None:
    """Answer one request (the protocol's request task calls this, in request order)."""
    if r.error is not None:
        raise r.error
    if r.expect_continue and r.version == b"1.1" and not r.body_done:
        c.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # RFC 9110 10.1.1
    t = c.ctx.tenancy
    if t.enabled:
        # the request's tenant (tenants.py): part of its key, checked on every lookup, stored with entries
        name = t.name_of(r.headers)
        r.tenant, r.tenant_key = name, name.encode("latin-1")  # (the field's bytes as received)
        r.tenant_id = tenants.tenant_id(r.tenant_key)
        if r.tenant_id not in t.named:
            t.note(c.ctx.cache, name, r.tenant_id)
        why = t.refusal(c.ctx.cache, name, r.tenant_id)
        if why is not None:
            # revoked, or not to be stored in this node's region: neither looked up, coalesced nor stored
            fwd = b"bypass" if r.method in _CACHEABLE_METHODS else b"method"
            await pass_through(c, r, Outcome.BYPASS, fwd=fwd, detail=cachestatus.detail(why), store=False)
            return
    routes = c.ctx.routes
    if routes:
        route = r.route = routes.match(r.host, r.target)
        if route is not None and route.policy_opts.bypass:
            # the route says bypass (policy.Reason.ROUTE_BYPASS): not looked up, not stored, not coalesced
            await pass_through(c, r, Outcome.BYPASS, fwd=b"bypass", detail=cachestatus.ROUTE_BYPASS)
            return
    if r.method in _CACHEABLE_METHODS and not r.has_body():
        await cache_path(c, r)
    else:
        await pass_through(
            c, r, Outcome.BYPASS, fwd=b"method" if r.method not in _CACHEABLE_METHODS else b"bypass"
        )


async def cache_path(c: Client, r: Request) -> None:
    ctx = c.ctx
    now = time.time()
    rc = policy.parse_request(r.headers, ctx.policy_opts_for(r))
    key, found, fwd = lookup(ctx, r, now)
    if rc.no_store:
        await pass_through(c, r, Outcome.BYPASS, fwd=b"request", detail=cachestatus.REQUEST_NO_STORE)
        return
    if found is not None:
        value = found[0]
        m = entry.meta(value if isinstance(value, bytes) else value.head(entry.M))
        f = entry.freshness(m)
        use, why = policy.decide_use(f, rc, now)
        if ctx.lease_index >= 0:  # an invalidation bus: hits only within its lease
            lease_until = ctx.counters.words[ctx.lease_index] / 1e6
            use, why = policy.decide_lease(use, why, lease_until, now, rc)
        if use is policy.Use.FRESH or use is policy.Use.STALE:
            ttl = int(m.fresh_until - now) if m.fresh_until > now else -int(now - m.fresh_until) - 1
            outcome = Outcome.HIT if use is policy.Use.FRESH else Outcome.STALE
            serve_stored(c, r, value, m, now, outcome, cachestatus.render(hit=True, ttl=ttl))
            return
        if not isinstance(value, bytes):  # pinned (lookup_pinned): the slower uses below take a copy
            value = value.tobytes()
        if _connection_strips_keyed_input(r):
            await _pass_connection_listed(c, r)
            return
        if use is policy.Use.STALE_REVALIDATE:
            serve_stored(
                c, r, value, m, now, Outcome.STALE, _STALE_REVALIDATE, cachestatus.STALE_WHILE_REVALIDATE
            )
            background_refresh(c, r, key, value, m)
            return
        if use is policy.Use.VALIDATE and not rc.only_if_cached:
            d = cachestatus.UNVERIFIED if why is policy.Reason.UNVERIFIED else None
            if r.method == b"HEAD":
                await head_refresh(c, r, key, value, m, d)
            else:
                await revalidate(c, r, key, value, m, rc, d)
            return
    if rc.only_if_cached:
        raise NotCached("only-if-cached and nothing stored fits")  # RFC 9111 5.2.1.7
    if _connection_strips_keyed_input(r):
        await _pass_connection_listed(c, r)
        return
    if ctx.flights.uncacheable(key):
        await pass_through(c, r, Outcome.UNCACHEABLE, fwd=fwd, detail=cachestatus.HIT_FOR_MISS)
        return
    await miss(c, r, key, fwd)


def _connection_strips_keyed_input(r: Request) -> bool:
    """The request's Connection names an end-to-end field it carries (not one of the hop-by-hop set, nor one
    of the proxy's own fields, which it cannot remove): that field is removed upstream (RFC 9110 7.6.1), so
    what would be fetched is not what the key (and a Vary over that field) describes."""
    if not r.conn_tokens:
        return False
    listed = frozenset(r.conn_tokens) - HOP_BY_HOP - CONNECTION_PROTECTED
    return any(n in listed for n, _ in r.headers)


async def _pass_connection_listed(c: Client, r: Request) -> None:
    """Fetched for this client alone and never stored (hop-by-hop abuse: a client removing a keyed input, such
    as a Cookie a Vary names, would store the answer to another request under its key)."""
    await pass_through(c, r, Outcome.BYPASS, fwd=b"bypass", detail=cachestatus.CONNECTION_LISTED)


def lookup(ctx: Context, r: Request, now: float) -> tuple[bytes, Any, bytes]:
    """-> (the request's cache key, what the cache holds there or None, the fwd reason of a miss)."""
    key = keys.primary_key(r.method, r.host, r.target, ctx.key_opts_for(r), tenant=r.tenant_key)
    # a value above LARGE_BODY comes pinned in the shared mapping (serve.py writes it in place)
    found = ctx.cache.lookup_pinned(key, now, LARGE_BODY, r.tenant_id)
    if found is not None and found[2] == entry.FLAG_VARY:
        marker = found[0]
        gen, names = entry.decode_vary(marker if isinstance(marker, bytes) else marker.tobytes())
        key = keys.secondary_key(key + b"#" + gen, names, r.headers)  # RFC 9111 4.1
        return key, ctx.cache.lookup_pinned(key, now, LARGE_BODY, r.tenant_id), b"vary-miss"
    return key, found, b"uri-miss"


def serve_collapsed(c: Client, r: Request) -> bool:
    """After waiting on another request's fetch: serve what it stored, if it stored something fresh
    for this request (its own variant: the lookup is this request's)."""
    now = time.time()
    _, found, _ = lookup(c.ctx, r, now)
    if found is None or found[2] & entry.FLAG_VARY:
        return False
    value = found[0]
    m = entry.meta(value if isinstance(value, bytes) else value.head(entry.M))
    if now >= m.fresh_until or m.eflags & entry.E_NO_CACHE:
        return False
    ttl = max(0, int(m.fresh_until - now))
    cs = cachestatus.render(fwd=b"miss", collapsed=True, ttl=ttl)
    serve_stored(c, r, value, m, now, Outcome.COLLAPSED, cs)
    return True


def upstream_head(
    c: Client,
    r: Request,
    method: bytes | None = None,
    drop: frozenset[bytes] = frozenset(),
    extra: Headers | None = None,
) -> bytes:
    """The request head r sends upstream (upstream.request_head), built from the same normalised Host and
    origin-form target as r's cache key (keys.request_form); the body's framing only when the method is
    r's own (a cache fetch of a HEAD is a GET without body). With r's route's key options: what goes
    upstream is what was keyed (a parameter the key drops never reaches the origin)."""
    framing = r.framing() if method is None or method == r.method else b""
    host, target = keys.request_form(r.host, r.target, c.ctx.key_opts_for(r))
    return request_head(
        method or r.method, target, r.headers, frozenset(r.conn_tokens), c.peer, drop, extra, framing, host
    )


async def send_body(c: Client, r: Request, conn: UpstreamConnection) -> None:
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
        c.resume_reading()
        if r.body_done:
            break
        if c.closing:
            raise UpstreamIncomplete("client went away while sending the request body")
        r.body_waiter = c.ctx.loop.create_future()
        await r.body_waiter
        r.body_waiter = None
    if r.chunked:
        conn.write(b"0\r\n\r\n")


async def exchange(
    c: Client,
    r: Request,
    sink: StreamSink,
    method: bytes | None = None,
    drop: frozenset[bytes] = frozenset(),
    extra: Headers | None = None,
    key: bytes | None = None,
) -> Exchange:
    """Open an upstream exchange and wait for its response head. The server is chosen once (by `key`, the
    cache key, under consistent_hash); a reused connection that turns out closed before answering a bodiless
    request is retried once on a fresh connection to the same server; a connect failure or a reset before
    any response byte of a bodiless idempotent request is retried on another server (cfg.retries times at
    most, within the pool's retry budget). Past max_upstream_requests in flight: UpstreamOverloaded."""
    ctx = c.ctx
    pool = ctx.pool
    cfg = ctx.cfg
    head = upstream_head(c, r, method, drop, extra)
    m = method or r.method
    if key is None and cfg.lb == "consistent_hash":
        key = keys.primary_key(b"GET", r.host, r.target, ctx.key_opts_for(r), tenant=r.tenant_key)
    hkey = key or b""
    server = pool.choose(hkey)
    assert server is not None
    tried: list[Server] = []
    retries = cfg.retries if r.body is None and m in _RETRY_METHODS else 0
    fresh_done = False

    def other(failed: Server, e: UpstreamError) -> Server | None:
        """The server to retry on after `failed` failed with e, or None."""
        tried.append(failed)
        if len(tried) > retries:
            return None
        nxt = pool.choose(hkey, exclude=tried)
        if nxt is None:
            return None
        if not pool.budget.allow(ctx.loop.time()):
            log.info("not retrying %s on another server: retry budget spent (%s)", log_text(r.target), e)
            return None
        pool.retried(failed)
        log.info("retrying %s on %s: %s", log_text(r.target), nxt.upstream.authority, e)
        return nxt

    fresh = False
    while True:
        if pool.full(server):
            raise UpstreamOverloaded(
                f"{cfg.max_upstream_requests} requests in flight to {server.upstream.authority}"
            )
        r.upstream, r.up_t0 = server.upstream.authority, time.time()  # the access log's upstream fields
        try:
            conn = await pool.acquire(fresh=fresh, server=server)
        except UpstreamError as e:
            nxt = other(server, e)
            if nxt is None:
                raise
            server, fresh = nxt, False
            continue
        reused = conn.reused
        ex = pool.open(conn, m, head, sink)
        sink.exchange = ex
        if r.body is not None:
            await send_body(c, r, conn)
        try:
            await ex.head_future
            return ex
        except UpstreamError as e:
            if ex.head_seen or sink.started or r.body is not None:
                raise
            if reused and not fresh_done:
                # the upstream had closed the reused connection: once more on a fresh one, same server
                fresh_done = fresh = True
                sink.reset()
                continue
            if isinstance(e, UpstreamTimeout) or conn.got_bytes:
                raise
            nxt = other(server, e)
            if nxt is None:
                raise
            sink.reset()
            server, fresh = nxt, False


async def pass_through(
    c: Client, r: Request, outcome: Outcome, fwd: bytes, detail: bytes | None = None, store: bool = True
) -> None:
    """Forward upstream and stream the response back; nothing is stored (not even a POST response that names
    itself, with store=False). Unsafe methods invalidate (RFC 9111 4.4)."""
    sink: StreamSink
    if r.method == b"POST" and store and (r.route is None or not r.route.policy_opts.bypass):
        # RFC 9110 9.3.3: a POST response naming its own target in Content-Location, with explicit
        # freshness, may answer later GETs; StoreSink invalidates first, then stores it
        key = keys.primary_key(b"GET", r.host, r.target, c.ctx.key_opts_for(r), tenant=r.tenant_key)
        sink = StoreSink(c.ctx, c, r, key, fwd=fwd, flight=None)
        sink.outcome = outcome
    else:
        sink = StreamSink(c.ctx, c, r, outcome, fwd=fwd, detail=detail)
    await exchange(c, r, sink)
    await sink.finished()
    if r.method not in _UNSAFE_KEEP and r.method != b"POST" and sink.status is not None:
        invalidate(c.ctx, r, sink.status, sink.headers)


async def miss(c: Client, r: Request, key: bytes, fwd: bytes) -> None:
    """A cache miss: coalesced per key. The leader fetches; waiters get its stored response, or go
    upstream on their own the moment it turns out not storable."""
    ctx = c.ctx
    flight, leader = ctx.flights.join(key)
    if not leader:
        ctx.counters.inc(F_WAITING)
        try:
            assert flight.done is not None
            result = await asyncio.wait_for(asyncio.shield(flight.done), ctx.cfg.response_timeout)
        except TimeoutError:
            raise UpstreamTimeout("timed out waiting for a coalesced upstream response") from None
        finally:
            ctx.counters.inc(F_WAITING, -1)
        if result is not None and serve_collapsed(c, r):
            return
        await pass_through(c, r, Outcome.UNCACHEABLE, fwd=fwd, detail=cachestatus.COLLAPSED_UNCACHEABLE)
        return
    if not ctx.flights.lock(flight, key):
        # another worker process is fetching this key: wait for it (nginx's proxy_cache_lock), then
        # serve what it stored; if it stored nothing usable, fetch (and take the lock if still free)
        ctx.counters.inc(F_WAITING)
        try:
            await ctx.flights.wait_unlocked(key, ctx.cfg.response_timeout)
        finally:
            ctx.counters.inc(F_WAITING, -1)
        if serve_collapsed(c, r):
            ctx.flights.finish(key, flight, True)
            return
        ctx.flights.lock(flight, key)
    await fetch(c, r, key, fwd, flight)


async def fetch(c: Client, r: Request, key: bytes, fwd: bytes, flight: Flight) -> None:
    """The leader's fetch of a miss: stored (and served) through a StoreSink; the flight is finished
    with what was stored, or None when nothing was."""
    sink = StoreSink(c.ctx, c, r, key, fwd=fwd, flight=flight)
    try:
        await exchange(c, r, sink, method=b"GET", drop=CACHE_FETCH_DROP, key=key)
    except BaseException:
        c.ctx.flights.finish(key, flight, None)
        raise
    await finish_miss(c.ctx, key, flight, sink)


async def finish_miss(ctx: Context, key: bytes, flight: Flight, sink: StoreSink) -> None:
    """The end of a miss the general path fetches: waiters look in the cache for their own variant; None
    sends them upstream on their own."""
    try:
        await sink.finished()
    finally:
        ctx.flights.finish(key, flight, True if sink.stored_value is not None else None)


async def revalidate(
    c: Client,
    r: Request,
    key: bytes,
    value: bytes,
    m: entry.Meta,
    rc: policy.RequestControl,
    detail: bytes | None = None,
) -> None:
    """A stored response that may not be used as is: validate it upstream (RFC 9111 4.3.1), or serve it stale
    at once when every server is known down and policy allows it. `detail`: the Cache-Status detail of the
    answer (cachestatus.UNVERIFIED when the invalidation lease was out)."""
    if c.ctx.pool.none_usable() and serve_stale_on_error(c, r, value, m, rc, _NO_LIVE_UPSTREAM):
        return
    stored = entry.headers(value, m)
    validators = policy.validators_for(stored)
    sink = StoreSink(c.ctx, c, r, key, fwd=b"stale", flight=None, stored=(value, m, stored), rc=rc)
    sink.detail = detail
    try:
        await exchange(c, r, sink, method=b"GET", drop=CACHE_FETCH_DROP, extra=validators, key=key)
        await sink.finished()
        if sink.mismatch:
            await miss(c, r, key, b"stale")
        elif sink.stale_on_error:
            ex = sink.exchange
            log.info(
                "serving stale %s: upstream %s answered %d",
                log_text(r.target),
                ex.conn.upstream.authority if ex is not None else "?",
                sink.status or 0,
            )
            cs = cachestatus.render(
                fwd=b"stale", fwd_status=sink.status or 0, detail=cachestatus.STALE_IF_ERROR
            )
            serve_stored(c, r, value, m, time.time(), Outcome.STALE, cs, cachestatus.STALE_IF_ERROR)
    except UpstreamError as e:
        if not sink.started and serve_stale_on_error(c, r, value, m, rc, e):
            return
        raise


_NO_LIVE_UPSTREAM = UpstreamError("no upstream is up: every server is marked down or ejected")


def serve_stale_on_error(
    c: Client, r: Request, value: bytes, m: entry.Meta, rc: policy.RequestControl, e: UpstreamError
) -> bool:
    """The upstream failed (connect error, reset, timeout, closed before answering): serve the stored
    copy instead when policy allows (RFC 9111 4.2.4, RFC 5861 4; the operator's stale_if_error)."""
    now = time.time()
    if not policy.may_serve_stale_on_error(entry.freshness(m), rc, now):
        return False
    log.info("serving stale %s: %s", log_text(r.target), e)  # the error names the upstream
    serve_stored(c, r, value, m, now, Outcome.STALE, _STALE_IF_ERROR, cachestatus.STALE_IF_ERROR)
    return True


async def head_refresh(
    c: Client, r: Request, key: bytes, value: bytes, m: entry.Meta, detail: bytes | None = None
) -> None:
    """A HEAD for a stored response that must be validated goes upstream as a HEAD; a 200 whose
    validators and length match updates the stored GET response (RFC 9111 4.3.5), anything else
    leaves it stale for the next GET. An upstream that fails before answering: stale, as for a GET."""
    request_time = time.time()
    sink = StreamSink(c.ctx, c, r, Outcome.MISS, fwd=b"stale", detail=detail)
    try:
        await exchange(c, r, sink)
        await sink.finished()
    except UpstreamError as e:
        rc = policy.parse_request(r.headers, c.ctx.policy_opts_for(r))
        if not sink.started and serve_stale_on_error(c, r, value, m, rc, e):
            return
        raise
    if sink.status is None:
        return
    body = bytes(entry.body(value, m))
    stored = entry.headers(value, m) + [(b"content-length", b"%d" % len(body))]
    merged = policy.head_update(sink.status, stored, sink.headers)
    if merged is None:
        return
    fresh, _ = policy.decide_store(
        b"GET",
        m.status,
        r.headers,
        merged,
        request_time=request_time,
        response_time=time.time(),
        opts=c.ctx.policy_opts_for(r),
    )
    if fresh is not None:
        vary = keys.parse_vary([v for n, v in merged if n == b"vary"]) or ()
        store(c.ctx, r, key, m.status, entry.reason(value, m), merged, body, fresh, vary)


def background_refresh(c: Client, r: Request, key: bytes, value: bytes, m: entry.Meta) -> None:
    """stale-while-revalidate (RFC 5861 3): one refresh per key, off the client's path; the task is kept in
    ctx.tasks until done, and a failure of any kind is logged."""
    ctx = c.ctx
    if key in ctx.refreshing:
        return
    ctx.refreshing.add(key)
    bg = Request()
    for s in (
        "method",
        "target",
        "host",
        "version",
        "conn_tokens",
        "route",
        "tenant",
        "tenant_key",
        "tenant_id",
    ):
        setattr(bg, s, getattr(r, s))
    bg.method = b"GET"
    bg.headers = list(r.headers)
    bg.t0 = time.time()

    async def run() -> None:
        stored = entry.headers(value, m)
        sink = StoreSink(ctx, None, bg, key, fwd=b"stale", flight=None, stored=(value, m, stored))
        try:
            await exchange(
                c,
                bg,
                sink,
                method=b"GET",
                drop=CACHE_FETCH_DROP,
                extra=policy.validators_for(stored),
                key=key,
            )
            await sink.finished()
        except UpstreamError as e:
            log.info("background refresh of %s failed: %s", log_text(bg.target), e)
        except Exception:
            log.exception("background refresh of %s failed", log_text(bg.target))
        finally:
            ctx.refreshing.discard(key)

    ctx.spawn(run())
