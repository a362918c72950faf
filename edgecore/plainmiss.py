"""Plain misses fetched by callbacks, without httptools, a task or a sink: a GET/HEAD the C hit path parsed
and found nothing stored for, sent over an idle pooled upstream connection.

Owns: the plain fetch's life: the upstream GET rendered in C (ext/hitpath.pyx upstream_head, the twin of
upstream.request_head), the response head read in C (parse_response, a strict subset of httptools), the
store, and the answer written like a hit; or the hand-over to the general path (a StoreSink on an Exchange of
the same connection) with every byte received so far.
Invariants: nothing is written to the client before the body is complete and stored; the key's flight is
finished exactly once, here or by the general path that took it over; the server is the one the general
path's balancer would choose (Pool.choose, committed only when its idle connection is taken), counted in its
inflight until the fetch ends or an Exchange adopts it; a reused connection that closes before
a whole response head has the general path fetch it again, in the same flight.
Never: decide cacheability (policy), or write anything but through the Client face.
"""

from __future__ import annotations

import logging
import time

from . import cachestatus, policy
from ._hitpath import PlainRequest
from .cachepath import fetch, finish_miss
from .context import Client, Request, log_text
from .errors import EdgeError, UpstreamIncomplete, UpstreamTimeout
from .fields import VIA, connection_tokens
from .flights import Flight
from .metrics import Outcome
from .sinks import FLUSH_AT, StoreSink, stored_form, tags
from .upstream import UpstreamConnection

Headers = list[tuple[bytes, bytes]]
log = logging.getLogger("edgecore.plainmiss")


def start(p: Client, miss: PlainRequest, data: bytes) -> Request | None:
    """The C path stopped at a plain GET/HEAD with nothing stored for its key (`miss`, in `data`): fetch it
    as a PlainMiss when nobody else fetches that key, it is not known uncacheable, and an idle upstream
    connection is at hand. -> the request now in flight, or None: the general path (httptools, a task)
    takes it."""
    ctx = p.ctx
    key = miss.key
    fl = ctx.flights
    if ctx.draining or fl.uncacheable(key):  # (a key being fetched already: try_lead says no)
        return None
    # the server the general path would choose (the same lb and health), chosen once: committed only
    # when this path takes its idle connection; a full server (max_upstream_requests) is the general path's
    pool = ctx.pool
    server = pool.choose(key, commit=False)
    if server is None or pool.full(server) or not pool.has_idle(server):
        return None
    head = ctx.hitpath.upstream_head(data, miss.start, miss.end, p.peer, VIA)
    flight = fl.try_lead(key) if head is not None else None
    if flight is None or head is None:
        return None
    conn = pool.take_idle(server, key)
    assert conn is not None
    r = Request()
    r.method = b"HEAD" if miss.head_only else b"GET"
    r.version = b"1.0" if miss.http10 else b"1.1"
    r.keep_alive = miss.keep != 0
    r.t0 = time.time()
    ctx.pool.send_plain(
        conn, PlainMiss(p, conn, key, flight, r, data[miss.start : miss.end], miss.keep), head
    )
    return r


class PlainMiss:
    """A plain miss fetched without httptools, a task or a sink: a GET/HEAD the C path parsed and found
    nothing stored for, sent over an idle pooled connection (ClientProtocol._plain_miss). The C path reads
    the response head, policy decides, the complete body is stored and then served from the stored value
    like a hit (as StoreSink does for small bodies). What is not plain (the response head, not storable, a
    body over FLUSH_AT, Vary, fields named by a qualified no-cache/private) goes to the general path
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
        proto: Client,
        conn: UpstreamConnection,
        key: bytes,
        flight: Flight,
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
            ctx.pool.answered(self.conn.server, self.last_activity - self.started_at)
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
        if clen > FLUSH_AT or policy.stored_head_differs(fields, ctx.policy_opts.strip_on_store):
            return False
        for n, _ in fields:
            if n == b"vary":
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
        ctx.pool.plain_done(self.conn)
        ctx.pool.release(self.conn, keep_alive and len(buf) == end)  # extra bytes: never reused
        value, birth, expires, flags = stored_form(
            status, reason, fields, buf[hlen:end], fresh, ctx.policy_opts
        )
        stored = ctx.cache.store(self.key, value, birth, expires, flags, tags=tags(fields))
        ctx.flights.finish(self.key, self.flight, True if stored else None)
        r = self.r
        ctx.counters.request(Outcome.MISS, time.time() - r.t0, None, status)  # before the write
        if not p.closing:
            ttl = max(0, int(fresh.lifetime - fresh.initial_age))
            cs = cachestatus.render(fwd=b"uri-miss", fwd_status=status, stored=True, ttl=ttl)
            if not ctx.hitpath.respond(value, p, self.keep if r.keep_alive else 0, r.method == b"HEAD", cs):
                log.error(
                    "unrenderable stored response for %s", log_text(r.target)
                )  # never: we just encoded it
                p.abort()
        p.done(r)

    def _request(self) -> Request:
        """The request, with every field, as the general path's parser would have built it."""
        r = self.r
        r.method, r.target, r.headers = self.proto.ctx.hitpath.request_fields(self.raw, 0, len(self.raw))
        for n, v in r.headers:
            if n == b"host":
                r.host = v.lower()
            elif n == b"connection":
                r.conn_tokens.extend(connection_tokens(v))
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
        p.spawn(r, finish_miss(ctx, self.key, self.flight, sink))
        self.conn.data_received(buf)

    def lost(self) -> None:
        """The connection closed before the response was complete."""
        ctx = self.proto.ctx
        ctx.pool.active.discard(self)
        ctx.pool.plain_done(self.conn)
        if self.head is None:
            # a reused connection the upstream had closed (before a whole response head): the general path
            # fetches again, as it retries a reused connection that fails before the head, and the key's
            # waiters keep waiting for that fetch
            p = self.proto
            r = self._request()
            p.spawn(r, fetch(p, r, self.key, b"uri-miss", self.flight))
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
        pool = self.proto.ctx.pool
        pool.active.discard(self)
        pool.plain_done(self.conn)
        if self.head is None:
            pool.failed(self.conn.server, err)
        self.conn.fast = None
        self.conn.abort()
        self._fail(err)

    def _fail(self, err: EdgeError) -> None:
        p = self.proto
        p.ctx.flights.finish(self.key, self.flight, None)
        r = self._request()
        p.error(r, err)
        p.done(r)
