"""The admin listener: /healthz, /readyz, /metrics, /stats, POST /purge, POST and DELETE /drain, POST /reload,
GET /tenants, POST /tenants/NAME/revoke and /restore, the active upstream health checks (health.Health), run
here once for all workers, and the invalidation bus (bus.Bus: one Redis client per node, its reader and its
lease) when `invalidation_url` is set.

Owns: the admin process (forked by the supervisor, its own uvloop loop) and its small HTTP/1.1 server.
It reads the shared counters and the shared cache; it never serves proxy traffic and is bound to its own
address (127.0.0.1:9901 by default), never the proxy port.
POST /reload is not done here: it asks the supervisor (control.py), which reloads as on SIGHUP, and answers
once every process has applied it; the admin process applies a reload like a worker (Admin.configure).
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
import logging
import platform
import signal
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__, control, invalidation, keys, routes, tenants
from .accesslog import apply_process_log
from .cache import Cache
from .config import Config, fastpath_disabled
from .health import Health, readiness
from .metrics import (
    C_DRAINING,
    C_GENERATION,
    C_RELOADS_ERROR,
    C_RELOADS_OK,
    C_STOPPING,
    F_PID,
    F_SERVED,
    F_UPSTREAM,
    F_WAITING,
    U_DOWN,
    U_PROBED,
    BusCollector,
    EdgeCollector,
    SharedCounters,
    request_hits_misses,
)

if TYPE_CHECKING:
    from .bus import Bus

MAX_BODY = 64 << 10
log = logging.getLogger("edgecore")


RELOAD_TIMEOUT = (
    30.0  # seconds POST /reload waits for the supervisor's answer (it waits 10 s for the workers)
)

Answer = tuple[int, bytes, bytes]


class Admin:
    def __init__(self, cfg: Config, cache: Cache, counters: SharedCounters, workers: int) -> None:
        self.cfg = cfg
        self.cache = cache
        self.counters = counters
        self.workers = workers
        self.health = Health(cfg, counters)
        self.key_opts = keys.options_for(cfg)
        self.routes = routes.compile_routes(cfg)  # a URL's key is built with its route's key options
        self.tenancy = tenants.tenancy_for(cfg)
        self.tenant_state = tenants.State(cfg.tenant_state_file)
        self.registry = CollectorRegistry(auto_describe=False)
        build = (__version__, platform.python_version(), "off" if fastpath_disabled() else "on")
        self.collector = EdgeCollector(
            counters,
            cache.stats,
            tuple(u.authority for u in cfg.upstream),
            workers=workers,
            build=build,
        )
        self.registry.register(self.collector)
        # what applying a purge or a revocation needs (invalidation.apply), here and for the bus's messages
        self.scope = invalidation.Scope(self.key_opts, self.routes, self.tenancy, self.tenant_state)
        self.bus: Bus | None = None
        if cfg.invalidation_url:
            # (imported here: without a bus the admin process loads no redis, and starts as fast as before)
            from .bus import Bus

            self.bus = Bus(cfg, cache, counters, self.scope)
            invalidation.on_revoked_set = self._revoked_on_the_bus
            self.registry.register(BusCollector(self.bus.describe, self.bus.lag))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.prober: asyncio.Task[None] | None = None
        self._old_probers: set[asyncio.Task[None]] = set()  # cancelled by a reload, until they are done
        self.channel: control.ChildChannel | None = None  # to the supervisor (reloads); None: a test's admin
        self._reloads: dict[int, asyncio.Future[dict[str, Any]]] = {}  # request id -> its answer
        self._next_reload = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.prober = loop.create_task(self.health.run())

    async def stop(self) -> None:
        # cancel the prober and wait for it: a task left pending at close logs "Task was destroyed"
        tasks = [t for t in (self.prober, *self._old_probers) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def configure(self, cfg: Config) -> None:
        """A reload: everything the admin process derives from cfg (the token, key options, the health
        checks, the metrics' upstream list). The checks restart with the new list at once; an upstream
        still configured keeps its state (its up/down and counts), a new one starts not probed."""
        old = {h.upstream.authority: h for h in self.health.upstreams}
        self.cfg = cfg
        self.key_opts = keys.options_for(cfg)
        self.routes = routes.compile_routes(cfg)
        self.tenancy = tenants.tenancy_for(cfg)
        if cfg.tenant_state_file != self.tenant_state.path:
            self.tenant_state = tenants.State(cfg.tenant_state_file)
        sc = self.scope  # (the bus reader holds the same one)
        sc.key_opts, sc.routes, sc.tenancy, sc.state = (
            self.key_opts,
            self.routes,
            self.tenancy,
            self.tenant_state,
        )
        health = Health(cfg, self.counters)
        c = self.counters
        for i, h in enumerate(health.upstreams):
            prev = old.get(h.upstream.authority)
            if prev is not None:
                prev.upstream = h.upstream
                health.upstreams[i] = prev
            else:
                b = c.block_of(h.upstream.authority, i)
                if b is not None:  # (a block it held before it was removed: no stale state)
                    c.words[c.upstream_word(b, U_DOWN)] = 0
                    c.words[c.upstream_word(b, U_PROBED)] = 0
        self.health = health
        self.collector.upstreams = tuple(u.authority for u in cfg.upstream)
        if self.loop is not None:
            if self.prober is not None:
                old_prober = self.prober
                old_prober.cancel()
                self._old_probers.add(old_prober)
                old_prober.add_done_callback(self._old_probers.discard)
            self.prober = self.loop.create_task(self.health.run())

    def on_control(self, msg: tuple[Any, ...]) -> None:
        """A message from the supervisor: a config to apply (acknowledged), or the answer to a reload."""
        if msg[0] == "config":
            _, gen, cfg = msg[:3]
            assert self.channel is not None
            try:
                self.configure(cfg)
                apply_process_log(cfg.log_format, cfg.log_level)
            except Exception:
                log.exception("admin could not apply config generation %d", gen)
                self.channel.send(control.ACK_FAILED, gen)
                return
            self.channel.send(control.ACK_OK, gen)
        elif msg[0] == "result":
            fut = self._reloads.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])

    async def reload(self) -> tuple[int, bytes, bytes]:
        """POST /reload: asks the supervisor (the one reload, as SIGHUP) and answers with its outcome."""
        if self.channel is None or self.loop is None:
            return 503, b"text/plain", b"reload is not available in this process\n"
        self._next_reload += 1
        rid = self._next_reload
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._reloads[rid] = fut
        self.channel.send(control.RELOAD_REQUEST, rid)
        try:
            answer = await asyncio.wait_for(fut, RELOAD_TIMEOUT)
        except TimeoutError:
            self._reloads.pop(rid, None)
            return 503, b"text/plain", b"the supervisor did not answer the reload in time\n"
        if not answer.get("reloaded"):
            return 422, b"application/json", json.dumps({"errors": answer["errors"]}).encode() + b"\n"
        return 200, b"application/json", json.dumps(answer).encode() + b"\n"

    def authorize(self, headers: dict[bytes, bytes]) -> tuple[int, bytes, bytes] | None:
        """The refusal of a state-changing request (POST, DELETE), or None when it may go on."""
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
        return None

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
            "reloads": {
                "generation": self.counters.get_flag(C_GENERATION),
                "ok": self.counters.get_flag(C_RELOADS_OK),
                "error": self.counters.get_flag(C_RELOADS_ERROR),
            },
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
        if path == b"/tenants":
            if method not in (b"GET", b"HEAD"):
                return 405, b"text/plain", b"use GET\n"
            doc = tenants.describe(self.cache, self.tenancy, self.tenant_state.revoked)
            return 200, b"application/json", json.dumps(doc, indent=1).encode() + b"\n"
        if path == b"/reload":
            # the supervisor reloads (as on SIGHUP) and answers once every process has applied it; requests
            # pipelined behind it are answered after it, in order (AdminProtocol)
            if method != b"POST":
                return 405, b"text/plain", b"use POST\n"
            refused = self.authorize(headers)
            return refused if refused is not None else self.reload()
        tenant_op = _tenant_op(path)
        if path in (b"/purge", b"/drain") or tenant_op is not None:
            if method != b"POST" and not (path == b"/drain" and method == b"DELETE"):
                return 405, b"text/plain", b"use POST or DELETE\n" if path == b"/drain" else b"use POST\n"
            refused = self.authorize(headers)
            if refused is not None:
                return refused
            if path == b"/drain" and method == b"DELETE":
                if self.counters.get_flag(C_STOPPING):  # (a stopping edgecore stays out of the pool)
                    return 409, b"text/plain", b"stopping: draining cannot be undone\n"
                self.counters.set_flag(C_DRAINING, 0)
                return 200, b"application/json", b'{"draining": false}\n'
            if path == b"/drain":
                self.counters.set_flag(C_DRAINING, 1)
                return 200, b"application/json", b'{"draining": true}\n'
            if tenant_op is not None:
                return self.tenant_change(*tenant_op)
            return self.purge(body)
        return 404, b"text/plain", b"not found\n"

    def tenant_change(self, name: str, op: str) -> Answer | Coroutine[Any, Any, Answer]:
        """POST /tenants/NAME/revoke (every entry of it purged, bytes overwritten; nothing stored until
        restored) or /restore: on this node at once (invalidation.apply: tenants.revoke / restore) and, with
        a bus, on every node (published; the revoked set also kept in Redis beside the stream)."""
        msg = invalidation.Invalidation(op, name, origin_node=self.cfg.node_id)  # type: ignore[arg-type]
        n = invalidation.apply(self.cache, msg, self.scope)
        answer = {"revoked": op == "revoke", "purged": n}
        if self.bus is None:
            return 200, b"application/json", json.dumps(answer).encode() + b"\n"
        return self._publish(msg, answer)

    def _revoked_on_the_bus(self, names: set[str]) -> None:
        """The revoked set read from the bus (start-up, every reconnect): each tenant in it not yet revoked
        here is revoked now (a revocation made while this node was away)."""
        for name in sorted(names - self.tenant_state.revoked):
            n = tenants.revoke(self.cache, self.tenant_state, name)
            log.warning("tenant %r is revoked on the bus: revoked here too (%d entries purged)", name, n)

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
        n = invalidation.apply(self.cache, msg, self.scope)  # here at once, bus or not
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


def _tenant_op(path: bytes) -> tuple[str, str] | None:
    """(NAME, "revoke" | "restore") of /tenants/NAME/revoke or /restore (NAME percent-decoded), else None."""
    parts = path.split(b"/")
    if len(parts) != 4 or parts[1] != b"tenants" or parts[3] not in (b"revoke", b"restore") or not parts[2]:
        return None
    return unquote(parts[2].decode("latin-1")), parts[3].decode()


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
        req = (method, self.target, self.headers, bytes(self.body))
        self._reset()
        if self._tail is None:
            res = self._handle(req)
            if isinstance(res, tuple):
                self._answer(method, keep_alive, res)
                return
        else:
            res = None  # handled in its turn: after the answers before it (a reload applied, a purge in)
        # an answer that waits (a purge until the bus has it, a reload until every process applied it):
        # later requests, even pipelined in the same read, are handled and answered after it, in order,
        # and nothing more is read meanwhile
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._in_order(self._tail, req, res, keep_alive))
        self._tail = task
        _PENDING.add(task)
        task.add_done_callback(self._done)

    def _handle(
        self, req: tuple[bytes, bytes, dict[bytes, bytes], bytes]
    ) -> Answer | Coroutine[Any, Any, Answer]:
        try:
            return self.admin.handle(*req)
        except Exception as e:  # the admin process never dies of one request
            return 500, b"text/plain", f"internal error: {e}\n".encode()

    async def _in_order(
        self,
        prev: asyncio.Task[None] | None,
        req: tuple[bytes, bytes, dict[bytes, bytes], bytes],
        res: Answer | Coroutine[Any, Any, Answer] | None,
        keep_alive: bool,
    ) -> None:
        if prev is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(prev)
        if res is None:
            res = self._handle(req)
        if not isinstance(res, tuple):
            try:
                res = await res
            except Exception as e:  # the admin process never dies of one request
                res = 500, b"text/plain", f"internal error: {e}\n".encode()
        self._answer(req[0], keep_alive, res)

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
            422: b"Unprocessable Content",
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


def run_admin(
    cfg: Config,
    cache: Cache,
    counters: SharedCounters,
    sock: socket.socket,
    workers: int,
    chan: tuple[int, int, int] | None = None,
) -> int:
    """The admin process; `chan`: its end of the control channel (server.py), for reloads."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    admin = Admin(cfg, cache, counters, workers)
    if chan is not None:
        admin.channel = control.ChildChannel(loop, chan[0], chan[1], admin.on_control)
    admin.start(loop)  # (before the first request: /reload needs the loop)
    server = loop.run_until_complete(loop.create_server(lambda: AdminProtocol(admin), sock=sock))
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
        server.close()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(admin.stop())
        if admin.bus is not None:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(admin.bus.stop())
        loop.close()
    return 0
