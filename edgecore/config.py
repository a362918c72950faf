"""Configuration: frozen dataclasses, parsing and validation.

Owns: every tunable, its default, its parser, and the precedence command line > environment
(EDGECORE_<KEY>) > TOML file > default; the [[routes]] tables as RouteConfig (file only; each problem named
routes[i].key, i from 0; routes.py compiles them).
Also owns what the machine or container offers a Config: memory_limit() (cgroup v2 memory.max, v1
memory.limit_in_bytes, else MemTotal) checks cache_size, available_cpus() (sched_getaffinity and the cgroup
cpu.max quota) sizes `workers = 0`; sources() tells where each effective value came from (`edgecore config`).
Also owns the reload diff (reload_diff, RESTART_KEYS): which keys a new Config changes and which of them
only a restart applies.
Invariants: a Config that exists is valid; every problem names the key and the reason; the only I/O here is
reading the TOML file and those /proc and /sys/fs/cgroup files.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, ConfigErrors

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}


def fastpath_disabled() -> bool:
    """EDGECORE_NO_FASTPATH set (to anything but "" or "0"): the C fast paths (fresh hits in HitPath.serve,
    and the plain misses that start from its miss result) are off and the general Python path answers
    everything, as AIOHTTP_NO_EXTENSIONS does for aiohttp. Read when a worker's HitPath is made."""
    return os.environ.get("EDGECORE_NO_FASTPATH", "") not in ("", "0")


