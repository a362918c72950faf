"""Invalidations: the one message type of a purge or revocation, its wire form on the bus, and the one
function that applies it to this node's cache.

Owns: `Invalidation` (frozen: kind, value, tenant, soft, origin node), its stream-entry form (`encode`,
`decode`: the versioned message format of README.md "Invalidation bus" and docs/invalidation.md), the
parsing of a POST /purge body (`from_request`), and `apply(cache, msg, scope) -> int`, used both by
admin /purge (this node's own purges, at once) and by the bus reader (every other node's).
Invariants: `decode` raises MalformedMessage (a ValueError) for anything that is not a valid v=1 message, and
never a partial Invalidation; `apply` is the only code that turns an invalidation into cache calls (tenant
narrowing, soft purges, a URL's route's key options, revocation through tenants.revoke/restore). Hook:
`on_revoked_set(names)`, given the revoked set read from the bus (start-up and every reconnect), set by the
admin process.
Never: I/O other than the cache calls, or anything about Redis (bus.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from . import entry, keys, routes, tenants
from .cache import Cache

log = logging.getLogger("edgecore.invalidation")

Kind = Literal["url", "prefix", "tag", "tenant", "revoke", "restore"]
KINDS: tuple[str, ...] = ("url", "prefix", "tag", "tenant", "revoke", "restore")
PURGE_KINDS = ("url", "prefix", "tag", "tenant")  # what POST /purge takes
VERSION = b"1"
MAX_VALUE = 8192


class MalformedMessage(ValueError):
    """A bus entry that is not a valid invalidation message (logged, counted and skipped by the reader)."""


@dataclass(frozen=True, slots=True)
class Invalidation:
    kind: Kind
    value: str
    tenant: str | None = None  # narrows a url/prefix/tag purge to one tenant (None: every tenant)
    soft: bool = False  # mark stale (revalidate) instead of removing
    origin_node: str = ""  # node_id of the publisher ("" for an origin or an application)


def _check(kind: str, value: str) -> None:
    if kind not in KINDS:
        raise MalformedMessage(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if not value:
        raise MalformedMessage(f"{kind} must be a non-empty string")
    if len(value) > MAX_VALUE:
        raise MalformedMessage(f"{kind} is longer than {MAX_VALUE} characters")
    if kind in ("url", "prefix"):
        u = urlsplit(value)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise MalformedMessage(f"{kind} must be an absolute http:// URL")


def from_request(req: Any, origin_node: str) -> Invalidation:
    """A POST /purge body (parsed JSON) -> Invalidation; ValueError with the reason (answered 400)."""
    if not isinstance(req, dict):
        raise ValueError("the body must be a JSON object")
    given = [k for k in PURGE_KINDS if k in req]
    if len(given) == 2 and "tenant" in given:
        given.remove("tenant")  # url/prefix/tag narrowed to one tenant
    if len(given) != 1:
        raise ValueError("give exactly one of url, prefix, tag, tenant")
    kind = given[0]
    val = req[kind]
    if not isinstance(val, str) or not val:
        raise ValueError(f"{kind} must be a non-empty string")
    tenant = req.get("tenant") if kind != "tenant" else None
    if tenant is not None and not isinstance(tenant, str):
        raise ValueError("tenant must be a string")
    soft = req.get("soft", False)
    if not isinstance(soft, bool):
        raise ValueError("soft must be true or false")
    _check(kind, val)
    return Invalidation(kind, val, tenant, soft, origin_node)  # type: ignore[arg-type]


def encode(msg: Invalidation) -> dict[str, str]:
    """The stream entry's fields (XADD field value ...), format v=1."""
    out = {"v": VERSION.decode(), "kind": msg.kind, "value": msg.value}
    if msg.tenant is not None:
        out["tenant"] = msg.tenant
    if msg.soft:
        out["soft"] = "1"
    if msg.origin_node:
        out["node"] = msg.origin_node
    return out


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str | None:
    v = fields.get(name)
    if v is None:
        return None
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"field {name.decode()} is not UTF-8")


