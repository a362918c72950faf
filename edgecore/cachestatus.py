"""Cache-Status (RFC 9211), sans-IO: the one renderer of this cache's member, the one spelling of each detail.

Owns: the bytes of the Cache-Status field value edgecore writes (`render`), the detail token of every
policy.Reason (`detail`), the fixed detail tokens the proxy uses for outcomes that are not a Reason
(STALE_WHILE_REVALIDATE, HIT_FOR_MISS, ...) and of the errors it answers (`error_detail`), and ALL_DETAILS,
every detail spelling there is, so that metrics can register one counter per detail up front.
Invariants: one spelling per detail: lower-case, words joined by "-" (Reason.NO_STORE is b"no-store", never
b"no_store"); a value starts with b"edgecore" and its parameters come in one order: hit, fwd, fwd-status,
stored, collapsed, ttl, detail (RFC 9211 2 does not fix an order; this is the one on the wire); fwd is one
of the RFC 9211 2.2 forward reasons, else ValueError; a detail that is not an sf-token is written as an
sf-string (RFC 8941 3.3.3), so the value always parses.
Never: I/O, clocks, asyncio, decisions (what happened is the caller's to say), or imports from edgecore
modules other than errors and policy; never a Cache-Status string built anywhere else.
"""

from __future__ import annotations

from . import errors
from .policy import Reason

__all__ = [
    "FWD_REASONS",
    "STALE_WHILE_REVALIDATE",
    "STALE_IF_ERROR",
    "HIT_FOR_MISS",
    "COLLAPSED_UNCACHEABLE",
    "ONLY_IF_CACHED",
    "REQUEST_NO_STORE",
    "ROUTE_BYPASS",
    "RESIDENCY",
    "REVOKED",
    "UNVERIFIED",
    "PROXY_DETAILS",
    "ERROR_DETAILS",
    "ALL_DETAILS",
    "detail",
    "error_detail",
    "render",
]

# RFC 9211 2.2: the forward reasons.
FWD_REASONS = (b"bypass", b"method", b"uri-miss", b"vary-miss", b"miss", b"request", b"stale", b"partial")


def _spell(name: str) -> bytes:
    """An enum name (NO_STORE) as a detail token (b"no-store")."""
    return name.lower().replace("_", "-").encode("ascii")


_REASON_DETAIL = {r: _spell(r.name) for r in Reason}


def detail(reason: Reason) -> bytes:
    """The detail token of a Reason (RFC 9211 2.8): its name lower-cased, "_" as "-"."""
    return _REASON_DETAIL[reason]


# Details of outcomes that are not a policy.Reason.
STALE_WHILE_REVALIDATE = b"stale-while-revalidate"  # served stale, refreshed in the background (RFC 5861 3)
STALE_IF_ERROR = b"stale-if-error"  # served stale because upstream failed (RFC 5861 4)
HIT_FOR_MISS = b"hit-for-miss"  # the key is remembered as uncacheable: fetched without coalescing
COLLAPSED_UNCACHEABLE = b"collapsed-uncacheable"  # waited on a flight whose response was not stored
ONLY_IF_CACHED = detail(Reason.ONLY_IF_CACHED)  # b"only-if-cached": nothing stored fits (RFC 9111 5.2.1.7)
REQUEST_NO_STORE = detail(Reason.REQUEST_NO_STORE)  # b"request-no-store": passed through (RFC 9111 5.2.1.5)
UNVERIFIED = detail(Reason.UNVERIFIED)  # b"unverified": revalidated, the invalidation lease was out
CONNECTION_LISTED = b"connection-listed"  # Connection removes a field the request has: passed, not stored
ROUTE_BYPASS = detail(Reason.ROUTE_BYPASS)  # b"route-bypass": its route says bypass (fwd=bypass)
RESIDENCY = detail(Reason.RESIDENCY)  # b"residency": the tenant may not be stored in this node's region
REVOKED = detail(Reason.REVOKED)  # b"revoked": the tenant is revoked: passed through, never stored
PROXY_DETAILS = (
    CONNECTION_LISTED,
    STALE_WHILE_REVALIDATE,
    STALE_IF_ERROR,
    HIT_FOR_MISS,
    COLLAPSED_UNCACHEABLE,
    ONLY_IF_CACHED,
    REQUEST_NO_STORE,
)