def parse_size(value: Any) -> int:
    """'64MiB' -> 67108864; ints pass through. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (use B, KiB, MiB, GiB, KB, MB, GB)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "B").lower()]


def parse_hostport(value: Any) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:80' works too."""
    s = str(value).strip()
    host, sep, port = s.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{s!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{port!r} is not a port number (0-65535)")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    weight: int = 1  # share of the requests under lb = round_robin / consistent_hash ([[upstreams]] tables)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def parse_upstream(value: Any) -> Upstream:
    s = str(value).strip()
    u = urlsplit(s)
    if u.scheme != "http":
        raise ValueError(f"{s!r}: only http://host:port upstreams are supported")
    if not u.hostname:
        raise ValueError(f"{s!r} has no host")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError(f"{s!r}: an upstream is http://host:port, without a path")
    try:
        port = u.port or 80
    except ValueError as e:
        raise ValueError(f"{s!r}: {e}")
    return Upstream(u.hostname, port)


def _parse_upstream_tables(v: Any) -> tuple[Upstream, ...]:
    """[[upstreams]] tables: {url = "http://host:port", weight = N} (weight 1..1000, default 1)."""
    if not isinstance(v, list | tuple):
        raise ValueError("expected [[upstreams]] tables with url and weight")
    out = []
    for i, t in enumerate(v):
        if not isinstance(t, dict) or "url" not in t:
            raise ValueError(f"entry {i + 1}: a table with url (and weight) is expected")
        unknown = set(t) - {"url", "weight"}
        if unknown:
            raise ValueError(f"entry {i + 1}: unknown field {sorted(unknown)[0]!r} (url, weight)")
        u = parse_upstream(t["url"])
        w = t.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 1000:
            raise ValueError(f"entry {i + 1}: weight {w!r} is not an integer in 1..1000")
        out.append(Upstream(u.host, u.port, w))
    return tuple(out)


def _parse_number(
    lo: float, hi: float, what: str, unit: str = "", lo_open: bool = False
) -> Callable[[Any], float]:
    """A parser of numbers in [lo, hi] ((lo, hi] with lo_open), naming `what` it expects and the range."""

    def p(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(f"expected {what}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is not {what}")
        if x > hi or x < lo or (lo_open and x == lo):
            raise ValueError(f"{x} is out of range {'(' if lo_open else '['}{lo:g}, {hi:g}]{unit}")
        return x

    return p


_parse_fraction = _parse_number(0, 1, "a fraction between 0 and 1")
_parse_seconds = _parse_number(0, 86400, "a number of seconds", " seconds", lo_open=True)
_parse_seconds0 = _parse_number(0, 31536000, "a number of seconds (0 = off)", " seconds")


def _parse_check_path(v: Any) -> str:
    s = str(v).strip()
    if s and (not s.startswith("/") or any(c in s for c in " \r\n\t")):
        raise ValueError(f"{s!r} is not a request target (it starts with / and has no spaces)")
    return s


def _parse_int(lo: int, hi: int) -> Callable[[Any], int]:
    def p(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("expected an integer")
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{v!r} is not an integer")
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is not an integer")
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}..{hi}")
        return n

    return p


def _parse_str(v: Any) -> str:
    return str(v)


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{v!r} is not a boolean")


def _parse_params(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, list | tuple) else str(v).split(",")
    out = tuple(str(x).strip() for x in items if str(x).strip())
    for x in out:
        if any(c in x for c in "&=?# "):
            raise ValueError(f"{x!r} is not a query parameter name")
    return out


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One [[routes]] table as configured (routes.compile turns the list into a matcher). None: the key was
    not given (the global setting applies)."""

    host: str = ""  # "" = any host; "api.example" exact; "*.example" any name ending in ".example"
    path_prefix: str = ""  # "" = any path; "/api" matches /api, /api/..., not /apix
    default_ttl: float | None = None
    max_ttl: float | None = None
    stale_if_error: float | None = None
    stale_while_revalidate: float | None = None
    ignore_client_no_cache: bool = False
    bypass: bool = False
    key_sort_query: bool | None = None
    key_drop_params: tuple[str, ...] | None = None
    key_headers: tuple[str, ...] = ()


_HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_FIELD_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def _parse_route_host(v: Any) -> str:
    """A host name, exact ("api.example") or a suffix ("*.example"), lower-cased, without a trailing dot."""
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a host name")
    s = v.strip().lower()
    if s.endswith(".") and len(s) > 1:
        s = s[:-1]
    if s.startswith("[") and s.endswith("]"):  # an IPv6 literal, as Host carries it (RFC 3986 3.2.2)
        try:
            return "[" + ipaddress.IPv6Address(s[1:-1]).compressed + "]"
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv6 address") from None
    name = s[2:] if s.startswith("*.") else s
    if not _HOST_NAME_RE.match(name):
        raise ValueError(f"{v!r} is not a host name (exact, or *.suffix; no port)")
    return s


def _parse_path_prefix(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError(f"{v!r} does not start with /")
    if any(c in v for c in "?#%") or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in v):
        raise ValueError(f"{v!r} is not a plain path (no ?, #, %, spaces or control characters)")
    segs = v.split("/")
    if "." in segs or ".." in segs:
        raise ValueError(f"{v!r} has a . or .. segment")
    return v


def _parse_field_names(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{v!r} is not a list of strings")
    out = tuple(x.strip().lower() for x in v)
    for x in out:
        if not _FIELD_NAME_RE.match(x):
            raise ValueError(f"{x!r} is not a field name")
    return out


def _parse_param_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{v!r} is not a list of strings")
    return _parse_params(v)


def _parse_strict_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return v


_ROUTE_PARSERS: dict[str, Callable[[Any], Any]] = {
    "host": _parse_route_host,
    "path_prefix": _parse_path_prefix,
    "default_ttl": _parse_seconds0,
    "max_ttl": _parse_seconds0,
    "stale_if_error": _parse_seconds0,
    "stale_while_revalidate": _parse_seconds0,
    "ignore_client_no_cache": _parse_strict_bool,
    "bypass": _parse_strict_bool,
    "key_sort_query": _parse_strict_bool,
    "key_drop_params": _parse_param_list,
    "key_headers": _parse_field_names,
}


def _parse_route_tables(v: Any) -> tuple[RouteConfig, ...]:
    """[[routes]] tables (README "Routes"). Every problem is one ConfigError naming routes[i].key (i from 0,
    in file order); raised together as ConfigErrors."""
    if not isinstance(v, list | tuple):
        raise ValueError("expected [[routes]] tables in the config file (there is no environment form)")
    out = []
    problems: list[ConfigError] = []
    for i, t in enumerate(v):
        if not isinstance(t, dict):
            problems.append(ConfigError(f"routes[{i}]", "expected a table"))
            continue
        values: dict[str, Any] = {}
        for k0, x in t.items():
            k = k0.replace("-", "_")
            parser = _ROUTE_PARSERS.get(k)
            if parser is None:
                near = difflib.get_close_matches(k, tuple(_ROUTE_PARSERS), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(ConfigError(f"routes[{i}].{k0}", f"unknown route key{hint}"))
                continue
            try:
                values[k] = parser(x)
            except ValueError as e:
                problems.append(ConfigError(f"routes[{i}].{k0}", str(e)))
        if not problems:
            out.append(RouteConfig(**values))
    if problems:
        raise ConfigErrors(problems)
    return tuple(out)


def _parse_upstreams(v: Any) -> tuple[Upstream, ...]:
    items = v if isinstance(v, list | tuple) else [x for x in str(v).split(",") if x.strip()]
    return tuple(parse_upstream(x) for x in items)


class KeyedValueError(ValueError):
    """A parser's error about a key inside a table (`tenants.NAME.quota`): the ConfigError names that key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """One [tenants.NAME] table (tenants.py applies it): where the tenant's responses may be stored
    (None = anywhere), its byte quota (None = none), revoked."""

    regions: tuple[str, ...] | None = None
    quota: int | None = None
    revoked: bool = False


_TENANT_FIELDS = ("regions", "quota", "revoked")
MAX_TENANT_TABLES = 128  # half the slab cache's tenant table: the other half is for tenants seen on stores


def _parse_tenants(v: Any) -> tuple[tuple[str, TenantPolicy], ...]:
    """[tenants.NAME] tables with regions (list of region names), quota (a size), revoked (bool); names are
    case-sensitive. File only (no environment form). Errors name tenants.NAME.key."""
    if not isinstance(v, dict):
        raise ValueError("expected [tenants.NAME] tables")
    if len(v) > MAX_TENANT_TABLES:
        raise ValueError(f"{len(v)} tenant tables: at most {MAX_TENANT_TABLES}")
    out = []
    for name, t in v.items():
        where = f"tenants.{name}"
        if not isinstance(t, dict):
            raise KeyedValueError(where, "expected a table with regions, quota, revoked")
        if not name or len(name.encode()) > 200 or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in name):
            raise KeyedValueError(where, "a tenant name is 1-200 visible ASCII characters")
        for k in t:
            if k not in _TENANT_FIELDS:
                near = difflib.get_close_matches(k, _TENANT_FIELDS, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise KeyedValueError(f"{where}.{k}", "unknown key" + hint)
        regions = None
        if "regions" in t:
            r = t["regions"]
            if not isinstance(r, list) or not all(isinstance(x, str) and x.strip() for x in r):
                raise KeyedValueError(f"{where}.regions", "expected a list of region names")
            regions = tuple(x.strip() for x in r)
        quota = None
        if "quota" in t:
            try:
                quota = parse_size(t["quota"])
            except ValueError as e:
                raise KeyedValueError(f"{where}.quota", str(e))
            if quota < 1024:
                raise KeyedValueError(f"{where}.quota", f"{quota} bytes is below the minimum of 1KiB")
        revoked = False
        if "revoked" in t:
            if not isinstance(t["revoked"], bool):
                raise KeyedValueError(f"{where}.revoked", f"{t['revoked']!r} is not true or false")
            revoked = t["revoked"]
        out.append((name, TenantPolicy(regions, quota, revoked)))
    return tuple(out)


def _parse_tenant_name(v: Any) -> str:
    """A tenant name: visible ASCII, at most 200 bytes ("" = the default tenant of a single-tenant node)."""
    s = str(v)
    if len(s) > 200 or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in s):
        raise ValueError(f"{v!r} is not a tenant name (visible ASCII, at most 200 characters)")
    return s


def _parse_field_name(v: Any) -> str:
    """A request field name (RFC 9110 5.1: a token), lower-cased; "" = none."""
    s = str(v).strip().lower()
    if s and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", s):
        raise ValueError(f"{v!r} is not a field name")
    return s


def _parse_region(v: Any) -> str:
    s = str(v).strip()
    if len(s) > 64 or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in s):
        raise ValueError(f"{v!r} is not a region name (visible ASCII, at most 64 characters)")
    return s


def _parse_names(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, list | tuple) else str(v).split(",")
    return tuple(str(x).strip().lower() for x in items if str(x).strip())


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    upstream: tuple[Upstream, ...] = ()
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    workers: int = 1
    cache_size: int = 256 << 20
    max_object_size: int = 1 << 20
    connect_timeout: float = 3.0
    response_timeout: float = 30.0  # upstream: request sent -> response head complete
    idle_timeout: float = 30.0  # upstream: max silence while reading a body
    client_timeout: float = 60.0  # client: max silence (keep-alive idle, slow head/body)
    grace_period: float = 10.0  # SIGTERM: how long in-flight requests may still run
    drain_delay: float = 5.0  # SIGTERM: seconds readiness is 503 while still accepting, before grace_period
    max_header_size: int = 16 << 10  # request head bytes -> 431 beyond
    max_body_size: int = 64 << 20  # request body bytes -> 413 beyond
    upstream_pool_size: int = 64  # idle keep-alive connections kept per upstream and worker
    hit_for_miss_ttl: float = 10.0  # how long an uncacheable key skips coalescing
    admin_token: str = ""  # Bearer token for POST admin endpoints ("" = none)
    cdn_cache_control: tuple[str, ...] = ("edgecore-cache-control", "cdn-cache-control")
    key_sort_query: bool = False  # cache key: query parameters sorted by name
    key_drop_params: tuple[str, ...] = ()  # cache key: query parameters left out (e.g. utm_source)
    log_level: str = "info"
    underscores_in_headers: bool = False  # request fields with "_" in their name: dropped unless true
    max_request_line: int = 8 << 10  # request target bytes -> 414 beyond
    cache_set_cookie: str = (
        "pass"  # responses with Set-Cookie: "pass" (not stored) | "strip" (stored without)
    )
    cache_client_errors: str = (
        "explicit"  # 400/413/414/431: "explicit" (only with explicit freshness) | "never"
    )
    # upstream selection and health (README "Running it"); `upstreams` ([[upstreams]] tables) is folded into
    # `upstream` by build(), after the --upstream servers
    upstreams: tuple[Upstream, ...] = ()
    lb: str = "round_robin"  # round_robin (smooth weighted) | least_request (P2C) | consistent_hash
    health_check_path: str = ""  # "" = TCP connect probe; else HTTP GET of this path (2xx/3xx = healthy)
    health_check_interval: float = 2.0
    health_check_timeout: float = 2.0
    healthy_threshold: int = 2  # consecutive good probes before a down server is up again
    unhealthy_threshold: int = 2  # consecutive bad probes before an up server is down
    max_fails: int = 1  # failures within fail_timeout that eject a server (per worker); 0 = never
    fail_timeout: float = 10.0
    retries: int = 1  # retries on another server of a bodiless idempotent request (connect error, reset)
    retry_budget: float = 0.2  # retries at most this fraction of requests (per worker, 10 s window)
    max_upstream_requests: int = 1024  # in flight per server (all workers); beyond it 503 + Retry-After
    ready_requires_upstream: bool = False  # /readyz 503 while no upstream is up
    # availability (stale by operator policy, clients)
    stale_if_error: float = 60.0  # serve stale this long past freshness when the upstream fails (0 = only
    # when the response or request asks for it)
    stale_while_revalidate: float = 0.0  # default when the response names none
    stale_keep: float = 600.0  # entries kept this long past expiry (stale-if-error, revalidation)
    client_header_timeout: float = 10.0  # client: deadline for a whole request head
    max_connections: int = 0  # client connections per worker (0 = unlimited); beyond it, stop accepting
    access_log: str = "off"  # off | stdout | stderr | a file path (accesslog.py)
    log_format: str = "text"  # process log: text | json
    routes: tuple[RouteConfig, ...] = ()  # [[routes]] tables, first match wins (routes.py)
    # restart and upgrade (README "Upgrading without losing the cache"): the arena's file ("auto" = a file on
    # /dev/shm named after the listen address when its port is fixed, "none" = an anonymous mapping, as
    # before), and the control socket of a running edgecore to take the listeners and cache over from
    cache_file: str = "auto"
    upgrade_from: str = ""
    # tenants and residency (tenants.py; README "Tenants")
    tenant_header: str = ""  # request field naming the tenant ("" = one tenant, default_tenant)
    default_tenant: str = ""  # the tenant of a request without tenant_header
    region: str = ""  # this node's region (a tenant's `regions` say where it may be stored)
    tenants: tuple[tuple[str, TenantPolicy], ...] = ()  # [tenants.NAME] tables (file only)
    tenant_state_file: str = ""  # where revocations are recorded across restarts ("" = not recorded)
    # nodes and the invalidation bus (bus.py, docs/invalidation.md)
    node_id: str = field(default_factory=socket.gethostname)  # unique among the nodes on one stream
    invalidation_url: str = ""  # redis://host:port/db; "" = this node alone, no bus
    invalidation_stream: str = "edgecore:invalidations"  # the stream's key, used verbatim
    invalidation_retention: float = 86400.0  # seconds of history the publisher keeps in the stream
    invalidation_lease: float = 1.0  # hits only within this many seconds of confirming the stream's end
    invalidation_state: str = ""  # file keeping the last applied stream id across restarts ("" = none)


# key -> parser; the dataclass field of the same name holds the parsed value
LB_POLICIES = ("round_robin", "least_request", "consistent_hash")
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "listen": parse_hostport,
    "upstream": _parse_upstreams,
    "admin": parse_hostport,
    "workers": _parse_int(0, 256),
    "cache_size": parse_size,
    "max_object_size": parse_size,
    "connect_timeout": _parse_seconds,
    "response_timeout": _parse_seconds,
    "idle_timeout": _parse_seconds,
    "client_timeout": _parse_seconds,
    "grace_period": _parse_seconds,
    "drain_delay": _parse_seconds0,
    "max_header_size": parse_size,
    "max_body_size": parse_size,
    "upstream_pool_size": _parse_int(0, 100000),
    "hit_for_miss_ttl": _parse_seconds,
    "admin_token": _parse_str,
    "cdn_cache_control": _parse_names,
    "key_sort_query": _parse_bool,
    "key_drop_params": _parse_params,
    "log_level": lambda v: _choice(v, ("debug", "info", "warning", "error")),
    "underscores_in_headers": _parse_bool,
    "max_request_line": parse_size,
    "cache_set_cookie": lambda v: _choice(v, ("pass", "strip")),
    "cache_client_errors": lambda v: _choice(v, ("explicit", "never")),
    "upstreams": _parse_upstream_tables,
    "lb": lambda v: _choice(v, LB_POLICIES),
    "health_check_path": _parse_check_path,
    "health_check_interval": _parse_seconds,
    "health_check_timeout": _parse_seconds,
    "healthy_threshold": _parse_int(1, 100),
    "unhealthy_threshold": _parse_int(1, 100),
    "max_fails": _parse_int(0, 1000),
    "fail_timeout": _parse_seconds,
    "retries": _parse_int(0, 10),
    "retry_budget": _parse_fraction,
    "max_upstream_requests": _parse_int(1, 1000000),
    "ready_requires_upstream": _parse_bool,
    "stale_if_error": _parse_seconds0,
    "stale_while_revalidate": _parse_seconds0,
    "stale_keep": _parse_seconds0,
    "client_header_timeout": _parse_seconds,
    "max_connections": _parse_int(0, 1_000_000),
    "access_log": lambda v: _parse_access_log(v),
    "log_format": lambda v: _choice(v, ("text", "json")),
    "routes": lambda v: _parse_route_tables(v),
    "cache_file": lambda v: _parse_cache_file(v),
    "upgrade_from": lambda v: _parse_upgrade_from(v),
    "tenant_header": _parse_field_name,
    "default_tenant": lambda v: _parse_tenant_name(v),
    "region": _parse_region,
    "tenants": _parse_tenants,
    "tenant_state_file": lambda v: _parse_state_file(v),
    "node_id": lambda v: _parse_node_id(v),
    "invalidation_url": lambda v: _parse_redis_url(v),
    "invalidation_stream": lambda v: _parse_stream(v),
    "invalidation_retention": _parse_number(1, 31536000, "a number of seconds", " seconds"),
    "invalidation_lease": _parse_number(0.05, 3600, "a number of seconds", " seconds"),
    "invalidation_state": lambda v: _parse_state_file(v),
}
KEYS = tuple(_PARSERS)
FILE_ONLY = frozenset(("tenants",))  # keys with no EDGECORE_<KEY> environment form


def _parse_access_log(v: Any) -> str:
    """off | stdout | stderr | a file path in a folder that exists."""
    if v is False:
        return "off"
    s = str(v)
    if s.lower() in ("off", "stdout", "stderr"):
        return s.lower()
    if not s or s.lower() in ("true", "on") or v is True:
        raise ValueError(f"{v!r} is not off, stdout, stderr or a file path")
    folder = os.path.dirname(os.path.abspath(s))
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder} does not exist")
    return s


def _parse_cache_file(v: Any) -> str:
    """auto | none | a file path in a folder that exists (a tmpfs such as /dev/shm keeps it in memory)."""
    if v is False:
        return "none"
    s = str(v).strip()
    if s.lower() in ("auto", "none", "off"):
        return "none" if s.lower() == "off" else s.lower()
    if not s or v is True:
        raise ValueError(f"{v!r} is not auto, none or a file path")
    folder = os.path.dirname(os.path.abspath(s))
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder} does not exist")
    if os.path.isdir(s):
        raise ValueError(f"{s} is a folder, not a file")
    return s


def _parse_upgrade_from(v: Any) -> str:
    """A running edgecore's control socket (its cache file's path + ".ctl"), or "" (none)."""
    s = str(v).strip()
    if s and not os.path.exists(s):
        raise ValueError(f"no control socket at {s} (is the edgecore to upgrade from running?)")
    return s


def cache_file_path(cfg: Config) -> str | None:
    """The cache file a Config asks for: None for an anonymous mapping ("none", or "auto" with port 0 or
    without /dev/shm); "auto" is /dev/shm/edgecore-<host>-<port>.cache."""
    if cfg.cache_file == "none":
        return None
    if cfg.cache_file != "auto":
        return cfg.cache_file
    host, port = cfg.listen
    if port == 0 or not os.path.isdir("/dev/shm"):
        return None
    return f"/dev/shm/edgecore-{host.replace(':', '_') or 'any'}-{port}.cache"


def control_socket_path(cache_file: str) -> str:
    """Where a running edgecore offers its listeners and cache to its successor (serve --upgrade-from)."""
    return cache_file + ".ctl"


def _parse_node_id(v: Any) -> str:
    s = str(v).strip()
    if not s or len(s) > 200 or any(not c.isprintable() or c.isspace() for c in s):
        raise ValueError(f"{v!r} is not a node id (1-200 printable characters, no spaces)")
    return s


def _parse_redis_url(v: Any) -> str:
    """ "" (no bus) or redis://host:port/db (port default 6379, db default 0)."""
    s = str(v).strip()
    if not s:
        return ""
    u = urlsplit(s)
    if u.scheme != "redis" or not u.hostname:
        raise ValueError(f"{s!r} is not redis://host:port/db")
    try:
        _ = u.port
    except ValueError as e:
        raise ValueError(f"{s!r}: {e}")
    db = u.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{s!r}: the database {db!r} is not a number")
    if u.query or u.fragment:
        raise ValueError(f"{s!r}: no query or fragment (redis://host:port/db)")
    return s


def _parse_stream(v: Any) -> str:
    s = str(v)
    if not s or len(s) > 512:
        raise ValueError("must be a non-empty stream key of at most 512 bytes")
    return s


def _parse_state_file(v: Any) -> str:
    """A file path in a folder that exists ("" = none)."""
    s = str(v)
    if s:
        folder = os.path.dirname(os.path.abspath(s))
        if not os.path.isdir(folder):
            raise ValueError(f"folder {folder} does not exist")
    return s


def _choice(v: Any, choices: tuple[str, ...]) -> str:
    s = str(v).lower()
    if s not in choices:
        raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
    return s


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys may use '-' or '_'. Raises ConfigErrors naming the file on failure."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigErrors([ConfigError("config", f"cannot read {path}: {e.strerror}")])
    except tomllib.TOMLDecodeError as e:
        raise ConfigErrors([ConfigError("config", f"{path} is not valid TOML: {e}")])
    return {k.replace("-", "_"): v for k, v in data.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        if key in FILE_ONLY:
            continue
        v = environ.get("EDGECORE_" + key.upper())
        if v is not None:
            out[key] = v
    return out


def build(
    file_values: Mapping[str, Any] | None = None,
    env_values: Mapping[str, Any] | None = None,
    cli_values: Mapping[str, Any] | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """Merge the layers (cli > env > file > default), parse and validate every key.

    Raises ConfigErrors listing every problem, each naming its key.
    """
    merged: dict[str, Any] = {}
    problems: list[ConfigError] = []
    for layer in (file_values or {}, env_values or {}, cli_values or {}):
        for k, v in layer.items():
            if v is None:
                continue
            if k not in _PARSERS:
                problems.append(ConfigError(k, "unknown key" + _did_you_mean(k)))
                continue
            merged[k] = v
    values: dict[str, Any] = {}
    for k, v in merged.items():
        try:
            values[k] = _PARSERS[k](v)
        except KeyedValueError as e:
            problems.append(ConfigError(e.key, str(e)))
        except ValueError as e:
            problems.append(ConfigError(k, str(e)))
        except ConfigErrors as e:  # a list of tables ([[routes]]): each problem names its own key
            problems.extend(e.problems)
    cfg_fields = {f.name for f in dataclasses.fields(Config)}
    assert set(_PARSERS) <= cfg_fields
    bad = {p.key for p in problems}
    if "upstreams" in bad:
        bad.add("upstream")  # (its servers are not all known: "at least one" would mislead)
    if "upstreams" in values and "upstream" not in bad:
        values["upstream"] = tuple(values.get("upstream", ())) + values["upstreams"]
    problems.extend(p for p in _validate(values, require_upstream) if p.key not in bad)
    if problems:
        raise ConfigErrors(problems)
    return Config(**values)


def _validate(v: dict[str, Any], require_upstream: bool) -> list[ConfigError]:
    d = Config()
    out = []
    if require_upstream and not v.get("upstream"):
        out.append(ConfigError("upstream", "at least one http://host:port upstream is required"))
    seen: set[str] = set()
    for u in v.get("upstream", ()):
        if u.authority in seen:
            out.append(ConfigError("upstream", f"{u.authority} is listed twice (give it a weight instead)"))
        seen.add(u.authority)
    cache_size = v.get("cache_size", d.cache_size)
    mos = v.get("max_object_size", d.max_object_size)
    if cache_size < 1 << 20:
        out.append(ConfigError("cache_size", f"{cache_size} bytes is below the minimum of 1MiB"))
    limit, what = memory_limit()
    if limit and cache_size > limit:
        out.append(ConfigError("cache_size", f"{cache_size} bytes is more than the {limit} bytes of {what}"))
    if mos < 1024:
        out.append(ConfigError("max_object_size", "must be at least 1KiB"))
    elif mos > cache_size // 8:
        out.append(
            ConfigError("max_object_size", f"{mos} bytes is more than 1/8 of cache_size ({cache_size})")
        )
    if v.get("listen", d.listen) == v.get("admin", d.admin) and v.get("listen", d.listen)[1] != 0:
        out.append(ConfigError("admin", "must not be the proxy listener's address"))
    if v.get("max_header_size", d.max_header_size) < 1024:
        out.append(ConfigError("max_header_size", "must be at least 1KiB"))
    if v.get("max_request_line", d.max_request_line) < 256:
        out.append(ConfigError("max_request_line", "must be at least 256B"))
    lease = v.get("invalidation_lease", d.invalidation_lease)
    retention = v.get("invalidation_retention", d.invalidation_retention)
    if lease >= retention:
        out.append(
            ConfigError(
                "invalidation_lease",
                f"{lease:g} s must be shorter than invalidation_retention ({retention:g} s)",
            )
        )
    return out


def load(
    config_path: str | None,
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """The full precedence chain used by the CLI."""
    env = os.environ if environ is None else environ
    path = config_path or env.get("EDGECORE_CONFIG")
    file_values = read_file(path) if path else {}
    return build(file_values, from_env(env), cli_values, require_upstream=require_upstream)


# keys a running edgecore cannot change: its sockets, its processes and its shared memory are made once,
# before the fork (a reload reports them and keeps their running values; a restart applies them);
# max_object_size too: the slab cache's size classes are cut for it when the arena is made
RESTART_KEYS = ("listen", "admin", "workers", "cache_size", "max_object_size", "cache_file", "upgrade_from")


@dataclass(frozen=True, slots=True)
class ReloadDiff:
    """What a reload changes: `changed` the keys whose value differs (config order), `restart_required` those
    of them that only a restart applies, `applied` the Config to run: the new one with the restart keys kept
    at their running values."""

    changed: tuple[str, ...]
    restart_required: tuple[str, ...]
    applied: Config


def reload_diff(running: Config, new: Config) -> ReloadDiff:
    """The reload diff of two valid Configs (the one running, the one just loaded). `upstreams` (the
    [[upstreams]] tables, already folded into `upstream`) is reported as itself when its tables changed."""
    changed = tuple(
        f.name for f in dataclasses.fields(Config) if getattr(running, f.name) != getattr(new, f.name)
    )
    restart = tuple(k for k in changed if k in RESTART_KEYS)
    applied = dataclasses.replace(new, **{k: getattr(running, k) for k in restart})
    return ReloadDiff(changed, restart, applied)


def _did_you_mean(key: str) -> str:
    near = difflib.get_close_matches(key, KEYS, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_dirs(root: str, controller: str = "") -> list[str]:
    """This process's cgroup folder and its ancestors (innermost first), then the mount root: cgroup v2 (the
    unified "0::" line) when controller is "", else the v1 hierarchy holding that controller."""
    out = []
    mount = root + "/sys/fs/cgroup" + (f"/{controller}" if controller else "")
    for line in (_read(root + "/proc/self/cgroup") or "").splitlines():
        ident, _, rest = line.partition(":")
        names, _, rel = rest.partition(":")
        if (controller == "" and ident == "0" and names == "") or (
            controller and controller in names.split(",")
        ):
            parts = [x for x in rel.strip().split("/") if x]
            for i in range(len(parts), 0, -1):
                out.append(mount + "/" + "/".join(parts[:i]))
    out.append(mount)
    return out


def _smallest(paths: list[str], below: int) -> int:
    """The smallest integer in those files that is below `below` (v1 "unlimited" is a huge number), or 0."""
    best = 0
    for path in paths:
        v = _read(path)
        if v and v.isdigit() and 0 < int(v) < below and (not best or int(v) < best):
            best = int(v)
    return best


def memory_limit(root: str = "") -> tuple[int, str]:
    """(bytes, where from) of the memory this process may use: the smallest cgroup v2 memory.max on its path,
    else the smallest cgroup v1 memory.limit_in_bytes, else /proc/meminfo MemTotal; (0, "") when none is
    readable."""
    total = 0
    for line in (_read(root + "/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    huge = total or 1 << 62
    v2 = _smallest([d + "/memory.max" for d in _cgroup_dirs(root)], huge)
    if v2:
        return v2, "the cgroup memory limit (memory.max)"
    v1 = _smallest([d + "/memory.limit_in_bytes" for d in _cgroup_dirs(root, "memory")], huge)
    if v1:
        return v1, "the cgroup memory limit (memory.limit_in_bytes)"
    if total:
        return total, "the machine's memory (MemTotal)"
    return 0, ""


def available_cpus(root: str = "", affinity: int | None = None) -> int:
    """CPUs this process may use (`workers = 0`): the CPUs in its affinity mask, capped by the cgroup CPU
    quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us; rounded up) of its cgroup or an ancestor;
    at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    n = max(1, affinity)
    quotas = []
    for d in _cgroup_dirs(root):
        v = (_read(d + "/cpu.max") or "").split()
        if len(v) == 2:
            quotas.append((v[0], v[1]))
    for d in _cgroup_dirs(root, "cpu"):
        quotas.append((_read(d + "/cpu.cfs_quota_us") or "", _read(d + "/cpu.cfs_period_us") or ""))
    for quota, period in quotas:
        if quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    return n


def sources(
    file_values: Mapping[str, Any], env_values: Mapping[str, Any], cli_values: Mapping[str, Any]
) -> dict[str, str]:
    """key -> where its effective value came from: cli, env, file or default (precedence as build())."""
    out = {}
    for k in KEYS:
        out[k] = next(
            (
                n
                for n, layer in (("cli", cli_values), ("env", env_values), ("file", file_values))
                if k in layer
            ),
            "default",
        )
    return out
