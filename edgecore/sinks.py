"""Sinks: where an upstream response goes. StreamSink streams it to the client; StoreSink also keeps a GET
response's body for the cache, stores it when policy allows and the body completes, and handles the 304 of a
revalidation (RFC 9111 4.3.3, 4.3.4).

Owns: the response head relayed to the client (hop-by-hop and Connection-listed fields removed, RFC 9110
7.6.1; Via and Cache-Status added; framing re-done), the stored form of a response (the storable fields with
our Via, entry-encoded, kept past freshness as policy.retention says) and its purge tags.
Invariants:
- a body that does not complete is never stored, and once bytes went to the client, a failure closes the
  connection (never a short body framed as complete);
- a small storable body is held until complete, stored first and then served like a hit (one rendering of
  the head); a large one is streamed;
- a sink without a client (`proto is None`: a background refresh) only stores, it writes nothing.
Never: decide cacheability itself (policy), or touch a transport (it talks to the Client face).
"""

from __future__ import annotations

import asyncio
import time

from . import cachestatus, entry, keys, policy
from .cache import MAX_TAGS, Cache
from .context import Client, Context, Request
from .errors import EdgeError
from .fields import HOP_BY_HOP, VIA, connection_listed, first, http_date
from .flights import Flight
from .metrics import F_UPSTREAM_ERRORS, Outcome
from .serve import serve_stored
from .upstream import Exchange

Headers = list[tuple[bytes, bytes]]

_REVALIDATED = cachestatus.render(fwd=b"stale", fwd_status=304)
FLUSH_AT = 64 << 10  # pending response bytes that are written without waiting for the end of a read
# response fields never relayed as received: hop-by-hop (RFC 9110 7.6.1), framing (re-done), our own
_RESPONSE_SKIP = HOP_BY_HOP | {b"content-length", b"cache-status"}


def invalidate(ctx: Context, r: Request, status: int, headers: Headers) -> None:
    """After an unsafe method's non-error response: drop what it invalidates (RFC 9111 4.4)."""
    if status >= 400:
        return
    for target in policy.invalidation_targets(r.method, status, r.host, r.target, headers):
        ctx.cache.delete(
            keys.primary_key(b"GET", r.host, target, ctx.target_key_opts(r.host, target), tenant=r.tenant_key)
        )


def stored_form(
    status: int,
    reason: bytes,
    headers: Headers,
    body: bytes,
    fresh: policy.Freshness,
    opts: policy.Options,
) -> tuple[bytes, float, float, int]:
    """(value, birth, expires, cache flags) of a response to store: the storable fields (RFC 9111 3.1; none
    in opts.strip_on_store) with our Via (appended to the response's own, else implied: entry.E_OWN_VIA),
    encoded by entry; kept past freshness for stale-while-revalidate/
    -if-error and opts.stale_keep seconds (config stale_keep) so that it can be served stale on an upstream
    failure or revalidated (policy.retention)."""
    stored_headers = policy.storable_headers(headers, opts.strip_on_store)
    own_via = True
    validators = False
    for i, (n, v) in enumerate(stored_headers):
        if n == b"via":
            stored_headers[i] = (n, v + b", " + VIA)
            own_via = False
        elif n == b"etag" or n == b"last-modified":
            validators = True
    value, birth, fresh_until, flags = entry.encode(status, reason, stored_headers, body, fresh, own_via)
    expires = fresh_until + policy.retention(fresh, validators, time.time(), opts.stale_keep)
    return value, birth, expires, flags


def tags(headers: Headers) -> tuple[int, ...]:
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


def store(
    ctx: Context,
    r: Request,
    key: bytes,
    status: int,
    reason: bytes,
    headers: Headers,
    body: bytes,
    fresh: policy.Freshness,
    vary: tuple[bytes, ...],
) -> bytes | None:
    """Store a complete response policy allowed (at its variant's key when it varies). -> the stored value,
    or None when the cache refused it."""
    value, birth, expires, flags = stored_form(status, reason, headers, body, fresh, ctx.policy_opts_for(r))
    vary = keys.variant_names(vary, ctx.key_opts_for(r))  # a route's key_headers key like Vary names
    if vary:
        key = _variant_key(ctx, r, vary, birth, expires)
    stored = ctx.cache.store(key, value, birth, expires, flags, tenant=r.tenant_id or 0, tags=tags(headers))
    return value if stored else None


