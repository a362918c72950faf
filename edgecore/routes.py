"""Routes, sans-IO: the `[[routes]]` tables compiled into a matcher; per host and path prefix, overrides of
the key options (keys.KeyOptions) and the policy options (policy.Options).

Owns: what a route matches (a host exact or `*.suffix`, case-insensitive, any port; a path prefix on segment
boundaries), first match wins; the frozen Route each request that matches carries (its key and policy
options, built once here from the global ones with the route's overrides); the C-friendly table of what
routes may match (`c_table`), which the C hit path is handed so that it leaves every such request to the
general path.
Invariants: matching sees the request as the key does: the host normalised (RFC 9110 4.2.3; an
absolute-form target's authority replaces Host, RFC 9112 3.2.2), the path with percent-encoded unreserved
characters decoded and dot segments removed (RFC 3986 6.2.2, 5.2.4), so two requests that share a primary
key share a route (and a refresh, a revalidation or a stale answer uses the route of the request that
stored the entry); `c_table` matches a superset of what `match` matches (a host pattern and a plain byte
prefix of the target), never less.
Never: I/O, clocks, asyncio, or imports from edgecore modules other than keys and policy (config only for
type checking); nothing of a route is cached outside the Routes object (a reload builds a new one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import keys, policy

if TYPE_CHECKING:
    from .config import Config, RouteConfig

__all__ = ["Route", "Routes", "compile_routes", "NO_ROUTES"]


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled [[routes]] table."""

    index: int  # its place in the config (routes[index])
    host: bytes  # b"" any; an exact lower-case name; or, with suffix, b".example" for "*.example"
    suffix: bool
    path_prefix: bytes  # b"" any
    key_opts: keys.KeyOptions  # the key of a request on this route
    policy_opts: policy.Options  # its store / reuse / stale decisions (bypass included)

    def matches(self, host: bytes, path: bytes) -> bool:
        """`host` lower-case without port, `path` normalised origin-form without query."""
        h = self.host
        if h:
            if self.suffix:
                if not (len(host) > len(h) and host.endswith(h)):
                    return False
            elif host != h:
                return False
        p = self.path_prefix
        # on segment boundaries: "/api" is /api, /api/..., never /apix; "/api/" is everything below it
        return not p or path == p or (path.startswith(p) and (p[-1] == 0x2F or path[len(p)] == 0x2F))


class Routes:
    """The compiled routes of a config, in config order; `match` picks the first that matches."""

    __slots__ = ("routes",)

    def __init__(self, routes: tuple[Route, ...] = ()) -> None:
        self.routes = routes

    def __bool__(self) -> bool:
        return bool(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, host: bytes, target: bytes) -> Route | None:
        """The first route matching a request's Host and target (as received), or None."""
        if not self.routes:
            return None
        if target[:1] == b"/" and 0x25 not in target and 0x23 not in target and b"/." not in target:
            # origin-form without "%", "#" or a possible dot segment: normalise_target leaves it as is
            q = target.find(b"?")
            path = target if q == -1 else target[:q]
            h = host.lower()
            if not h or 0x3A in h or h[-1] in _HOST_ODD_LAST or h[0] in _HOST_ODD_LAST:  # ":", ".", OWS
                h = _without_port(keys.normalise_host(h))
        else:
            authority, t = keys.normalise_target(target)
            h = _without_port(keys.normalise_host(host if authority is None else authority))
            path = t.partition(b"?")[0]
        for route in self.routes:
            if route.matches(h, path):
                return route
        return None

    def c_table(self) -> tuple[tuple[bytes, bool, bytes], ...]:
        """(host, suffix, path prefix) per route, for the C hit path: it hands a request whose host (without
        port) and target (a plain byte prefix, before any normalisation it would bail on anyway) fit any row
        to the general path, which matches exactly."""
        return tuple((r.host, r.suffix, r.path_prefix) for r in self.routes)


NO_ROUTES = Routes()
_HOST_ODD_LAST = (0x2E, 0x20, 0x09)  # ".", SP, HTAB: a host ending (or, OWS, starting) so is normalised


def _without_port(h: bytes) -> bytes:
    if h[:1] == b"[":
        end = h.find(b"]")
        return h[: end + 1] if end != -1 else h
    return h.partition(b":")[0]


def compile_route(
    index: int, rc: RouteConfig, key_opts: keys.KeyOptions, policy_opts: policy.Options
) -> Route:
    """One route: the global key and policy options with this route's overrides (a key the table does not
    give keeps the global setting)."""
    k = key_opts
    if rc.key_sort_query is not None:
        k = dataclasses.replace(k, sort_query=rc.key_sort_query)
    if rc.key_drop_params is not None:
        k = dataclasses.replace(k, drop_params=tuple(p.encode() for p in rc.key_drop_params))
    if rc.key_headers:
        k = dataclasses.replace(k, headers=tuple(sorted({n.encode() for n in rc.key_headers})))
    p = dataclasses.replace(
        policy_opts,
        default_ttl=rc.default_ttl,
        max_ttl=rc.max_ttl,
        ignore_client_no_cache=rc.ignore_client_no_cache,
        bypass=rc.bypass,
    )
    if rc.stale_if_error is not None:
        p = dataclasses.replace(p, stale_if_error_default=rc.stale_if_error)
    if rc.stale_while_revalidate is not None:
        p = dataclasses.replace(p, stale_while_revalidate_default=rc.stale_while_revalidate)
    host = rc.host.encode()
    suffix = host.startswith(b"*.")
    return Route(index, host[1:] if suffix else host, suffix, rc.path_prefix.encode(), k, p)


def compile_routes(cfg: Config) -> Routes:
    """cfg.routes as a matcher (Context.routes: the one place a worker keeps them)."""
    if not cfg.routes:
        return NO_ROUTES
    k = keys.options_for(cfg)
    p = policy.options_for(cfg)
    return Routes(tuple(compile_route(i, rc, k, p) for i, rc in enumerate(cfg.routes)))