def _error_types(t: type[errors.EdgeError]) -> list[type[errors.EdgeError]]:
    return [t, *(d for sub in t.__subclasses__() for d in _error_types(sub))]


# The errors the protocol answers with a response of its own: each class spells its own detail (errors.py)
_ERROR_DETAIL = {t: t.detail.encode("ascii") for t in _error_types(errors.EdgeError)}
ERROR_DETAILS = tuple(dict.fromkeys(_ERROR_DETAIL.values()))


def error_detail(error: errors.EdgeError | type[errors.EdgeError]) -> bytes:
    """The detail token of an error answered by the proxy, as its class spells it (UpstreamTimeout ->
    b"upstream-timeout")."""
    t = error if isinstance(error, type) else type(error)
    d = _ERROR_DETAIL.get(t)
    return d if d is not None else t.detail.encode("ascii")


# Every detail spelling, each once: for metrics to register one counter per detail.
ALL_DETAILS = tuple(dict.fromkeys((*_REASON_DETAIL.values(), *PROXY_DETAILS, *ERROR_DETAILS)))

# --------------------------------------------------------------------------------------------------------
# Rendering (RFC 9211 2)
# --------------------------------------------------------------------------------------------------------

_FWD_PARAM = {f: b"; fwd=" + f for f in FWD_REASONS}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~:/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN_FIRST = frozenset(b"*ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _detail_param(d: bytes) -> bytes:
    """b"; detail=" + an sf-token (RFC 8941 3.3.4) when `d` is one, else an sf-string (3.3.3): printable
    ASCII only, backslash and double quote escaped."""
    if d[0] in _TOKEN_FIRST and all(c in _TCHAR for c in d):
        return b"; detail=" + d
    esc = bytes(c for c in d if 0x20 <= c <= 0x7E).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'; detail="' + esc + b'"'


def _render(
    hit: bool,
    fwd: bytes | None,
    fwd_status: int | None,
    stored: bool,
    ttl: int | None,
    collapsed: bool,
    detail: bytes | None,
) -> bytes:
    s = b"edgecore; hit" if hit else b"edgecore"
    if fwd is not None:
        p = _FWD_PARAM.get(fwd)
        if p is None:
            raise ValueError(f"fwd={fwd!r} is not an RFC 9211 forward reason")
        s += p
    if fwd_status is not None:
        s += b"; fwd-status=%d" % fwd_status
    if stored:
        s += b"; stored"
    if collapsed:
        s += b"; collapsed"
    if ttl is not None:
        s += b"; ttl=%d" % ttl
    if detail:
        s += _detail_param(detail)
    return s


# Values repeat (one ttl per max-age, a few statuses): a bounded memo makes the common render one dict
# lookup, about as fast as the b"%"-formatting it replaces. Values are immutable bytes.
_MEMO: dict[tuple[bytes | None, int | None, int | None, bool, bool, bool, bytes | None], bytes] = {}
# a fresh hit's Cache-Status up to its ttl value: the C hit path is handed it and appends the number
HIT_TTL_PREFIX = _render(True, None, None, False, 0, False, None)[:-1]

_MEMO_MAX = 4096


def render(
    *,
    hit: bool = False,
    fwd: bytes | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: int | None = None,
    collapsed: bool = False,
    detail: bytes | None = None,
) -> bytes:
    """The Cache-Status member of this cache (RFC 9211 2), e.g. b"edgecore; hit; ttl=42",
    b"edgecore; fwd=uri-miss; fwd-status=200; stored; ttl=60", b"edgecore; fwd=miss; collapsed; ttl=5",
    b"edgecore; fwd=bypass; detail=request-no-store". hit (2.1), fwd (2.2: one of FWD_REASONS, else
    ValueError), fwd-status (2.3), stored (2.5), collapsed (2.6), ttl (2.4, negative when stale), detail
    (2.8: a token when it is one, else a string)."""
    k = (fwd, fwd_status, ttl, hit, stored, collapsed, detail)
    s = _MEMO.get(k)
    if s is None:
        s = _render(hit, fwd, fwd_status, stored, ttl, collapsed, detail)
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[k] = s
    return s
