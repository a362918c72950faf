"""Tenants: who a request belongs to, where its responses may be stored, quotas, revocation.

Owns: `Tenancy` (a worker's tenant policy, built from the config by `tenancy_for`, the one function that
derives it: Context holds it as `ctx.tenancy`), `tenant_id` (a tenant name as the slab cache's 64-bit id),
`start` (the config's quotas and revocations, and the state file's revocations, written into the shared
tenant table at start-up), `apply_change` (what a new config forbids, purged: a region left, revoked = true,
a lowered quota), `revoke` / `restore` (one node's side of a revocation), `describe` (GET /tenants), and
the local state file of revoked tenants.
Invariants:
- without `tenant_header`, `default_tenant` or a `[tenants.NAME]` table there is one tenant and nothing
  changes (`Tenancy.enabled` is False: keys, stores and the C fast paths are exactly as without tenants);
- with tenancy on, every request has a tenant (the `tenant_header` field, case-sensitive, else
  `default_tenant`), its cache key carries the name (keys.primary_key) and every entry it stores carries its
  id, which every lookup checks (a stored tenant that differs from the request's is a miss even when the key
  bytes are equal); the C fast paths are off (they cannot tell tenants apart), so both paths behave the same;
- the revoked set lives in the slab cache's tenant table (shared memory: every worker sees a revocation at
  once) and in the state file (a restart keeps it); a revoked tenant's entries are purged with their bytes
  overwritten, and its responses are passed through, never stored, until restored;
- a tenant without a table has no region limit and no quota (the default policy).
Never: I/O on the request path (the state file is written by the admin process and read at start).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import policy
from .cache import Cache
from .config import Config, TenantPolicy

log = logging.getLogger("edgecore.tenants")

_NO_POLICY = TenantPolicy()


def tenant_id(name: str | bytes) -> int:
    """A tenant name as the slab cache's tenant id: never 0 (0 is "no tenant"), the default tenant "" too.
    A str is taken as UTF-8 (the admin API's names), bytes as they are (a request field's value)."""
    return Cache.tag_id(b"tenant:" + (name.encode() if isinstance(name, str) else bytes(name))) or 1


@dataclass(frozen=True, slots=True)
class Tenancy:
    """A worker's tenant policy (from the config; rebuilt whenever the config is)."""

    enabled: bool
    header: bytes  # lower-case request field naming the tenant (b"" = none)
    default: str
    region: str
    tables: dict[str, TenantPolicy]
    named: set[int] = field(default_factory=set)  # ids this worker has named in the tenant table

    def note(self, cache: Cache, name: str, tid: int) -> None:
        """Name a tenant in the shared tenant table the first time this worker sees it (GET /tenants)."""
        self.named.add(tid)
        cache.tenant_set(tid, name=name.encode("latin-1"), explicit=False)

    def name_of(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The request's tenant: its tenant_header field (case-sensitive; empty = absent), else default."""
        h = self.header
        if h:
            for n, v in headers:
                if n == h:
                    v = v.strip()
                    if v:
                        return v.decode("latin-1")
        return self.default

    def policy_of(self, name: str) -> TenantPolicy:
        """The tenant's table, or the default policy (no region limit, no quota)."""
        return self.tables.get(name, _NO_POLICY)

    def refusal(self, cache: Cache, name: str, tid: int) -> policy.Reason | None:
        """Why this node must pass the tenant's traffic through uncached, or None."""
        p = self.tables.get(name, _NO_POLICY)
        return policy.tenant_refusal(p.regions, self.region, cache.tenant_revoked(tid))


def tenancy_for(cfg: Config) -> Tenancy:
    tables = dict(cfg.tenants)
    return Tenancy(
        enabled=bool(cfg.tenant_header or cfg.default_tenant or tables),
        header=cfg.tenant_header.encode("latin-1"),
        default=cfg.default_tenant,
        region=cfg.region,
        tables=tables,
    )


# ------------------------------------------------------------------ the state file of revoked tenants


def read_state(path: str) -> set[str]:
    """The revoked tenants recorded in the state file (none when there is no file or it is unreadable)."""
    if not path:
        return set()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return {str(n) for n in data.get("revoked", [])}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError) as e:
        log.warning("tenant state file %s unreadable (%s): starting with no recorded revocations", path, e)
        return set()


