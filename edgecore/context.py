"""What one worker's connections share, the parsed request, and the narrow face a connection shows to the
caching flow.

Owns: `Context` (config, cache, counters, upstream pool, flights, key and policy options, the compiled
[[routes]] (`routes`; a request's route picks its key and policy options), the C fast path set up from the
same facts as the Python path, the access log, the worker's listener that max_connections pauses; everything
derived from the config is built by `Context.configure`, at start and on each reload),
`Request` (one parsed request), the lease check's word (`lease_index`: with an invalidation bus, both hit
paths serve a hit only before the deadline bus.py keeps there), and `Client`, the only things the caching
flow (cachepath, sinks, plainmiss) may ask of a client connection.
Invariants: the C fast path gets every fact it shares with Python (entry layout, field lists, thresholds,
histogram bounds) from the Python source at construction, never retyped; EDGECORE_NO_FASTPATH=1 turns it
off (and with it the plain-miss path, which only starts from its miss result), and so does an access log
that is on (the C path answers hits without Python, so it could not log them), and so does tenancy (the C
path does not tell tenants apart: `tenancy`, tenants.Tenancy, built from cfg); `log_response` is the one
call that records a response, made where it is counted (serve, sinks, protocol.error).
Never: touch a transport itself, or decide anything about caching.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from . import cachestatus, entry, keys, policy, routes, tenants
from ._hitpath import HitPath
from .accesslog import AccessLog, open_access_log
from .cache import Cache, Pinned
from .config import Config, fastpath_disabled
from .errors import EdgeError
from .flights import Flights
from .metrics import (
    C_LEASE_UNTIL,
    DURATION_BUCKETS,
    F_DUR_BUCKETS,
    F_DUR_SUM_NS,
    F_SERVED,
    F_STATUS,
    F_UPSTREAM,
    Outcome,
    SlotCounters,
)
from .upstream import FETCH_DROP_FIELDS, Pool, UpstreamConnection

Headers = list[tuple[bytes, bytes]]

# request fields whose presence needs policy or conditional handling: a GET/HEAD carrying one is answered by
# the general path (and the C hit path hands it over untouched)
POLICY_REQUEST_FIELDS = frozenset(
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
# what else sends a request off the C hit path: a body, expectations, and hop-by-hop framing it does not parse
HIT_PATH_BAIL_FIELDS = tuple(
    sorted(
        POLICY_REQUEST_FIELDS
        | {b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"}
    )
)
LARGE_BODY = 32 << 10  # stored responses above this are written as views, not joined into one buffer
# a client transport's write buffer high-water mark: above it the client is not read and no further pipelined
# request is answered (protocol pause_writing; the C hit path checks it between pipelined hits)
WRITE_HIGH_WATER = 256 << 10


def log_text(b: bytes) -> str:
    """Request bytes (a method, a target) for a log line: readable, bounded."""
    return b[:200].decode("latin-1")


class Request:
    """One request as the protocol parsed it (or the C path, for a plain miss)."""

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
        "upstream",
        "up_t0",
        "route",
        "tenant",
        "tenant_key",
        "tenant_id",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: Headers = []
        self.host = b""
        self.version = b"1.1"
        self.keep_alive = True
        self.slow = False  # carries a POLICY_REQUEST_FIELDS member
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
        self.upstream: str | None = None  # host:port of the last upstream asked (the access log)
        self.up_t0 = 0.0  # when that exchange started
        self.route: routes.Route | None = None  # the [[routes]] table it matched (cachepath.handle)
        # its tenant (tenants.Tenancy; set by cachepath.handle when tenancy is on): the name (None: tenancy
        # off, or not known yet), the name as keyed (keys.primary_key), its id in the slab cache
        self.tenant: str | None = None
        self.tenant_key = b""
        self.tenant_id: int | None = None  # None: tenancy off (lookups check no tenant)

    def has_body(self) -> bool:
        return self.chunked or bool(self.clen)

    def connection_field(self) -> bytes:
        """The Connection field line of our response to this request (RFC 9112 9.3, 9.6)."""
        if not self.keep_alive:
            return b"connection: close\r\n"
        if self.version == b"1.0":
            return b"connection: keep-alive\r\n"
        return b""

    def framing(self) -> bytes:
        """The framing field line of this request's body as sent upstream (it is re-chunked when chunked)."""
        if self.chunked:
            return b"transfer-encoding: chunked\r\n"
        if self.clen is not None:
            return b"content-length: %d\r\n" % self.clen
        return b""