def _variant_key(ctx: Context, r: Request, vary: tuple[bytes, ...], birth: float, expires: float) -> bytes:
    """The secondary key of a response (RFC 9111 4.1), under the URL's Vary marker: the current marker's
    generation when it names the same fields, else a new marker (which orphans old variants)."""
    primary = keys.primary_key(b"GET", r.host, r.target, ctx.key_opts_for(r), tenant=r.tenant_key)
    found = ctx.cache.lookup(primary, time.time(), r.tenant_id)
    marker = None
    if found is not None and found[2] == entry.FLAG_VARY:
        gen, names = entry.decode_vary(found[0])
        if names == vary:
            marker = found
    if marker is None or marker[2] < expires:
        value = entry.encode_vary(vary) if marker is None else marker[0]
        ctx.cache.store(primary, value, birth, expires, entry.FLAG_VARY, tenant=r.tenant_id or 0)
        gen, _ = entry.decode_vary(value)
    return keys.secondary_key(primary + b"#" + gen, vary, r.headers)


class StreamSink:
    """Streams an upstream response to the client (head, then body chunks as they come)."""

    def __init__(
        self,
        ctx: Context,
        proto: Client | None,
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
        self.sent = 0  # body bytes given to the client (the access log's "bytes")
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
        self.sent = 0
        if self._done.done():
            self._done = asyncio.get_running_loop().create_future()

    def cache_status(self) -> bytes:
        return cachestatus.render(fwd=self.fwd, fwd_status=self.status, detail=self.detail)

    def interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """Relay a 1xx (RFC 9110 15.2) to an HTTP/1.1 client before the final response; never stored.
        100 is edgecore's own business (it answers Expect itself) and 101 is never asked for."""
        p = self.proto
        if p is None or self.r.version != b"1.1" or status in (100, 101) or self.started or self.out:
            return
        listed = connection_listed(headers)
        fields = b"".join(
            n + b": " + v + b"\r\n" for n, v in headers if n not in HOP_BY_HOP and n not in listed
        )
        p.write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, fields))

    def head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        p = self.proto
        if p is None:
            return
        self._attach(p)
        self._send_head(p, status, reason, headers)

    def _attach(self, p: Client) -> None:
        """The upstream connection now streams to this client: flow control couples the two."""
        up = self.exchange.conn if self.exchange is not None else None
        p.couple(up)

    def _send_head(self, p: Client, status: int, reason: bytes, headers: Headers, extra: bytes = b"") -> None:
        r = self.r
        conn_listed = connection_listed(headers)
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
                parts.append(b"via: " + v + b", " + VIA + b"\r\n")
                continue
            parts.append(n + b": " + v + b"\r\n")
        if not via:
            parts.append(b"via: " + VIA + b"\r\n")
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
        parts.append(r.connection_field())
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.out.append(head)
        self.out_len += len(head)

    def body(self, chunk: bytes) -> None:
        if self.proto is None or self.no_body:
            return
        self.sent += len(chunk)
        if self.chunked_out:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.out.append(chunk)
        self.out_len += len(chunk)
        if self.out_len >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (called after each upstream read, and at the end)."""
        out = self.out
        if out and self.proto is not None:
            self.proto.write(out[0] if len(out) == 1 else b"".join(out))
            self.started = True
            out.clear()
            self.out_len = 0

    def end(self) -> None:
        p = self.proto
        if p is not None:
            p.couple(None)
            p.ctx.counters.request(
                self.outcome, time.time() - self.r.t0, self.detail, self.status or 0
            )  # before the last write
            if p.ctx.access is not None:
                p.ctx.log_response(p.peer, self.r, self.status or 0, self.sent, self.cache_status())
            if self.chunked_out:
                self.out.append(b"0\r\n\r\n")
            self.flush()
            if self.close_delimited:
                p.finish()
        if not self._done.done():
            self._done.set_result(None)

    def failed(self, exc: EdgeError) -> None:
        self.error = exc
        self.out.clear()  # a head not yet written is replaced by an error response
        p = self.proto
        if p is not None:
            p.couple(None)
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
        proto: Client | None,
        r: Request,
        key: bytes,
        fwd: bytes,
        flight: Flight | None,
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
        if policy.serves_stale_on(status) and self.stored is not None:
            if self.proto is None:
                # a background refresh that failed: the stored copy stays as it is (it may still be served
                # stale, RFC 5861 3/4); the error response is neither stored nor relayed
                self.validated = True
                return
            f = entry.freshness(self.stored[1])
            # RFC 5861 4, RFC 9111 4.2.4
            if self.rc is not None and policy.may_serve_stale_on_error(f, self.rc, now):
                self.stale_on_error = self.validated = True
                return
        post = self.r.method == b"POST"
        if post and self.proto is not None:
            invalidate(ctx, self.r, status, headers)  # RFC 9111 4.4, before a store replaces it
        fresh, why = policy.decide_store(
            b"POST" if post else b"GET",
            status,
            self.r.headers,
            headers,
            request_time=self.request_time,
            response_time=now,
            opts=ctx.policy_opts_for(self.r),
            post_target=(self.r.host, self.r.target) if post else None,
        )
        self.vary = (
            (keys.parse_vary([v for n, v in headers if n == b"vary"]) or ()) if fresh is not None else ()
        )
        if fresh is None:
            if not post:
                self.outcome = Outcome.UNCACHEABLE
            self.detail = cachestatus.detail(why) if why is not None else None
            if self.stored is not None and not policy.serves_stale_on(status):
                # (an upstream error is no reason to drop the stored copy: it is what serves the next one)
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
            clen = first(headers, b"content-length")
            self.deferred = clen is not None and not policy.stored_head_differs(
                headers, ctx.policy_opts_for(self.r).strip_on_store
            )
        p = self.proto
        if p is None:
            return
        if self.deferred:
            self._attach(p)
        else:
            super().head(status, reason, headers, keep_alive)

    def cache_status(self) -> bytes:
        f = self.fresh
        if f is None or self.status is None:
            return super().cache_status()
        ttl = max(0, int(f.lifetime - f.initial_age))
        return cachestatus.render(
            fwd=self.fwd, fwd_status=self.status, stored=True, ttl=ttl, detail=self.detail
        )

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
        if self.size >= FLUSH_AT:
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
                p.couple(None)
                now = time.time()
                m = entry.meta(value)
                serve_stored(p, self.r, value, m, now, self.outcome, self.cache_status())
                self.started = True
                if not self._done.done():
                    self._done.set_result(None)
                return
            self._undefer()  # not stored after all (refused): render and send what we have
        super().end()

    def _store(self, body: bytes) -> None:
        assert self.fresh is not None and self.status is not None
        self.stored_value = store(
            self.ctx,
            self.r,
            self.key,
            self.status,
            self.reason_phrase,
            self.headers,
            body,
            self.fresh,
            self.vary,
        )

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
            merged.append((b"date", http_date(now)))
        fresh, why = policy.decide_store(
            b"GET",
            m.status,
            self.r.headers,
            merged,
            request_time=self.request_time,
            response_time=now,
            opts=ctx.policy_opts_for(self.r),
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
                served = policy.storable_headers(merged, ctx.policy_opts_for(self.r).strip_on_store)
                new_value = entry.encode(
                    m.status,
                    entry.reason(value, m),
                    served,
                    body,
                    fresh or entry.freshness(m),
                    own_via=not any(n == b"via" for n, _ in served),
                )[0]
            nm = entry.meta(new_value)
            cs = (
                _REVALIDATED
                if self.detail is None
                else cachestatus.render(fwd=b"stale", fwd_status=304, detail=self.detail)
            )
            serve_stored(p, self.r, new_value, nm, now, Outcome.REVALIDATED, cs, self.detail)
        self.started = True
