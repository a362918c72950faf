"""The admin listener: /healthz, /readyz, /metrics, /stats, POST /purge, POST and DELETE /drain, GET /tenants,
POST /tenants/NAME/revoke and /restore, and the active upstream health checks (health.Health), run here once
for all workers.

Owns: the admin process (forked by the supervisor, its own uvloop loop) and its small HTTP/1.1 server.
It reads the shared counters and the shared cache; it never serves proxy traffic and is bound to its own
address (127.0.0.1:9901 by default), never the proxy port.
Invariants: POST endpoints (and DELETE /drain) need `Authorization: Bearer <admin_token>` when a token is
configured (constant-time comparison); every request gets a complete response with Content-Length; a malformed
request gets 400 and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import platform
import signal
import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__, entry, keys, tenants
from .cache import Cache
from .config import Config, fastpath_disabled
from .health import Health, readiness
from .metrics import (
    C_DRAINING,
    C_STOPPING,
    F_PID,
    F_SERVED,
    F_UPSTREAM,
    F_WAITING,
    EdgeCollector,
    SharedCounters,
    request_hits_misses,
)

MAX_BODY = 64 << 10


class Admin:
    def __init__(self, cfg: Config, cache: Cache, counters: SharedCounters, workers: int) -> None:
        self.cfg = cfg
        self.cache = cache
        self.counters = counters
        self.workers = workers
        self.health = Health(cfg, counters)
        self.key_opts = keys.options_for(cfg)
        self.tenancy = tenants.tenancy_for(cfg)
        self.tenant_state = tenants.State(cfg.tenant_state_file)
        self.registry = CollectorRegistry(auto_describe=False)
        build = (__version__, platform.python_version(), "off" if fastpath_disabled() else "on")
        self.registry.register(
            EdgeCollector(
                counters,
                cache.stats,
                tuple(u.authority for u in cfg.upstream),
                workers=workers,
                build=build,
            )
        )

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
        }

    def handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, bytes, bytes]:
        """-> (status, content type, body)."""
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
        tenant_op = _tenant_op(path)
        if path in (b"/purge", b"/drain") or tenant_op is not None:
            if method != b"POST" and not (path == b"/drain" and method == b"DELETE"):
                return 405, b"text/plain", b"use POST or DELETE\n" if path == b"/drain" else b"use POST\n"
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
            if tenant_op is not None:
                return self.tenant_change(*tenant_op)
            return self.purge(body)
        return 404, b"text/plain", b"not found\n"

    def tenant_change(self, name: str, op: str) -> tuple[int, bytes, bytes]:
        """POST /tenants/NAME/revoke (every entry of it purged, bytes overwritten; nothing stored until
        restored) or /restore, on this node (tenants.revoke / tenants.restore)."""
        if op == "revoke":
            n = tenants.revoke(self.cache, self.tenant_state, name)
            return 200, b"application/json", json.dumps({"revoked": True, "purged": n}).encode() + b"\n"
        tenants.restore(self.cache, self.tenant_state, name)
        return 200, b"application/json", json.dumps({"revoked": False, "purged": 0}).encode() + b"\n"

    def purge(self, body: bytes) -> tuple[int, bytes, bytes]:
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            return 400, b"text/plain", f"invalid JSON: {e}\n".encode()
        given = [k for k in ("url", "prefix", "tag") if k in req]
        if len(given) > 1 or (not given and "tenant" not in req):
            return 400, b"text/plain", b"give exactly one of url, prefix, tag, tenant\n"
        kind = given[0] if given else "tenant"
        val = req[kind]
        if not isinstance(val, str) or not val:
            return 400, b"text/plain", f"{kind} must be a non-empty string\n".encode()
        # a tenant beside url, prefix or tag narrows them to that tenant; alone, it purges the tenant
        narrow = req.get("tenant") if given else None
        if given and "tenant" in req and (not isinstance(narrow, str) or not narrow):
            return 400, b"text/plain", b"tenant must be a non-empty string\n"
        soft = req.get("soft", False)
        if not isinstance(soft, bool):
            return 400, b"text/plain", b"soft must be true or false\n"
        if kind in ("url", "prefix"):
            u = urlsplit(val)
            if u.scheme not in ("http", "https") or not u.netloc:
                return 400, b"text/plain", f"{kind} must be an absolute http:// URL\n".encode()
        n = self.apply_purge(kind, val, narrow, soft)
        return 200, b"application/json", json.dumps({"purged": n}).encode() + b"\n"

    def apply_purge(self, kind: str, val: str, tenant: str | None, soft: bool) -> int:
        """One purge on this node (validated by purge()): how many entries it removed (soft: marked stale).
        Without a tenant, url and prefix cover every tenant's copy once tenancy is on."""
        tid = tenants.tenant_id(tenant) if tenant is not None else 0
        soft_args = (entry.SOFT_PURGE_LAYOUT, entry.SOFT_PURGE_FLAGS, time.time())
        if kind in ("url", "prefix"):
            u = urlsplit(val)
            host = u.netloc.encode()
            target = (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")
            every = self.tenancy.enabled and tenant is None
            tkey = tenant.encode("latin-1") if tenant is not None else b""
            if tenant is None and self.tenancy.enabled:
                tkey = self.tenancy.default.encode("latin-1")
            primary = keys.primary_key(b"GET", host, target, self.key_opts, tenant=tkey)
            if every:
                # the key past its tenant part ("N:name"), the same for every tenant
                rest = primary[len(b"%d:" % len(tkey)) + len(tkey) :]
                if soft:
                    return self.cache.soft_purge(
                        "any-url" if kind == "url" else "any-prefix", 0, rest, *soft_args
                    )
                return self.cache.purge_any_tenant(rest, kind == "url")
            if soft:
                return self.cache.soft_purge(kind, 0, primary, *soft_args)
            if kind == "url":
                # the URL's entry (or Vary marker: its variants become unreachable with it)
                return int(self.cache.delete(primary))
            # primary keys end with the target, so a target prefix is a key prefix
            return self.cache.purge_prefix(primary)
        if kind == "tag":
            tag = Cache.tag_id(val)
            if tenant is not None:
                if soft:
                    return self.cache.soft_purge("tag-tenant", tag, tid.to_bytes(8, "little"), *soft_args)
                return self.cache.purge_tag_tenant(tag, tid)
            if soft:
                return self.cache.soft_purge("tag", tag, b"", *soft_args)
            return self.cache.purge_tag(tag)
        t = tenants.tenant_id(val)
        if soft:
            return self.cache.soft_purge("tenant", t, b"", *soft_args)
        return self.cache.purge_tenant(t)


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


class AdminProtocol(asyncio.Protocol):
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
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
        try:
            status, ctype, body = self.admin.handle(method, self.target, self.headers, bytes(self.body))
        except Exception as e:  # the admin process never dies of one request
            status, ctype, body = 500, b"text/plain", f"internal error: {e}\n".encode()
        self._respond(
            status,
            ctype,
            b"" if method == b"HEAD" else body,
            self.parser.should_keep_alive(),
            length=len(body),
        )
        self._reset()

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
        loop.close()
    return 0
