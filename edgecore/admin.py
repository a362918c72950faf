"""The admin listener: /healthz, /readyz, /metrics, /stats, POST /purge, POST and DELETE /drain, the
active upstream health checks (health.Health), run here once for all workers, and the invalidation bus
(bus.Bus: one Redis client per node, its reader and its lease) when `invalidation_url` is set.

Owns: the admin process (forked by the supervisor, its own uvloop loop) and its small HTTP/1.1 server.
It reads the shared counters and the shared cache; it never serves proxy traffic and is bound to its own
address (127.0.0.1:9901 by default), never the proxy port.
Invariants: POST endpoints (and DELETE /drain) need `Authorization: Bearer <admin_token>` when a token is
configured (constant-time comparison); every request gets a complete response with Content-Length; a malformed
request gets 400 and the connection closes. A purge is applied here at once (invalidation.apply) and, with a
bus, answered only once it is in the stream (`"published": true, "id"`), else 503 within bus.PUBLISH_TIMEOUT
(still applied here); responses go out in request order (reading pauses while a purge is published).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import signal
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import invalidation, keys
from .cache import Cache
from .config import Config
from .health import Health, readiness
from .metrics import (
    C_DRAINING,
    C_STOPPING,
    F_PID,
    F_SERVED,
    F_UPSTREAM,
    F_WAITING,
    BusCollector,
    EdgeCollector,
    SharedCounters,
    request_hits_misses,
)

if TYPE_CHECKING:
    from .bus import Bus

MAX_BODY = 64 << 10
Answer = tuple[int, bytes, bytes]


class Admin:
    def __init__(self, cfg: Config, cache: Cache, counters: SharedCounters, workers: int) -> None:
        self.cfg = cfg
        self.cache = cache
        self.counters = counters
        self.workers = workers
        self.health = Health(cfg, counters)
        self.key_opts = keys.options_for(cfg)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EdgeCollector(counters, cache.stats, tuple(u.authority for u in cfg.upstream)))
        self.bus: Bus | None = None
        if cfg.invalidation_url:
            # (imported here: without a bus the admin process loads no redis, and starts as fast as before)
            from .bus import Bus

            self.bus = Bus(cfg, cache, counters, self.key_opts)
            self.registry.register(BusCollector(self.bus.describe, self.bus.lag))

    def stats(self) -> dict[str, Any]:
        s = self.cache.stats()
        # hits/misses count client requests (answered from cache / fetched upstream for the cache); the
        # slab cache's own counters count lookups (a miss is looked up more than once on its way)
        s["lookup_hits"], s["lookup_misses"] = s.get("hits", 0), s.get("misses", 0)
        s["hits"], s["misses"] = request_hits_misses(self.counters)
        return {
            "cache": s,
            "upstream": {"requests": self.counters.total(F_UPSTREAM), "health": self.health.describe()},
            "workers": {
                "configured": self.workers,
                "ready": self.counters.ready_workers(),
                "pids": self.counters.per_slot(F_PID)[: self.workers],
                "requests": self.counters.per_slot(F_SERVED)[: self.workers],
            },
            "coalescing": {"waiting": self.counters.total(F_WAITING)},
            "draining": bool(self.counters.get_flag(C_DRAINING)),
            **({"invalidation": self.bus.describe()} if self.bus is not None else {}),
        }

    def handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> Answer | Coroutine[Any, Any, Answer]:
        """-> (status, content type, body), or a coroutine giving it (a purge published to the bus)."""
        path = target.split(b"?", 1)[0]
        if path == b"/healthz":
            return 200, b"text/plain", b"ok\n"
        if path == b"/readyz":
            ok, why = readiness(
                workers_ready=self.counters.ready_workers(),
                workers=self.workers,
                draining=bool(self.counters.get_flag(C_DRAINING)),
                upstream_up=self.health.any_up(),
                probed=all(h.probed for h in self.health.upstreams),
                requires_upstream=self.cfg.ready_requires_upstream,
            )
            text = f"{why}\n{self.health.report()}\n"
            if self.bus is not None:
                bus_ok, bus_why = self.bus.readiness()
                if ok and not bus_ok:
                    ok, text = False, f"{bus_why}\n{text}"
                else:
                    text += bus_why + "\n"
            return (200 if ok else 503), b"text/plain", text.encode()
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)
        if path == b"/stats":
            return 200, b"application/json", json.dumps(self.stats(), indent=1).encode() + b"\n"
        if path in (b"/purge", b"/drain"):
            if method != b"POST" and not (path == b"/drain" and method == b"DELETE"):
                return 405, b"text/plain", b"use POST\n" if path == b"/purge" else b"use POST or DELETE\n"
            if self.cfg.admin_token:
                auth = headers.get(b"authorization", b"")
                want = b"Bearer " + self.cfg.admin_token.encode()
                if not hmac.compare_digest(auth, want):
                    return 401, b"text/plain", b"missing or wrong admin token\n"
            elif not _is_loopback(self.cfg.admin[0]):
                # reachable from other hosts and no token: changing state is not open to the world
                return (
                    403,
                    b"text/plain",
                    b"set admin_token to use POST endpoints on a non-loopback address\n",
                )
            if path == b"/drain" and method == b"DELETE":
                if self.counters.get_flag(C_STOPPING):  # (a stopping edgecore stays out of the pool)
                    return 409, b"text/plain", b"stopping: draining cannot be undone\n"
                self.counters.set_flag(C_DRAINING, 0)
                return 200, b"application/json", b'{"draining": false}\n'
            if path == b"/drain":
                self.counters.set_flag(C_DRAINING, 1)
                return 200, b"application/json", b'{"draining": true}\n'
            return self.purge(body)
        return 404, b"text/plain", b"not found\n"

    def purge(self, body: bytes) -> Answer | Coroutine[Any, Any, Answer]:
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            return 400, b"text/plain", f"invalid JSON: {e}\n".encode()
        try:
            msg = invalidation.from_request(req, self.cfg.node_id)
        except ValueError as e:
            return 400, b"text/plain", f"{e}\n".encode()
        n = invalidation.apply(self.cache, msg, self.key_opts)  # here at once, bus or not
        if self.bus is None:
            return 200, b"application/json", json.dumps({"purged": n}).encode() + b"\n"
        return self._publish(msg, {"purged": n})

    async def _publish(self, msg: invalidation.Invalidation, answer: dict[str, Any]) -> Answer:
        """Answer a purge once the bus has it; 503 (applied here all the same) when it cannot take it."""
        from .bus import BusError

        assert self.bus is not None
        try:
            eid = await self.bus.publish(msg)
        except BusError as e:
            answer.update(published=False, error=str(e))
            return 503, b"application/json", json.dumps(answer).encode() + b"\n"
        answer.update(published=True, id=eid)
        return 200, b"application/json", json.dumps(answer).encode() + b"\n"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_PENDING: set[asyncio.Task[None]] = set()  # answers waiting on a purge being published (kept until done)


class AdminProtocol(asyncio.Protocol):
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._tail: asyncio.Task[None] | None = None  # the last answer still waiting (a purge on the bus)
        self._reset()

    def _reset(self) -> None:
        self.target = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError):
            self._respond(400, b"text/plain", b"bad request\n", keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self.target += url
        if len(self.target) > 8192:
            raise ValueError("target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) > 100:
            raise ValueError("too many header fields")
        self.headers[name.lower()] = value.strip()

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise ValueError("body too large")

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        try:
            res = self.admin.handle(method, self.target, self.headers, bytes(self.body))
        except Exception as e:  # the admin process never dies of one request
            res = 500, b"text/plain", f"internal error: {e}\n".encode()
        self._reset()
        if isinstance(res, tuple) and self._tail is None:
            self._answer(method, keep_alive, res)
            return
        # a purge answered once the bus has it: later requests (even pipelined in the same read) are
        # answered after it, in order, and nothing more is read meanwhile
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._in_order(self._tail, res, method, keep_alive))
        self._tail = task
        _PENDING.add(task)
        task.add_done_callback(self._done)

    async def _in_order(
        self,
        prev: asyncio.Task[None] | None,
        res: Answer | Coroutine[Any, Any, Answer],
        method: bytes,
        keep_alive: bool,
    ) -> None:
        if prev is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(prev)
        if not isinstance(res, tuple):
            try:
                res = await res
            except Exception as e:  # the admin process never dies of one request
                res = 500, b"text/plain", f"internal error: {e}\n".encode()
        self._answer(method, keep_alive, res)

    def _done(self, task: asyncio.Task[None]) -> None:
        _PENDING.discard(task)
        if self._tail is task:
            self._tail = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _answer(self, method: bytes, keep_alive: bool, res: Answer) -> None:
        status, ctype, body = res
        self._respond(status, ctype, b"" if method == b"HEAD" else body, keep_alive, length=len(body))

    def _respond(
        self, status: int, ctype: bytes, body: bytes, keep_alive: bool, length: int | None = None
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {
            200: b"OK",
            400: b"Bad Request",
            401: b"Unauthorized",
            403: b"Forbidden",
            404: b"Not Found",
            405: b"Method Not Allowed",
            409: b"Conflict",
            500: b"Internal Server Error",
            503: b"Service Unavailable",
        }.get(status, b"")
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ncache-control: no-store\r\n" % (
            status,
            reason,
            ctype,
            len(body) if length is None else length,
        )
        if not keep_alive:
            head += b"connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if not keep_alive:
            self.transport.close()


def run_admin(cfg: Config, cache: Cache, counters: SharedCounters, sock: socket.socket, workers: int) -> int:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    admin = Admin(cfg, cache, counters, workers)
    server = loop.run_until_complete(loop.create_server(lambda: AdminProtocol(admin), sock=sock))
    prober = loop.create_task(admin.health.run())
    if admin.bus is not None:
        admin.bus.start(loop)
    stop = loop.create_future()

    def on_term() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        loop.run_until_complete(stop)
    finally:
        # cancel the prober and wait for it: a task left pending at close logs "Task was destroyed"
        prober.cancel()
        server.close()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(prober, return_exceptions=True))
        if admin.bus is not None:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(admin.bus.stop())
        loop.close()
    return 0
