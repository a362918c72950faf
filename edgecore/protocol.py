"""The client-facing HTTP/1.1 protocol: the only code that touches client transports.

Owns: the transport, parsing requests (httptools, or the C hit path for fresh plain hits), framing and
smuggling checks, keep-alive and pipelining (responses strictly in request order), request bodies (buffered
with flow control, streamed upstream by the caching flow), flow control both ways, and the one place where an
EdgeError becomes a response (`error`). One request's caching flow is cachepath's; this module shows it the
narrow context.Client face.
Invariants:
- one request is handled at a time per connection; later pipelined requests wait in `queue`;
- a fresh plain hit is answered synchronously inside data_received (no task, no await), and a plain miss
  is fetched by callbacks (plainmiss) unless it turns out to need the general path;
- a response whose body cannot be completed closes the connection: the client never sees a short body
  framed as complete;
- request smuggling is refused: Content-Length with Transfer-Encoding, differing Content-Lengths, a
  Transfer-Encoding that is not chunked, or one in an HTTP/1.0 request (RFC 9112 6.1) get 400 and the
  connection closes; CONNECT gets 405 (not a forward proxy), a target over max_request_line 414, a head
  over max_header_size 431, a Host that is no authority 400: each closes and nothing is forwarded;
- a field name with "_" is dropped (never forwarded, never a Vary input) unless underscores_in_headers;
- a pinned large hit (both paths) is sent straight into the client's socket (write_pinned, Pinned.send)
  only while the transport is open and buffers nothing, so bytes stay in order; the rest goes through it;
- a connection's buffered output is bounded: while the transport's write buffer is above WRITE_HIGH_WATER
  (pause_writing) the client is not read and no further pipelined request is answered, on the C hit path
  (which checks between pipelined hits) and the general path (the request task waits) alike;
- a request head must be complete within client_header_timeout of its first byte (408 and close), however
  steadily it trickles; beyond max_connections the worker's listener stops accepting until below.
- every error response is counted, access-logged (when the log is on) and, for a 4xx refusal, logged at
  info with its reason, in `error`;
Never: decide cacheability or freshness (policy), build keys (keys), or block the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable

import httptools

from . import cachepath, cachestatus, plainmiss
from ._hitpath import PlainRequest
from .cache import Pinned
from .context import POLICY_REQUEST_FIELDS, WRITE_HIGH_WATER, Context, Request, log_text, make_context
from .errors import (
    BadRequest,
    ContentTooLarge,
    EdgeError,
    HeaderTooLarge,
    InternalError,
    MethodNotAllowed,
    RequestTimeout,
    UpstreamError,
    URITooLong,
)
from .fields import connection_tokens
from .metrics import F_BAD_REQUESTS, F_CONNECTIONS, F_OPEN, F_UPSTREAM_ERRORS, Outcome
from .upstream import UpstreamConnection, set_nodelay

__all__ = ["ClientProtocol", "Context", "make_context"]

log = logging.getLogger("edgecore.protocol")

# bytes that cannot be in a Host authority (RFC 3986 3.2.2 reg-name / IP-literal, ":" port): a path, query,
# fragment, userinfo or whitespace there would key one thing and route another
_BAD_HOST = b"/?#@\\ \t"
BODY_HIGH_WATER = 256 << 10  # buffered request body bytes before the client is paused
PIPELINE_MAX = 64  # queued pipelined requests before the client is paused


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
        self.head_started: float | None = None  # loop time of the first byte of a head being parsed
        self.writable: asyncio.Future[None] | None = None  # the request task waits on it while write_paused
        self.fd = -1  # the transport's socket, for pinned large hits sent straight into it (write_pinned)

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.counters.inc(F_CONNECTIONS)
        ctx.counters.set(F_OPEN, len(ctx.connections))
        limit = ctx.cfg.max_connections
        if limit and len(ctx.connections) >= limit and ctx.listener is not None:
            ctx.listener.pause()  # stop accepting until a connection closes
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        set_nodelay(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:  # bytes in the clear only
            self.fd = sock.fileno()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.counters.set(F_OPEN, len(ctx.connections))
        limit = ctx.cfg.max_connections
        if limit and len(ctx.connections) < limit and ctx.listener is not None:
            ctx.listener.resume()
        self._wake_writable()
        up = self.upstream
        if up is not None:
            up.resume_reading()
        for r in (self.active, self.req):
            if r is not None and r.body_waiter is not None and not r.body_waiter.done():
                r.body_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_progress = self.ctx.loop.time()
        if (
            self.req is None
            and self.active is None
            and not self.queue
            and not self.closing
            and not self.write_paused
        ):
            # between messages with nothing in flight: fresh plain hits are answered in C (it stops early
            # when the write buffer fills: the rest waits in the queue, answered once it drains)
            assert self.transport is not None  # data comes only after connection_made
            consumed, close, miss = self.ctx.hitpath.serve(data, self.transport, self.fd)
            if close:
                self.finish()
                return
            if miss is not None and self._plain_miss(miss, data):
                consumed = miss.end
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
        """The write buffer is above WRITE_HIGH_WATER: stop reading the client (and a streaming upstream);
        no further pipelined request is answered until resume_writing."""
        self.write_paused = True
        up = self.upstream
        if up is not None:
            up.pause_reading()
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_progress = self.ctx.loop.time()
        up = self.upstream
        if up is not None:
            up.resume_reading()
        if len(self.queue) < PIPELINE_MAX // 2:
            self.resume_reading()
        self._wake_writable()

    def _wake_writable(self) -> None:
        w = self.writable
        if w is not None:
            self.writable = None
            if not w.done():
                w.set_result(None)

    def check_idle(self, now: float, limit: float) -> None:
        """Called about once a second: a client that sends nothing (between requests or inside a head or
        body) or reads nothing for `limit` seconds is closed."""
        if self.closing:
            return
        started = self.head_started
        if started is not None and now - started >= self.ctx.cfg.client_header_timeout:
            self._header_timeout()
            return
        if now - self.last_progress < limit:
            return
        waiting_for_upstream = self.active is not None and not self.write_paused and self.active.body_done
        if not waiting_for_upstream:
            self.abort()

    def _header_timeout(self) -> None:
        """A head not complete within client_header_timeout (nginx's client_header_timeout): 408 when
        nothing else is in flight on the connection (responses stay in order), then close."""
        self.head_started = None
        self.ctx.counters.inc(F_BAD_REQUESTS)
        if self.active is None and not self.queue:
            r = self.req or Request()
            r.keep_alive = False
            self.req = None
            self.error(
                r, RequestTimeout(f"request head not complete within {self.ctx.cfg.client_header_timeout:g}s")
            )
            self.finish()
        else:
            self.abort()

    def close_if_idle(self) -> None:
        """Close when between requests with nothing in flight (a draining worker's keep-alive clients)."""
        if self.active is None and not self.queue and self.req is None:
            self.finish()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _stop_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self.req = Request()
        self.head_started = self.ctx.loop.time()

    def on_url(self, url: bytes) -> None:
        r = self.req
        assert r is not None
        r.target += url
        r.head_bytes += len(url)
        if len(r.target) > self.ctx.cfg.max_request_line:
            raise URITooLong("request target exceeds max_request_line")  # RFC 9112 3
        if r.head_bytes > self.ctx.cfg.max_header_size:
            raise HeaderTooLarge("request target and header section exceed max_header_size")

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.req
        assert r is not None
        r.head_bytes += len(name) + len(value) + 4
        if r.head_bytes > self.ctx.cfg.max_header_size:
            raise HeaderTooLarge("request header section exceeds max_header_size")
        if 0x5F in name and not self.ctx.cfg.underscores_in_headers:
            return  # "_": CGI/WSGI origins read it as "-" (X_Forwarded_Host): dropped, as nginx does
        name = name.lower()
        value = value.strip()
        r.headers.append((name, value))
        if name == b"host":
            if r.host:
                raise BadRequest("more than one Host field")  # RFC 9112 3.2
            if len(value.translate(None, _BAD_HOST)) != len(value):
                raise BadRequest("Host is not an authority")  # RFC 9110 7.2, RFC 3986 3.2
            r.host = value.lower()
        elif name in POLICY_REQUEST_FIELDS:
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
            r.conn_tokens.extend(connection_tokens(value))

    def on_headers_complete(self) -> None:
        r = self.req
        assert r is not None
        self.head_started = None
        p = self.parser
        r.method = p.get_method()
        r.version = p.get_http_version().encode()
        r.keep_alive = p.should_keep_alive() and not self.ctx.draining
        r.t0 = time.time()
        if r.chunked and r.clen is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")  # RFC 9112 6.3 (smuggling)
        if r.chunked and r.version == b"1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 6.1: faulty framing
        if r.method == b"CONNECT":
            raise MethodNotAllowed("CONNECT: this is not a forward proxy")  # RFC 9110 9.3.6
        if r.version == b"1.1" and not r.host:
            raise BadRequest("HTTP/1.1 request without Host")  # RFC 9112 3.2
        if r.clen is not None and r.clen > self.ctx.cfg.max_body_size:
            raise ContentTooLarge("request body exceeds max_body_size")
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
            raise ContentTooLarge("request body exceeds max_body_size")
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
        self.ctx.spawn(self._run(r))

    def _after(self, r: Request) -> Request | None:
        """r is answered: close the connection, or make the next pipelined request (in order) the active
        one. -> that request, or None when there is none to answer now."""
        if self.closing or not r.keep_alive or self.ctx.draining:
            self.finish()
            self.active = None
            return None
        if not self.queue:
            self.active = None
            return None
        nxt = self.active = self.queue.popleft()
        if len(self.queue) < PIPELINE_MAX // 2:
            self.resume_reading()
        return nxt

    def _plain_miss(self, miss: PlainRequest, data: bytes) -> bool:
        """The C path stopped at a plain miss: fetch it by callbacks (plainmiss) when it can. False: the
        general path (httptools, a task) takes the request."""
        r = plainmiss.start(self, miss, data)
        if r is None:
            return False
        self.active = r
        return True

    async def _run(self, r: Request, first: Awaitable[None] | None = None) -> None:
        """The request task: answers r, then the pipelined requests after it, in order."""
        while True:
            if first is None and self.write_paused and not self.closing:
                # flow control: the client reads nothing; answer the next request once its buffer drains
                if self.writable is None:
                    self.writable = self.ctx.loop.create_future()
                await self.writable
            try:
                if first is not None:
                    aw, first = first, None
                    await aw  # the rest of a request started elsewhere (a plain miss handed over)
                else:
                    await cachepath.handle(self, r)
            except EdgeError as e:
                self.error(r, e)
            except Exception as e:  # a worker never dies of one request
                log.exception("internal error answering %s %s", log_text(r.method), log_text(r.target))
                self.error(r, InternalError(f"internal error: {type(e).__name__}"))
            nxt = self._after(r)
            if nxt is None:
                return
            r = nxt

    def _parse_failed(self, err: EdgeError) -> None:
        self.head_started = None
        self.ctx.counters.inc(F_BAD_REQUESTS)
        self._stop_reading()
        r = self.req or Request()
        self.req = None
        if not r.method and r.target:
            with contextlib.suppress(httptools.HttpParserError):
                r.method = self.parser.get_method()  # for the log lines: the head failed before it was set
        r.error = err
        r.keep_alive = False
        if self.active is None and not self.queue:
            self.error(r, err)
            self.finish()
        else:
            self.queue.append(r)

    # ------------------------------------------------------------------ the Client face (context.Client)
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def writelines(self, parts: tuple[bytes | memoryview, ...]) -> None:
        if self.transport is not None and not self.closing:
            self.transport.writelines(parts)

    def write_pinned(self, prefix: bytes, value: Pinned, start: int) -> None:
        """`prefix`, then the pinned value from `start` (the Python twin of ext/hitpath.pyx _write_pinned):
        sent straight into the socket (Pinned.send, one sendmsg: the kernel copies what it takes during the
        call) only when the transport is open and buffers nothing, so bytes stay in order (an open uvloop
        transport's socket is its own, never a reused descriptor); what the socket did not take goes to the
        transport as views of the shared mapping, pinned until the transport drops them."""
        t = self.transport
        if t is None or self.closing:
            return
        sent = 0
        if self.fd >= 0 and not t.get_write_buffer_size() and not t.is_closing():
            sent = max(0, value.send(self.fd, prefix, start))  # -1, an error: the transport meets it
            if sent >= len(prefix) + len(value) - start:
                return
        if sent < len(prefix):
            t.writelines((prefix[sent:], *value.views(start)))
        else:
            t.writelines(value.views(start + sent - len(prefix)))

    def finish(self) -> None:
        """Close once what is written has been sent."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def couple(self, up: UpstreamConnection | None) -> None:
        """An upstream connection now streams to this client (None: no longer): flow control couples them."""
        self.upstream = up
        if up is not None and self.write_paused:
            up.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closing and not self.write_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def done(self, r: Request) -> None:
        """r was answered outside the request task (a plain miss): go on with the next request."""
        nxt = self._after(r)
        if nxt is not None:
            self._start(nxt)

    def spawn(self, r: Request, rest: Awaitable[None]) -> None:
        """The rest of r (a plain miss handed to the general path) runs in a request task, which then goes
        on with the pipelined requests in order."""
        self.ctx.spawn(self._run(r, first=rest))

    def error(self, r: Request, e: EdgeError) -> None:
        """The one place an EdgeError becomes a response: its own status, reason and Cache-Status detail."""
        detail = cachestatus.error_detail(e)
        self.ctx.counters.request(Outcome.ERROR, time.time() - r.t0 if r.t0 else 0.0, detail, e.status)
        if isinstance(e, UpstreamError):
            self.ctx.counters.inc(F_UPSTREAM_ERRORS)
        if self.closing:
            return
        status = e.status
        if status >= 500:
            # the details (upstream addresses, internals) go to the log, not to the client
            log.info("%d for %s %s: %s", status, log_text(r.method), log_text(r.target), e)
            body = f"{status} {e.reason}\n".encode()
        else:
            log.info(
                "%d refused for %s %s from %s: %s",
                status,
                log_text(r.method),
                log_text(r.target),
                log_text(self.peer),
                e,
            )
            body = f"{status} {e.reason}: {e}\n".encode()
        if status < 500 or status == 505:
            r.keep_alive = False
        cs = cachestatus.render(fwd=b"bypass" if status < 500 else b"miss", detail=detail)
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"cache-status: %s\r\n%s%s\r\n"
            % (
                status,
                e.reason.encode(),
                len(body),
                cs,
                b"".join(n + b": " + v + b"\r\n" for n, v in e.headers),
                r.connection_field(),
            )
        )
        if self.ctx.access is not None:
            self.ctx.log_response(self.peer, r, status, 0 if r.method == b"HEAD" else len(body), cs)
        self.write(head if r.method == b"HEAD" else head + body)
        if not r.keep_alive:
            self.finish()