def decode(fields: Mapping[bytes, bytes]) -> Invalidation:
    """A stream entry's fields -> Invalidation; MalformedMessage naming what is wrong."""
    if not isinstance(fields, Mapping):
        raise MalformedMessage("not a field map")
    v = fields.get(b"v")
    if v != VERSION:
        raise MalformedMessage("missing v field" if v is None else f"unsupported version v={v!r}")
    kind = _text(fields, b"kind") or ""
    value = _text(fields, b"value") or ""
    _check(kind, value)
    soft_s = fields.get(b"soft", b"0")
    if soft_s not in (b"0", b"1", b"true", b"false"):
        raise MalformedMessage(f"soft={soft_s!r} is not 0 or 1")
    tenant = _text(fields, b"tenant")
    return Invalidation(
        kind,  # type: ignore[arg-type]
        value,
        tenant,
        soft_s in (b"1", b"true"),
        _text(fields, b"node") or "",
    )


@dataclass(slots=True)
class Scope:
    """What applying an invalidation on this node needs beyond the cache: the key options of a URL (its
    route's, else the global ones), the tenancy (tenants.Tenancy) and the revocation state file. The admin
    process keeps one and updates it on reload; the bus reader applies through the same one."""

    key_opts: keys.KeyOptions
    routes: routes.Routes = routes.NO_ROUTES
    tenancy: tenants.Tenancy | None = None
    state: tenants.State | None = None

    def key_opts_of(self, host: bytes, target: bytes) -> keys.KeyOptions:
        route = self.routes.match(host, target)
        return self.key_opts if route is None else route.key_opts


# the revoked set read from the bus (start-up and every reconnect): set by the admin process when it runs one
on_revoked_set: Callable[[set[str]], None] | None = None


def apply(cache: Cache, msg: Invalidation, scope: Scope) -> int:
    """Apply one invalidation to this node's cache -> the entries purged (or marked stale). A revoke purges
    the tenant with its bytes overwritten and stops its storing (tenants.revoke); a restore undoes it."""
    if msg.kind == "revoke":
        return tenants.revoke(cache, scope.state, msg.value)
    if msg.kind == "restore":
        tenants.restore(cache, scope.state, msg.value)
        return 0
    tenant, soft = msg.tenant, msg.soft
    tid = tenants.tenant_id(tenant) if tenant is not None else 0
    soft_args = (entry.SOFT_PURGE_LAYOUT, entry.SOFT_PURGE_FLAGS, time.time())
    tenancy_on = scope.tenancy is not None and scope.tenancy.enabled
    if msg.kind in ("url", "prefix"):
        u = urlsplit(msg.value)
        host = u.netloc.encode()
        target = (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")
        every = tenancy_on and tenant is None  # without a tenant, url and prefix cover every tenant's copy
        tkey = tenant.encode("latin-1") if tenant is not None else b""
        if every:
            assert scope.tenancy is not None
            tkey = scope.tenancy.default.encode("latin-1")
        primary = keys.primary_key(b"GET", host, target, scope.key_opts_of(host, target), tenant=tkey)
        if every:
            # the key past its tenant part ("N:name"), the same for every tenant
            rest = primary[len(b"%d:" % len(tkey)) + len(tkey) :]
            if soft:
                return cache.soft_purge("any-url" if msg.kind == "url" else "any-prefix", 0, rest, *soft_args)
            return cache.purge_any_tenant(rest, msg.kind == "url")
        if soft:
            return cache.soft_purge(msg.kind, 0, primary, *soft_args)
        if msg.kind == "url":
            # the URL's entry (or Vary marker: its variants become unreachable with it)
            return int(cache.delete(primary))
        # primary keys end with the target, so a target prefix is a key prefix
        return cache.purge_prefix(primary)
    if msg.kind == "tag":
        tag = Cache.tag_id(msg.value)
        if tenant is not None:
            if soft:
                return cache.soft_purge("tag-tenant", tag, tid.to_bytes(8, "little"), *soft_args)
            return cache.purge_tag_tenant(tag, tid)
        if soft:
            return cache.soft_purge("tag", tag, b"", *soft_args)
        return cache.purge_tag(tag)
    t = tenants.tenant_id(msg.value)
    if soft:
        return cache.soft_purge("tenant", t, b"", *soft_args)
    return cache.purge_tenant(t)


def flush(cache: Cache) -> int:
    """Drop every entry (a node that cannot prove what it missed): one prefix purge over all keys."""
    return cache.purge_prefix(b"")
