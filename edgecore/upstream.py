"""Upstream servers: keep-alive connection pools, one HTTP/1.1 exchange at a time per connection, timeouts,
and the one rendering of the request head sent upstream.

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
- given the key's (Host, target) (keys.request_form), it sends exactly that request line and Host.
Never: touch a client transport; decide cacheability (policy's job).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from typing import Protocol

import httptools

from .config import Config, Upstream
from .errors import EdgeError, UpstreamError, UpstreamIncomplete, UpstreamTimeout
from .fields import HOP_BY_HOP
from .keys import UNKEYED_REQUEST_FIELDS

Headers = list[tuple[bytes, bytes]]
TICK = 0.1  # seconds between timeout checks of the exchanges in flight
VIA = b"1.1 edgecore"

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


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; carries one Exchange at a time."""

    def __init__(self, pool: Pool, upstream: Upstream, idle: list[UpstreamConnection]) -> None:
        self.pool = pool
        self.upstream = upstream
        self.idle = idle  # the pool's idle list of this upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.fast: Plain | None = None  # a plain fetch reading this connection's bytes itself
        self.closed = False
        self.reused = False
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
        self.pool.release(conn, self.keep_alive)
        self.sink.end()

    def fail(self, exc: EdgeError) -> None:
        if self.finished:
            return
        self.finished = True
        self.pool.active.discard(self)
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
    """Keep-alive connections to the configured upstreams, chosen round-robin."""

    def __init__(
        self, cfg: Config, loop: asyncio.AbstractEventLoop, on_request: Callable[[], None] | None = None
    ) -> None:
        if not cfg.upstream:
            raise ValueError("no upstream configured")
        self.cfg = cfg
        self.loop = loop
        # (upstream, its idle connections); a connection knows its own list (no hashing per request)
        self._idle: list[tuple[Upstream, list[UpstreamConnection]]] = [(u, []) for u in cfg.upstream]
        self._rr = itertools.cycle(self._idle)
        self._on_request = on_request
        self.active: set[Timed] = set()  # exchanges and plain fetches in flight, checked by the ticker
        self._ticker = loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        if self.active:
            now = self.loop.time()
            for ex in list(self.active):
                ex.check(now)
        self._ticker = self.loop.call_later(TICK, self._tick)

    async def _connect(self, upstream: Upstream, idle: list[UpstreamConnection]) -> UpstreamConnection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self, upstream, idle), upstream.host, upstream.port
                ),
                self.cfg.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"connect to {upstream.authority} timed out after {self.cfg.connect_timeout:g}s"
            )
        except OSError as e:
            raise UpstreamError(f"cannot connect to {upstream.authority}: {e.strerror or e}")
        return conn

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        upstream, idle = next(self._rr)
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return await self._connect(upstream, idle)

    def take_idle(self) -> UpstreamConnection | None:
        """An idle keep-alive connection to the next upstream, or None (this never connects)."""
        _, idle = next(self._rr)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def send_plain(self, conn: UpstreamConnection, fetch: Plain, head: bytes) -> None:
        """Start a plain fetch on an idle connection taken with take_idle: the request head goes out now and
        the connection's bytes go to fetch.data until it gives the connection back (release) or to an
        Exchange (adopt)."""
        if self._on_request is not None:
            self._on_request()
        conn.fast = fetch
        self.active.add(fetch)
        conn.write(head)

    def adopt(self, conn: UpstreamConnection, method: bytes, sink: Sink, started_at: float) -> Exchange:
        """Hand a plain fetch's connection (its request already sent) to a general Exchange."""
        ex = Exchange(self, conn, method, sink)
        ex.started_at = started_at
        conn.exchange = ex
        self.active.add(ex)
        return ex

    def release(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        idle = conn.idle
        if keep_alive and not conn.closed and len(idle) < self.cfg.upstream_pool_size:
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
        ex.start(head)
        return ex

    def close(self) -> None:
        self._ticker.cancel()
        for _, idle in self._idle:
            for conn in idle:
                conn.close()
            idle.clear()