def write_state(path: str, revoked: Iterable[str]) -> None:
    """Record the revoked set (a temporary file, then renamed: a crash leaves the old or the new)."""
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": 1, "revoked": sorted(revoked)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class State:
    """The revoked names this node knows (the state file's content), kept by the process that changes them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.revoked = read_state(path)

    def set(self, name: str, revoked: bool) -> None:
        if revoked:
            self.revoked.add(name)
        else:
            self.revoked.discard(name)
        self.save()

    def save(self) -> None:
        """Write the file; a failure is logged (the change holds in shared memory until the next restart)."""
        try:
            write_state(self.path, self.revoked)
        except OSError as e:
            log.error("cannot record tenant revocations in %s: %s", self.path, e.strerror or e)


# ------------------------------------------------------------------ one node's side of changes


def revoke(cache: Cache, state: State | None, name: str) -> int:
    """Revoke tenant `name` on this node: flagged in the shared tenant table first (so no worker stores for
    it any more), recorded in the state file, then every entry of it purged with its bytes overwritten.
    Returns how many entries were purged. (The invalidation bus calls this for a "revoke" message.)"""
    tid = tenant_id(name)
    cache.tenant_set(tid, revoked=True, name=name.encode())
    if state is not None:
        state.set(name, True)
    return cache.purge_tenant(tid)


def restore(cache: Cache, state: State | None, name: str) -> None:
    """Undo a revocation on this node: the tenant's responses are stored again."""
    cache.tenant_set(tenant_id(name), revoked=False)
    if state is not None:
        state.set(name, False)


def start(cache: Cache, cfg: Config, state: State | None) -> int:
    """At start-up (before workers fork): the config's quotas and revocations and the state file's
    revocations into the shared tenant table; what they forbid purged. Returns how many were purged."""
    revoked = set(state.revoked if state is not None else ())
    revoked |= {n for n, p in cfg.tenants if p.revoked}
    for name, p in cfg.tenants:
        cache.tenant_set(tenant_id(name), quota=p.quota or 0, name=name.encode("latin-1"))
    if cfg.tenant_header or cfg.default_tenant or cfg.tenants:
        cache.tenant_set(tenant_id(cfg.default_tenant), name=cfg.default_tenant.encode("latin-1"))
    purged = 0
    for name in sorted(revoked):
        purged += revoke(cache, None, name)
    if state is not None and revoked != state.revoked:
        state.revoked = revoked
        state.save()
    return purged


def apply_change(cache: Cache, old_cfg: Config, new_cfg: Config) -> int:
    """A new config's tenant tables, applied at once (reload): quotas set, and every entry the new policy
    forbids purged with its bytes overwritten: a tenant newly revoked, one whose regions no longer include
    this node's region, one over a lowered quota. Returns how many entries were purged."""
    old = tenancy_for(old_cfg)
    new = tenancy_for(new_cfg)
    rows = {r["id"]: r for r in cache.tenant_rows()}
    purged = 0
    for name in sorted(set(old.tables) | set(new.tables)):
        p_old, p_new = old.policy_of(name), new.policy_of(name)
        tid = tenant_id(name)
        cache.tenant_set(tid, quota=p_new.quota or 0)
        if p_new.revoked and not p_old.revoked:
            purged += revoke(cache, None, name)
            continue
        if p_old.revoked and not p_new.revoked:
            cache.tenant_set(tid, revoked=False)
        allowed_before = policy.tenant_refusal(p_old.regions, old.region, False) is None
        allowed_now = policy.tenant_refusal(p_new.regions, new.region, False) is None
        used = rows.get(tid, {}).get("bytes", 0)
        if (allowed_before and not allowed_now) or (p_new.quota is not None and used > p_new.quota):
            purged += cache.purge_tenant(tid)
    return purged


def describe(cache: Cache, tenancy: Tenancy, known: Iterable[str] = ()) -> dict[str, Any]:
    """GET /tenants: every configured tenant and every tenant with entries (those the tenant table holds;
    tenants seen only on stores are named by their id, as "#<id>", when the config does not name them)."""
    rows = {r["id"]: r for r in cache.tenant_rows()}
    # (a row's name is the bytes the name was first seen as: a request field's, or an admin call's UTF-8)
    names = {r["id"]: r["name"].decode(errors="replace") for r in rows.values() if r.get("name") is not None}
    names.update({tenant_id(n): n for n in [*tenancy.tables, *known]})
    if tenancy.enabled:
        names.setdefault(tenant_id(tenancy.default), tenancy.default)
    out: dict[str, Any] = {}
    for tid in dict.fromkeys([*names, *rows]):
        row = rows.get(tid, {})
        name = names.get(tid)
        if name is None:
            if not row.get("items") and not row.get("revoked"):
                continue
            name = f"#{tid}"
        p = tenancy.policy_of(name)
        out[name] = {
            "items": row.get("items", 0),
            "bytes": row.get("bytes", 0),
            "quota_bytes": p.quota,
            "regions": list(p.regions) if p.regions is not None else None,
            "revoked": bool(row.get("revoked", False)),
        }
    return {"tenants": out}
