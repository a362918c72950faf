"""Invalidations: the one message type of a purge or revocation, its wire form on the bus, and the one
function that applies it to this node's cache.

Owns: `Invalidation` (frozen: kind, value, tenant, soft, origin node), its stream-entry form (`encode`,
`decode`: the versioned message format of README.md "Invalidation bus" and docs/invalidation.md), the
parsing of a POST /purge body (`from_request`), and `apply(cache, msg, key_opts) -> int`, used both by
admin /purge (this node's own purges, at once) and by the bus reader (every other node's).
Invariants: `decode` raises MalformedMessage (a ValueError) for anything that is not a valid v=1 message, and
never a partial Invalidation; `apply` never raises for a valid message (a revoke/restore with no hook
installed is logged and applies nothing; a soft purge with no soft hook is applied as a hard purge, which is
never less safe: the entry is refetched instead of revalidated).
Hooks (filled by edgecore/tenants.py when it is there, else None): `on_revoke(cache, msg) -> int` for
"revoke"/"restore", `on_soft(cache, msg, key_opts) -> int` for soft purges, and `on_revoked_set(names)`,
given the revoked set read from the bus (start-up and every reconnect).
Never: I/O other than the cache calls, or anything about Redis (bus.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from . import keys
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


# hooks (tenants.py): see the module docstring
on_revoke: Callable[[Cache, Invalidation], int] | None = None
on_soft: Callable[[Cache, Invalidation, keys.KeyOptions], int] | None = None
on_revoked_set: Callable[[set[str]], None] | None = None


def apply(cache: Cache, msg: Invalidation, key_opts: keys.KeyOptions) -> int:
    """Apply one invalidation to this node's cache -> the entries purged (or marked stale)."""
    if msg.kind in ("revoke", "restore"):
        if on_revoke is None:
            log.warning(
                "%s of tenant %r: no revocation hook installed here, nothing applied", msg.kind, msg.value
            )
            return 0
        return on_revoke(cache, msg)
    if msg.soft and on_soft is not None:
        return on_soft(cache, msg, key_opts)
        # (no soft purge here: removing is the safe reading of "stale", it is refetched instead)
    if msg.kind in ("url", "prefix"):
        u = urlsplit(msg.value)
        host = u.netloc.encode()
        target = (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")
        primary = keys.primary_key(b"GET", host, target, key_opts)
        if msg.kind == "url":
            # the URL's entry (or Vary marker: its variants become unreachable with it)
            return int(cache.delete(primary))
        # primary keys end with the target, so a target prefix is a key prefix
        return cache.purge_prefix(primary)
    if msg.kind == "tag":
        return cache.purge_tag(Cache.tag_id(msg.value))
    return cache.purge_tenant(Cache.tag_id(msg.value))


def flush(cache: Cache) -> int:
    """Drop every entry (a node that cannot prove what it missed): one prefix purge over all keys."""
    return cache.purge_prefix(b"")