class Client(Protocol):
    """What the caching flow may do with the client connection of a request."""

    ctx: Context
    peer: bytes
    closing: bool
    write_paused: bool

    def write(self, data: bytes) -> None: ...
    def writelines(self, parts: tuple[bytes | memoryview, ...]) -> None: ...
    def write_pinned(self, prefix: bytes, value: Pinned, start: int) -> None: ...  # prefix + value[start:]
    def finish(self) -> None: ...  # close once what is written is sent
    def abort(self) -> None: ...
    def couple(self, up: UpstreamConnection | None) -> None: ...  # flow control with a streaming upstream
    def resume_reading(self) -> None: ...
    def error(self, r: Request, e: EdgeError) -> None: ...  # the one place errors become responses
    def done(self, r: Request) -> None: ...  # r was answered outside a task: go on with the next request
    def spawn(self, r: Request, rest: Awaitable[None]) -> None: ...  # the rest of r runs in the request task


class Listener(Protocol):
    """The worker's listening side: max_connections stops accepting (pause) until below it (resume)."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Connection(Protocol):
    """What the worker does with its client connections as a whole (the idle sweep, draining)."""

    def check_idle(self, now: float, limit: float) -> None: ...
    def close_if_idle(self) -> None: ...
    def abort(self) -> None: ...


class Context:
    """Everything a worker's connections share."""

    def __init__(
        self,
        cfg: Config,
        cache: Cache,
        counters: SlotCounters,
        loop: asyncio.AbstractEventLoop,
        pool: Pool | None = None,
        worker: int | None = None,
    ) -> None:
        self.cache = cache
        self.counters = counters
        self.loop = loop
        self.worker = worker  # the worker's index (its access log); None: a context built by a test
        self.connections: set[Connection] = set()
        self._draining = False
        self.refreshing: set[bytes] = set()  # keys with a background refresh in flight
        self.tasks: set[asyncio.Task[None]] = set()  # background tasks, kept until done
        self._sweeper: asyncio.TimerHandle | None = None
        self.listener: Listener | None = None  # the worker's listener (max_connections pauses it)
        self.access: AccessLog | None = None  # the access log (None: off)
        self.cfg = cfg
        self._configured = False
        self.pool: Pool
        self.flights: Flights
        if pool is not None:
            self.pool = pool
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Build everything this worker derives from cfg: at start and again on each reload (server.py), so
        whatever derives its state here is reloaded with it. Kept across a reload: the cache, the counters,
        every client connection, the flights and hit-for-miss memory, the background tasks, and the pooled
        connections of upstreams still configured (Pool takes over the previous pool's servers and its
        exchanges in flight; removed upstreams' connections close once idle). A request in flight keeps
        the pool and options it started with; the next request, on any connection, uses the new ones.
        The restart keys (config.RESTART_KEYS) never change here: the supervisor keeps their running
        values."""
        old = self.cfg if self._configured else None
        self.cfg = cfg
        counters = self.counters
        if old is not None or not hasattr(self, "pool"):  # (unless a pool was given at construction)
            self.pool = Pool(
                cfg,
                self.loop,
                on_request=functools.partial(counters.inc, F_UPSTREAM),
                counters=counters,
                previous=self.pool if old is not None else None,
            )
        if old is None:
            # the cross-worker miss lock lives in the shared cache; one worker has nobody to share it with
            self.flights = Flights(
                self.loop,
                cfg.hit_for_miss_ttl,
                self.cache if cfg.workers != 1 else None,
                lock_ttl=cfg.response_timeout,
            )
        else:
            self.flights.hfm_ttl = cfg.hit_for_miss_ttl
            self.flights.lock_ttl = cfg.response_timeout
        self.key_opts = keys.options_for(cfg)
        self.policy_opts = policy.options_for(cfg)
        self.routes = routes.compile_routes(cfg)  # [[routes]]: the one place a worker keeps them
        # with an invalidation bus: the shared word holding the lease deadline (hits only before it), else -1
        self.lease_index = lease_index(cfg)
        self.tenancy = tenants.tenancy_for(cfg)  # tenants, residency, revocation (tenants.py)
        self.hitpath = make_hitpath(
            cfg, self.cache, counters, self.key_opts, self.routes, self.tenancy.enabled
        )
        self.hitpath.draining = self._draining
        if self.worker is not None and (old is None or old.access_log != cfg.access_log):
            if self.access is not None:
                self.access.close()
            self.access = open_access_log(cfg.access_log, self.loop, self.worker)
        if old is not None and self.listener is not None:
            limit = cfg.max_connections
            if not limit or len(self.connections) < limit:
                self.listener.resume()  # (a raised or removed limit: accept again)
            elif len(self.connections) >= limit:
                self.listener.pause()
        self._configured = True

    def key_opts_for(self, r: Request) -> keys.KeyOptions:
        """The key options of r: its route's, else the global ones."""
        route = r.route
        return self.key_opts if route is None else route.key_opts

    def policy_opts_for(self, r: Request) -> policy.Options:
        """The policy options of r: its route's, else the global ones."""
        route = r.route
        return self.policy_opts if route is None else route.policy_opts

    def target_key_opts(self, host: bytes, target: bytes) -> keys.KeyOptions:
        """The key options of another URL (one an unsafe method invalidates): its own route's."""
        route = self.routes.match(host, target)
        return self.key_opts if route is None else route.key_opts

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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run background work (not a request's own task): the task is kept until it is done."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def log_response(self, peer: bytes, r: Request, status: int, nbytes: int, cache_status: bytes) -> None:
        """One response, to the access log (called only when it is on, where the response is counted)."""
        a = self.access
        if a is not None:
            a.record(
                peer,
                r.method,
                r.host,
                r.target,
                status,
                nbytes,
                r.t0,
                cache_status,
                r.upstream,
                r.up_t0,
                r.tenant,
            )

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.access is not None:
            self.access.close()
        self.pool.close()


def lease_index(cfg: Config) -> int:
    """The index in the shared counters' words of the invalidation lease deadline (epoch microseconds) that
    both hit paths compare their clock with: C_LEASE_UNTIL with a bus, -1 (no check) without one."""
    return C_LEASE_UNTIL if cfg.invalidation_url else -1


def make_hitpath(
    cfg: Config,
    cache: Cache,
    counters: SlotCounters,
    key_opts: keys.KeyOptions,
    route_table: routes.Routes = routes.NO_ROUTES,
    tenancy: bool = False,
) -> HitPath:
    """The C fast path for fresh plain hits, set up to build keys exactly as keys.primary_key does and told
    every fact it shares with Python by that fact's one source; a request any route may match is left to
    the general path (route_table.c_table())."""
    probe = keys.primary_key(b"GET", b"h", b"/", key_opts)
    prefix = probe[: -len(b"1:h/")]
    default_opts = not key_opts.sort_query and not key_opts.drop_params and key_opts.default_ports == (b"80",)
    b = counters.b
    return HitPath(
        cache,
        words=counters.words,
        counter_index=(b + Outcome.HIT, b + F_SERVED, b + F_DUR_SUM_NS, b + F_DUR_BUCKETS, b + F_STATUS),
        bounds=DURATION_BUCKETS,
        max_head=cfg.max_header_size,
        layout=ENTRY_LAYOUT,
        flag_plain=entry.FLAG_PLAIN,
        key_prefix=prefix,
        bail_fields=HIT_PATH_BAIL_FIELDS,
        fetch_drop=FETCH_DROP_FIELDS,
        large_body=LARGE_BODY,
        hit_status=cachestatus.HIT_TTL_PREFIX,
        max_line=cfg.max_request_line,
        underscores=cfg.underscores_in_headers,
        write_high=WRITE_HIGH_WATER,
        implied=entry.IMPLIED,
        routes=route_table.c_table(),
        lease_index=lease_index(cfg),
        # the access log records every response in Python: the C path, which answers hits without Python,
        # is off while it is on (README "Access log": the measured cost)
        enabled=default_opts
        and probe.endswith(b"1:h/")
        and not fastpath_disabled()
        and cfg.access_log == "off"
        # with tenants the key and the lookup carry the tenant, which the C path does not extract: every
        # request takes the general path (tenants.py)
        and not tenancy,
    )


# what the C path reads of a stored entry: META's size and the offsets of the fields a fresh hit needs (the
# status only to count it by class; the eflags for what is implied, entry.IMPLIED)
ENTRY_LAYOUT = (
    entry.M,
    entry.OFF_STATUSLINE_LEN,
    entry.OFF_HEAD_LEN,
    entry.OFF_FRESH_UNTIL,
    entry.OFF_BIRTH,
    entry.OFF_STATUS,
    entry.OFF_EFLAGS,
)


def make_context(
    cfg: Config,
    cache: Cache,
    counters: SlotCounters,
    loop: asyncio.AbstractEventLoop,
    worker: int | None = None,
) -> Context:
    return Context(cfg, cache, counters, loop, worker=worker)
