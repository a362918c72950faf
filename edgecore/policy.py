"""HTTP caching decisions, sans-IO: storable? fresh for how long? reusable for this request? stale allowed?
kept for how long?

Standards: RFC 9111 (HTTP Caching), RFC 5861 (stale-while-revalidate, stale-if-error), RFC 9213 (targeted
cache control), RFC 9110 9.3.3 (POST responses), 8.7 (Content-Location).

Owns: every store / reuse / stale / retention decision: the store decision (including the object size limit
and Vary: *) and the Freshness record kept beside a stored response; the reuse decision; serving stale on
error (which statuses, which windows); how long past its freshness an entry is kept; whether the stored head
differs from the one this client gets; the invalidation lease (decide_lease: no reuse without the origin
past it, Reason.UNVERIFIED); validators for revalidation; field updates from a 304 or a HEAD;
invalidation after unsafe methods; Age; whether a tenant may be stored on this node at all (tenant_refusal:
residency, revocation). Field syntax (Cache-Control, targeted fields, dates, entity tags)
is fields.py's; client conditionals and ranges are conditional.py's; Cache-Status is cachestatus.py's.
Per-client responses are not shared: a Set-Cookie response is not stored (SET_COOKIE) unless the options
say "strip" (stored without the field, Options.strip_on_store); a 400/413/414/431 (a response about the
request, not the resource) is stored only with explicit freshness, never with cache_client_errors = "never"
(CLIENT_ERROR; the CPDoS class of attacks).
Routes ([[routes]], routes.py) decide through the Options of the request's route: default_ttl in place of
the heuristic, max_ttl capping how long a response stays fresh, their own stale defaults,
ignore_client_no_cache (parse_request), bypass (ROUTE_BYPASS).
Invariants: every refusal to store or reuse is a named Reason (cachestatus spells it for Cache-Status and
metrics); times are plain floats (seconds since the epoch) passed in by the caller; a Freshness holds only
floats and bools; when in doubt the answer is "do not store" / "go upstream".
Never: I/O, reading a clock, asyncio, or imports from edgecore modules other than errors, fields and keys
(config only for type checking); never a regex on the per-request path (parse_request, decide_use,
current_age).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from .fields import (
    HOP_BY_HOP,
    MEMO_MAX_LEN,
    Directives,
    Headers,
    cache_control,
    cache_control_line,
    connection_tokens,
    etag_parts,
    etag_strong_match,
    etag_weak_match,
    first,
    parse_http_date,
    parse_targeted,
    split_list,
)
from .keys import normalise_host, parse_vary, primary_key

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "Reason",
    "Options",
    "Freshness",
    "RequestControl",
    "Use",
    "DELTA_MAX",
    "HEURISTIC_STATUSES",
    "ERROR_STATUSES",
    "STALE_KEEP",
    "DEFAULT_MAX_OBJECT_SIZE",
    "options_for",
    "decide_store",
    "current_age",
    "storable_headers",
    "stored_head_differs",
    "retention",
    "serves_stale_on",
    "parse_request",
    "decide_use",
    "may_serve_stale_on_error",
    "validators_for",
    "merge_304",
    "matches_304",
    "head_update",
    "invalidation_targets",
    "content_location_is_target",
]


class Reason(enum.Enum):
    """Why a response is not stored, or a stored response not reused as is. cachestatus.detail(reason) is its
    one spelling in Cache-Status detail and metrics (the name, lower-cased, "_" as "-")."""

    # storing (RFC 9111 3)
    METHOD = enum.auto()  # request method not cacheable here (only GET is stored; HEAD updates, 4.3.5)
    STATUS = enum.auto()  # status not final, a 304, or not heuristically cacheable without explicit freshness
    PARTIAL = enum.auto()  # a 206: never stored as if it were the full response
    NO_STORE = enum.auto()  # response no-store (5.2.2.5)
    PRIVATE = enum.auto()  # response private, shared cache (5.2.2.7)
    AUTHORIZATION = enum.auto()  # request had Authorization and nothing allows sharing (3.5)
    NO_FRESHNESS = enum.auto()  # no explicit or heuristic freshness and nothing to revalidate with
    VARY_STAR = enum.auto()  # Vary: * (or an invalid Vary member): can never be matched (4.1)
    MUST_UNDERSTAND = enum.auto()  # must-understand with a status code not understood (5.2.2.3)
    INCOMPLETE = enum.auto()  # body shorter/longer than Content-Length (3.3)
    TOO_LARGE = enum.auto()  # over the configured maximum object size
    REQUEST_NO_STORE = enum.auto()  # request no-store (5.2.1.5)
    SET_COOKIE = enum.auto()  # the response sets a cookie: meant for one client (cache_set_cookie = "pass")
    CLIENT_ERROR = enum.auto()  # 400/413/414/431 without explicit freshness, or cache_client_errors = "never"
    RESIDENCY = enum.auto()  # the tenant's regions do not include this node's region (tenant_refusal)
    REVOKED = enum.auto()  # the tenant is revoked: passed through, never stored (tenant_refusal)
    # reusing (RFC 9111 4, 5.2.1; RFC 9110 13)
    REQUEST_NO_CACHE = enum.auto()  # request no-cache, or Pragma: no-cache alone (5.2.1.4, 5.4)
    REQUEST_MAX_AGE = enum.auto()  # older than the request max-age (5.2.1.1)
    REQUEST_MIN_FRESH = enum.auto()  # not fresh for long enough for the request min-fresh (5.2.1.3)
    STALE = enum.auto()  # stale (or stale on arrival with nothing to revalidate with)
    NO_CACHE = enum.auto()  # response no-cache: always revalidate (5.2.2.4)
    MUST_REVALIDATE = enum.auto()  # stale and must-revalidate, proxy-revalidate, s-maxage (5.2.2.2, 5.2.2.8)
    ONLY_IF_CACHED = enum.auto()  # request only-if-cached and nothing fits: 504 (5.2.1.7)
    # routes ([[routes]] tables: the options of the route a request is on)
    ROUTE_BYPASS = enum.auto()  # the route says bypass: neither looked up nor stored, not coalesced

    # this node has not confirmed within its lease that it read the invalidation stream to its end: what it
    # holds may have been purged elsewhere, so it is validated before use (bus.py, docs/invalidation.md)
    UNVERIFIED = enum.auto()


def tenant_refusal(regions: tuple[str, ...] | None, region: str, revoked: bool) -> Reason | None:
    """Whether this node may store (or serve from its cache) a tenant's responses: not while the tenant is
    revoked (REVOKED), nor on a node whose region its `regions` leave out (RESIDENCY; None = anywhere). A
    refusal means pass-through: neither looked up nor stored (RFC 9111 3 makes storing the cache's choice;
    Cache-Status fwd=bypass, RFC 9211 2.2). Revocation is checked first: it is the stronger statement."""
    if revoked:
        return Reason.REVOKED
    if regions is not None and region not in regions:
        return Reason.RESIDENCY
    return None


class Use(enum.Enum):
    """What to do with a stored response for this request (decide_use)."""

    FRESH = enum.auto()  # serve it
    STALE = enum.auto()  # serve it although stale: the client allowed it (max-stale)
    STALE_REVALIDATE = enum.auto()  # serve it now and refresh in the background (RFC 5861 3), one per key
    VALIDATE = enum.auto()  # go upstream, conditionally when validators_for() gives any
    ONLY_IF_CACHED_FAIL = enum.auto()  # answer 504 without going upstream (5.2.1.7)


DEFAULT_MAX_OBJECT_SIZE = 1 << 20  # config.max_object_size's default


@dataclass(frozen=True, slots=True)
class Options:
    shared: bool = True  # a shared cache (s-maxage, proxy-revalidate, private, Authorization apply)
    # RFC 9213 targeted fields, in precedence order; the first valid one replaces Cache-Control and Expires.
    targeted_fields: tuple[bytes, ...] = (b"edgecore-cache-control", b"cdn-cache-control")
    heuristic_fraction: float = 0.1  # of (Date - Last-Modified), RFC 9111 4.2.2
    heuristic_max: float = 86400.0  # cap on a heuristic lifetime
    stale_if_error_default: float = 0.0  # window to serve stale on upstream errors without stale-if-error
    stale_while_revalidate_default: float = 0.0  # RFC 5861 3 window for responses that name none
    stale_keep: float = 600.0  # seconds an entry is kept past its freshness (serve stale, revalidate)
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE  # bodies above this are not stored (TOO_LARGE)
    cache_set_cookie: str = "pass"  # "pass": Set-Cookie responses not stored; "strip": stored without it
    cache_client_errors: str = "explicit"  # CLIENT_ERROR_STATUSES: "explicit" freshness only, or "never"
    # a route's overrides (routes.compile_route; the global options have none)
    default_ttl: float | None = None  # lifetime of a response without explicit freshness (not heuristic)
    max_ttl: float | None = None  # seconds at most a response stays fresh here after it is received
    ignore_client_no_cache: bool = False  # request no-cache, max-age=0, Pragma: no-cache do not force a fetch
    bypass: bool = False  # neither looked up nor stored (ROUTE_BYPASS)

    @property
    def strip_on_store(self) -> tuple[bytes, ...]:
        """Response fields left out of the stored copy (storable_headers' `strip`)."""
        return STRIP_SET_COOKIE if self.cache_set_cookie == "strip" else ()


DEFAULT_OPTIONS = Options()
STRIP_SET_COOKIE = (b"set-cookie",)
# Statuses that describe the request rather than the resource (RFC 9110 15.5.1, 15.5.14, 15.5.15, RFC 6585 5):
# one client's oversized or malformed request must not become everybody's answer (CPDoS, CCS 2019)
CLIENT_ERROR_STATUSES = frozenset({400, 413, 414, 431})


def options_for(cfg: Config) -> Options:
    """The policy options a configuration asks for (cdn_cache_control, max_object_size, cache_set_cookie,
    cache_client_errors, stale_if_error, stale_while_revalidate, stale_keep)."""
    return Options(
        targeted_fields=tuple(n.encode() for n in cfg.cdn_cache_control),
        max_object_size=cfg.max_object_size,
        cache_set_cookie=cfg.cache_set_cookie,
        cache_client_errors=cfg.cache_client_errors,
        stale_if_error_default=cfg.stale_if_error,
        stale_while_revalidate_default=cfg.stale_while_revalidate,
        stale_keep=cfg.stale_keep,
    )


@dataclass(slots=True)
class Freshness:
    """What is stored beside a cached response. Plain floats and bools only (the protocol serialises it)."""

    lifetime: float  # freshness lifetime (RFC 9111 4.2.1), seconds
    initial_age: float  # corrected_initial_age (4.2.3)
    response_time: float  # when the response was received
    stale_while_revalidate: float = 0.0  # RFC 5861 3, seconds past the lifetime
    stale_if_error: float = 0.0  # RFC 5861 4, seconds past the lifetime
    must_revalidate: bool = False  # must-revalidate, or (shared) proxy-revalidate / s-maxage
    no_cache: bool = False  # unqualified no-cache: validate before every use
    heuristic: bool = False  # lifetime is heuristic (4.2.2)
    immutable: bool = False  # RFC 8246 (informational for a shared cache)


@dataclass(frozen=True, slots=True)
class RequestControl:
    """Request cache directives (RFC 9111 5.2.1), after the Pragma rule (5.4)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None
    max_stale: float | None = None  # float("inf") for a bare max-stale
    min_fresh: float | None = None
    only_if_cached: bool = False
    stale_if_error: float | None = None  # RFC 5861 4 in a request


_NO_REQUEST_DIRECTIVES = RequestControl()

# RFC 9111 1.2.2: a delta-seconds too large to represent is taken as 2147483648 (2^31).
DELTA_MAX = 2147483648

# RFC 9110 15.1: heuristically cacheable by default.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# Status codes whose caching requirements this cache implements (RFC 9110 15 and the other registered codes
# with no caching rules beyond the general ones): what must-understand (RFC 9111 5.2.2.3) asks about.
_UNDERSTOOD = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 207, 208, 226}
    | {300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 419))
    | {421, 422, 423, 424, 425, 426, 428, 429, 431, 451}
    | {500, 501, 502, 503, 504, 505, 506, 507, 508, 511}
)

_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_OWS = b" \t"

# RFC 5861 4: the "errors" stale-if-error covers (a 500, 502, 503 or 504 from upstream; a failed exchange is
# one too, the caller's to map).
ERROR_STATUSES = frozenset((500, 502, 503, 504))

# Seconds a stored response is kept past its freshness (to be served stale or revalidated): the default of
# config's stale_keep.
STALE_KEEP = 600.0


def _delta(value: bytes | None) -> float | None:
    """delta-seconds (RFC 9111 1.2.2): 1*DIGIT, capped at 2^31; None when invalid."""
    if value is None or not value.isdigit():
        return None
    if len(value) > 10:
        return _DELTA_MAX_F
    n = float(value)  # exact: at most 10 ASCII digits
    return n if n < DELTA_MAX else _DELTA_MAX_F


_DELTA_MAX_F = float(DELTA_MAX)


def _parse_age(values: list[bytes]) -> float:
    """Age (RFC 9111 5.1) is a singleton holding one delta-seconds. Sent as a list (several members or
    lines), its first member is used (RFC 9110 5.5: a recipient of a list where a singleton belongs may use
    one member; the first is the one an upstream cache wrote). An invalid first member is ignored (0)."""
    if not values:
        return 0.0
    member = values[0]
    comma = member.find(b",")
    if comma != -1:
        member = member[:comma]
    a = _delta(member.strip(_OWS))
    return a if a is not None else 0.0


# --------------------------------------------------------------------------------------------------------
# Storing (RFC 9111 3) and freshness (4.2)
# --------------------------------------------------------------------------------------------------------


def _select_directives(
    cc_lines: list[bytes], targeted: dict[bytes, list[bytes]] | None, opts: Options
) -> tuple[Directives, frozenset[bytes], bool]:
    """(directives, invalid names, from a targeted field). RFC 9213 2.2: the first valid targeted field in the
    configured order replaces Cache-Control and Expires."""
    if targeted:
        for name in opts.targeted_fields:
            lines = targeted.get(name)
            if lines:
                d = parse_targeted(lines)
                if d is not None:
                    return d, frozenset(), True
    if not cc_lines:
        return {}, frozenset(), False
    d, bad = cache_control(cc_lines)
    return d, bad, False


# The response fields decide_store reads (besides the targeted fields).
_STORE_FIELDS = frozenset(
    (
        b"cache-control",
        b"date",
        b"expires",
        b"age",
        b"last-modified",
        b"etag",
        b"vary",
        b"content-length",
        b"set-cookie",
    )
)


def _names_set_cookie(d: Directives) -> bool:
    """A qualified no-cache or private names Set-Cookie: it is left out of the stored copy
    (storable_headers)."""
    for name in (b"no-cache", b"private"):
        v = d.get(name)
        if v and any(f.lower() == b"set-cookie" for f in split_list(v)):
            return True
    return False


def decide_store(
    method: bytes,
    status: int,
    req_headers: Headers,
    resp_headers: Headers,
    *,
    request_time: float,
    response_time: float,
    opts: Options = DEFAULT_OPTIONS,
    body_length: int | None = None,
    post_target: tuple[bytes, bytes] | None = None,
) -> tuple[Freshness | None, Reason | None]:
    """May this response be stored (RFC 9111 3), and with what freshness (4.2)?

    Returns (Freshness, None) to store, or (None, Reason). Only GET responses are stored: a HEAD response
    updates a stored GET response through head_update (4.3.5). After merge_304 or head_update, call this again
    with the merged headers (and the stored status) to get the refreshed Freshness.
    `body_length`, when known, is checked against Content-Length (INCOMPLETE); either is checked against
    opts.max_object_size (TOO_LARGE: a Content-Length alone is enough). Vary: * gives VARY_STAR (4.1).
    A POST response (method b"POST", `post_target` = (host, target) of the request) is stored for later GETs
    only with explicit freshness and a Content-Location that is its own target URI (RFC 9110 9.3.3).
    """
    post = False
    if method == b"POST":
        if post_target is None or not content_location_is_target(resp_headers, *post_target):
            return None, Reason.METHOD
        post = True
    elif method != b"GET":
        return None, Reason.METHOD
    if status < 200 or status == 304 or status > 999:  # 3: final status; a 304 only updates (4.3.4)
        return None, Reason.STATUS
    if status == 206:  # 3.3: a partial response is never stored as the full one
        return None, Reason.PARTIAL
    client_error = status in CLIENT_ERROR_STATUSES
    if client_error and opts.cache_client_errors == "never":
        return None, Reason.CLIENT_ERROR

    # The request: Authorization (3.5) and request no-store (5.2.1.5).
    authorization = False
    for name, value in req_headers:
        if name == b"authorization":
            authorization = True
        elif name == b"cache-control" and b"no-store" in cache_control([value])[0]:
            return None, Reason.REQUEST_NO_STORE

    # One pass over the response fields; most are none of these (one set lookup each).
    targeted_names = opts.targeted_fields
    cc_lines: list[bytes] = []
    targeted: dict[bytes, list[bytes]] | None = None
    expires: bytes | None = None
    date: bytes | None = None
    last_modified: bytes | None = None
    has_etag = False
    ages: list[bytes] = []
    vary_lines: list[bytes] = []
    content_length: list[bytes] = []
    set_cookie = False
    for name, value in resp_headers:
        if name not in _STORE_FIELDS:
            if name in targeted_names:
                if targeted is None:
                    targeted = {}
                targeted.setdefault(name, []).append(value)
        elif name == b"cache-control":
            cc_lines.append(value)
        elif name == b"date":
            if date is None:
                date = value
        elif name == b"expires":
            if expires is None:  # 4.2.1: the first occurrence
                expires = value
        elif name == b"age":
            ages.append(value)
        elif name == b"last-modified":
            if last_modified is None:
                last_modified = value
        elif name == b"etag":
            has_etag = True
        elif name == b"vary":
            vary_lines.append(value)
        elif name == b"set-cookie":
            set_cookie = True
        else:  # content-length
            content_length.append(value)

    if targeted is None and len(cc_lines) == 1 and len(cc_lines[0]) <= MEMO_MAX_LEN:
        d, bad = cache_control_line(cc_lines[0])  # the common case of _select_directives
        from_targeted = False
    else:
        d, bad, from_targeted = _select_directives(cc_lines, targeted, opts)
    shared = opts.shared

    # 5.2.2.3: must-understand limits storing to caches that understand the status; those ignore no-store.
    if b"must-understand" in d:
        if status not in _UNDERSTOOD:
            return None, Reason.MUST_UNDERSTAND
    elif b"no-store" in d:  # 5.2.2.5
        return None, Reason.NO_STORE
    if shared and b"private" in d:  # 5.2.2.7 (unqualified)
        private = d[b"private"]
        if private is None or not split_list(private):
            return None, Reason.PRIVATE
    public = b"public" in d
    has_smaxage = shared and (b"s-maxage" in d or b"s-maxage" in bad)
    if shared and authorization and not (public or has_smaxage or b"must-revalidate" in d):  # 3.5
        return None, Reason.AUTHORIZATION
    if vary_lines and parse_vary(vary_lines) is None:  # 4.1: Vary: * never matches
        return None, Reason.VARY_STAR
    # a cookie is set for one client (Varnish's builtin VCL and CDNs pass these); "strip" stores the
    # response without the field (Options.strip_on_store), as RFC 9111 3.1 lets a cache leave fields out;
    # a qualified no-cache="set-cookie" / private="set-cookie" (5.2.2.4, 5.2.2.7) is the origin saying so
    if set_cookie and opts.cache_set_cookie != "strip" and not _names_set_cookie(d):
        return None, Reason.SET_COOKIE

    # 3.3: incomplete responses are not stored as complete; size limit.
    if content_length:
        cl = content_length[0].strip(_OWS)
        if not cl.isdigit() or (len(content_length) > 1 and any(c.strip(_OWS) != cl for c in content_length)):
            return None, Reason.INCOMPLETE
        if body_length is not None and int(cl) != body_length:
            return None, Reason.INCOMPLETE
        if body_length is None:
            body_length = int(cl)
    if body_length is not None and body_length > opts.max_object_size:
        return None, Reason.TOO_LARGE

    # 4.2.3: age calculation.
    date_value = parse_http_date(date, response_time) if date is not None else None
    if date_value is None:  # RFC 9110 6.6.1: no (valid) Date: the time of receipt
        date_value = response_time
    # max() spelled out (a builtin call each): x if x > 0.0 else 0.0 is max(0.0, x), NaN included.
    apparent_age = response_time - date_value
    apparent_age = apparent_age if apparent_age > 0.0 else 0.0
    response_delay = response_time - request_time
    response_delay = response_delay if response_delay > 0.0 else 0.0
    corrected_age_value = _parse_age(ages) + response_delay if ages else response_delay
    initial_age = corrected_age_value if corrected_age_value > apparent_age else apparent_age

    # 4.2.1: freshness lifetime: s-maxage (shared) > max-age > Expires - Date; invalid values mean stale.
    lifetime: float | None = None
    heuristic = False
    explicit = True
    if has_smaxage:
        lifetime = _delta(d.get(b"s-maxage")) or 0.0
    elif b"max-age" in d or b"max-age" in bad:
        lifetime = _delta(d.get(b"max-age")) or 0.0
    elif expires is not None and not from_targeted:
        exp = parse_http_date(expires, response_time)
        lifetime = 0.0  # 5.3: invalid = in the past
        if exp is not None and exp - date_value > 0.0:
            lifetime = exp - date_value
    elif post:  # RFC 9110 9.3.3: explicit freshness only
        return None, Reason.METHOD
    elif client_error:  # about the request, not the resource: explicit freshness only (CPDoS)
        return None, Reason.CLIENT_ERROR
    elif (status in HEURISTIC_STATUSES or public) and opts.default_ttl is not None:
        # a route's default_ttl in place of the heuristic (4.2.2 leaves the heuristic to the cache)
        lifetime = opts.default_ttl
    elif status in HEURISTIC_STATUSES or public:  # 4.2.2: heuristic freshness
        explicit = False
        lifetime = 0.0
        lm = parse_http_date(last_modified, response_time) if last_modified is not None else None
        if lm is not None and lm < date_value:
            lifetime = min(opts.heuristic_max, opts.heuristic_fraction * (date_value - lm))
            heuristic = True
    else:  # 3: nothing allows storing this status
        return None, Reason.STATUS
    if opts.max_ttl is not None and lifetime - initial_age > opts.max_ttl:
        lifetime = initial_age + opts.max_ttl  # a route's cap on how long it stays fresh here (4.2.1)

    no_cache = False
    if b"no-cache" in d:
        no_cache_v = d[b"no-cache"]
        no_cache = no_cache_v is None or not split_list(no_cache_v)
    must_revalidate = b"must-revalidate" in d or (shared and (b"proxy-revalidate" in d or has_smaxage))
    v = d.get(b"stale-while-revalidate")
    swr = (_delta(v) or 0.0) if v is not None else None
    v = d.get(b"stale-if-error")
    sie = _delta(v) if v is not None else None
    validators = has_etag or last_modified is not None
    if no_cache and not validators:  # would be fetched in full on every use: not worth storing
        return None, Reason.NO_CACHE
    # stale on arrival: stored only when the response itself gives a stale window or validators (the
    # operator's defaults below do not make every max-age=0 response worth keeping)
    if lifetime - initial_age <= 0 and not validators and not swr and not sie:
        return None, (Reason.STALE if explicit or heuristic else Reason.NO_FRESHNESS)
    if swr is None:  # the operator's defaults where the response names none (RFC 5861 leaves it open)
        swr = opts.stale_while_revalidate_default
    if sie is None:
        sie = opts.stale_if_error_default
    # Positional: the field order of Freshness (keyword arguments cost twice as much here).
    fresh = Freshness(
        lifetime,
        initial_age,
        response_time,
        swr,  # stale_while_revalidate
        sie,  # stale_if_error
        must_revalidate,
        no_cache,
        heuristic,
        b"immutable" in d,  # immutable
    )
    return fresh, None


def current_age(f: Freshness, now: float) -> float:
    """RFC 9111 4.2.3: corrected_initial_age + resident_time."""
    resident = now - f.response_time
    return f.initial_age + (resident if resident > 0 else 0.0)


def storable_headers(resp_headers: Headers, strip: frozenset[bytes] | tuple[bytes, ...] = ()) -> Headers:
    """The fields to store (RFC 9111 3.1): no hop-by-hop or Connection-listed field (RFC 9110 7.6.1), no field
    named by a qualified no-cache (5.2.2.4) or private (5.2.2.7) in Cache-Control or a targeted field, and
    none in `strip` (lower-case names; e.g. b"set-cookie" for a deployment that never shares cookies).
    Age is kept: the protocol replaces it when serving."""
    drop: set[bytes] = set(strip)
    for name, value in resp_headers:
        if name == b"connection":
            # the usual values name only hop-by-hop fields (the exact bytes are checked first: no lower())
            if value != b"keep-alive" and value != b"close":
                drop.update(connection_tokens(value))
        elif name[-13:] == b"cache-control":
            if len(value) <= MEMO_MAX_LEN:
                d = cache_control_line(value)[0]  # a qualified no-cache / private shows in the memoised parse
            else:
                lv = value.lower()
                if lv.find(b"no-cache=") == -1 and lv.find(b"private=") == -1:
                    continue
                d = cache_control([value])[0]
            for key in (b"no-cache", b"private"):
                v = d.get(key)
                if v:
                    drop.update(e.lower() for e in split_list(v))
    # the fields themselves are kept (tuples are immutable): only the list is new
    if not drop:
        return [f for f in resp_headers if f[0] not in HOP_BY_HOP]
    return [f for f in resp_headers if f[0] not in HOP_BY_HOP and f[0] not in drop]


def stored_head_differs(resp_headers: Headers, strip: tuple[bytes, ...] = ()) -> bool:
    """Would the stored head differ from the one this client gets? True when a Cache-Control or targeted
    field (any name ending in "cache-control") has a qualified no-cache="..." (5.2.2.4) or private="..."
    (5.2.2.7) naming at least one field, or a field in `strip` is present (Options.strip_on_store):
    storable_headers leaves those out of the stored response, but the client that caused the fetch is sent
    the response as received."""
    for name, value in resp_headers:
        if strip and name in strip:
            return True
        if name[-13:] == b"cache-control":
            if len(value) <= MEMO_MAX_LEN:
                d = cache_control_line(value)[0]
            elif 0x3D not in value:  # no "=": nothing qualified
                continue
            else:
                d = cache_control([value])[0]
            v = d.get(b"no-cache")
            if v and split_list(v):
                return True
            v = d.get(b"private")
            if v and split_list(v):
                return True
    return False


def retention(f: Freshness, has_validators: bool, now: float, stale_keep: float = STALE_KEEP) -> float:
    """Seconds past its freshness (fresh_until = response_time - initial_age + lifetime, as entry.encode
    computes it) that a stored response is kept: long enough for stale-while-revalidate (RFC 5861 3) and
    stale-if-error (RFC 5861 4), and `stale_keep` seconds whether or not it has validators, so that it can
    be served stale when the upstream fails (RFC 9111 4.2.4, the operator's stale_if_error) or revalidated
    (RFC 9111 4.3) rather than fetched whole; with validators at least until now + 1 (a response stale on
    arrival is still kept to be revalidated)."""
    keep = f.stale_while_revalidate
    if f.stale_if_error > keep:
        keep = f.stale_if_error
    if stale_keep > keep:
        keep = stale_keep
    if not has_validators:
        return keep
    least = now + 1.0 - (f.response_time - f.initial_age + f.lifetime)
    return keep if keep >= least else least


# --------------------------------------------------------------------------------------------------------
# Reusing (RFC 9111 4, 4.2.4, 5.2.1; RFC 5861)
# --------------------------------------------------------------------------------------------------------


def parse_request(req_headers: Headers, opts: Options = DEFAULT_OPTIONS) -> RequestControl:
    """Request directives (RFC 9111 5.2.1). Pragma: no-cache counts only without Cache-Control (5.4).
    Invalid arguments make a directive ignored (max-stale without an argument means any staleness).
    With opts.ignore_client_no_cache (a route's), no-cache, max-age=0 and Pragma: no-cache are dropped: they
    do not force a fetch (5.2.1 lets a cache be configured to ignore request directives)."""
    rc = _parse_request(req_headers)
    if opts.ignore_client_no_cache and (rc.no_cache or rc.max_age == 0):
        return _without_no_cache(rc)
    return rc


@functools.lru_cache(maxsize=256)
def _without_no_cache(rc: RequestControl) -> RequestControl:
    return dataclasses.replace(rc, no_cache=False, max_age=None if rc.max_age == 0 else rc.max_age)


def _parse_request(req_headers: Headers) -> RequestControl:
    cc: list[bytes] | None = None
    pragma_no_cache = False
    for name, value in req_headers:
        if name == b"cache-control":
            if cc is None:
                cc = [value]
            else:
                cc.append(value)
        elif name == b"pragma" and value.lower().find(b"no-cache") != -1:
            pragma_no_cache = any(e.lower() == b"no-cache" for e in split_list(value))
    if cc is None:
        return _PRAGMA_NO_CACHE if pragma_no_cache else _NO_REQUEST_DIRECTIVES
    if len(cc) == 1 and len(cc[0]) <= MEMO_MAX_LEN:
        return _request_memo(cc[0])  # RequestControl is frozen: safe to share
    return _request_control(cc)


_PRAGMA_NO_CACHE = RequestControl(no_cache=True)


@functools.lru_cache(maxsize=1024)
def _request_memo(line: bytes) -> RequestControl:
    return _request_control([line])


def _request_control(cc: list[bytes]) -> RequestControl:
    d, _ = cache_control(cc)
    if not d:
        return _NO_REQUEST_DIRECTIVES
    max_stale: float | None = None
    if b"max-stale" in d:
        v = d[b"max-stale"]
        max_stale = float("inf") if v is None else _delta(v)
    return RequestControl(
        no_cache=b"no-cache" in d,
        no_store=b"no-store" in d,
        max_age=_delta(d.get(b"max-age")),
        max_stale=max_stale,
        min_fresh=_delta(d.get(b"min-fresh")),
        only_if_cached=b"only-if-cached" in d,
        stale_if_error=_delta(d.get(b"stale-if-error")),
    )


def decide_use(f: Freshness, req: RequestControl, now: float) -> tuple[Use, Reason | None]:
    """May the stored response with freshness `f` answer this request now (RFC 9111 4.2, 4.2.4, 5.2)?

    (FRESH | STALE | STALE_REVALIDATE, None) to serve it; (VALIDATE, reason) to go upstream (conditionally
    if validators_for gives any); (ONLY_IF_CACHED_FAIL, reason) to answer 504 (5.2.1.7).
    """
    reason: Reason | None = None
    if f.no_cache:  # 5.2.2.4
        reason = Reason.NO_CACHE
    elif req.no_cache:  # 5.2.1.4
        reason = Reason.REQUEST_NO_CACHE
    else:
        age = current_age(f, now)
        if req.max_age is not None and (age > req.max_age or req.max_age == 0):  # 5.2.1.1
            reason = Reason.REQUEST_MAX_AGE
        else:
            remaining = f.lifetime - age
            if req.min_fresh is not None and remaining < req.min_fresh:  # 5.2.1.3
                reason = Reason.REQUEST_MIN_FRESH
            elif remaining > 0:
                return Use.FRESH, None
            elif f.must_revalidate:  # 5.2.2.2, 5.2.2.8, 5.2.2.10: never served stale
                reason = Reason.MUST_REVALIDATE
            else:
                staleness = -remaining
                if req.max_stale is not None and staleness <= req.max_stale:  # 5.2.1.2
                    return Use.STALE, None
                if (
                    0 < staleness <= f.stale_while_revalidate  # RFC 5861 3
                    and req.max_stale is None
                    and not req.only_if_cached
                ):
                    return Use.STALE_REVALIDATE, None
                reason = Reason.STALE
    if req.only_if_cached:
        return Use.ONLY_IF_CACHED_FAIL, Reason.ONLY_IF_CACHED
    return Use.VALIDATE, reason


_SERVES = (Use.FRESH, Use.STALE, Use.STALE_REVALIDATE)


def decide_lease(
    use: Use, reason: Reason | None, lease_until: float | None, now: float, req: RequestControl
) -> tuple[Use, Reason | None]:
    """decide_use's answer once the invalidation lease is taken into account: with a bus (`lease_until` not
    None) a stored response is served without asking the origin only while `now < lease_until`; past it,
    what would have been served (fresh, stale, or stale-while-revalidate) is validated first (RFC 9111
    4.3.1: a conditional request when it has validators, else a fetch), or 504 under only-if-cached
    (5.2.1.7). Anything decide_use already sends upstream is left as it is."""
    if lease_until is None or now < lease_until or use not in _SERVES:
        return use, reason
    if req.only_if_cached:
        return Use.ONLY_IF_CACHED_FAIL, Reason.ONLY_IF_CACHED
    return Use.VALIDATE, Reason.UNVERIFIED


def serves_stale_on(status: int) -> bool:
    """Is this upstream status an error stale-if-error applies to (RFC 5861 4: 500, 502, 503, 504)?"""
    return status in ERROR_STATUSES


def may_serve_stale_on_error(f: Freshness, req: RequestControl, now: float) -> bool:
    """Upstream failed (5xx, timeout, refused): may the stale stored response be served instead?

    RFC 5861 4 (stale-if-error, from the response or the request) and RFC 9111 4.2.4: never against
    no-cache, must-revalidate / proxy-revalidate / s-maxage, or a request that forbids stale (no-cache,
    max-age exceeded, min-fresh, max-stale exceeded) unless the request itself asks for stale-if-error.
    """
    if f.no_cache or f.must_revalidate:
        return False
    age = current_age(f, now)
    if req.stale_if_error is None and (
        req.no_cache or req.min_fresh is not None or (req.max_age is not None and age > req.max_age)
    ):
        return False
    staleness = age - f.lifetime
    if staleness <= 0:
        return True
    if req.max_stale is not None and staleness > req.max_stale and req.stale_if_error is None:
        return False
    window = f.stale_if_error
    if req.stale_if_error is not None and req.stale_if_error > window:
        window = req.stale_if_error
    return staleness <= window


# --------------------------------------------------------------------------------------------------------
# Validation (RFC 9111 4.3; RFC 9110 8.8, 13)
# --------------------------------------------------------------------------------------------------------


def validators_for(stored_headers: Headers) -> Headers:
    """Conditional fields for revalidating a stored response upstream (RFC 9111 4.3.1): If-None-Match with
    its ETag (quoted if the origin sent it unquoted), If-Modified-Since with its Last-Modified."""
    out: Headers = []
    etag = first(stored_headers, b"etag")
    if etag is not None and etag.strip(_OWS):
        weak, opaque = etag_parts(etag)
        out.append((b"if-none-match", (b"W/" if weak else b"") + opaque))
    lm = first(stored_headers, b"last-modified")
    if lm is not None and parse_http_date(lm) is not None:
        out.append((b"if-modified-since", lm.strip(_OWS)))
    return out


def matches_304(stored_headers: Headers, resp_304_headers: Headers) -> bool:
    """Does this 304 apply to this stored response (RFC 9111 4.3.4)? A strong ETag in the 304 must equal the
    stored one; a weak ETag must match weakly; else a Last-Modified must equal the stored one; a 304 with
    neither applies (the caller passes only the response it validated)."""
    new_etag = first(resp_304_headers, b"etag")
    if new_etag is not None:
        old = first(stored_headers, b"etag")
        if old is None:
            return False
        if etag_parts(new_etag)[0]:
            return etag_weak_match(new_etag, old)
        return etag_strong_match(new_etag, old)
    new_lm = first(resp_304_headers, b"last-modified")
    if new_lm is not None:
        old_lm = first(stored_headers, b"last-modified")
        a, b = parse_http_date(new_lm), (parse_http_date(old_lm) if old_lm is not None else None)
        return a is not None and a == b
    return True


# 3.2: never updated from a 304 or HEAD: framing and the encoding of the stored bytes.
_NO_UPDATE = frozenset({b"content-length", b"content-range", b"content-encoding", b"transfer-encoding"})


def merge_304(stored_headers: Headers, new_headers: Headers) -> Headers:
    """Update a stored response's fields from a 304 (RFC 9111 4.3.4, 3.2): every storable field of the 304
    replaces all stored lines of that name; Content-Length and the like are kept; a stored Date or Age the 304
    does not carry is dropped (they described the old exchange, the caller's clock stands in)."""
    new = storable_headers(new_headers)
    names = {n for n, _ in new if n not in _NO_UPDATE}
    names.update((b"age", b"date"))
    merged = [(n, v) for n, v in stored_headers if n not in names]
    merged.extend((n, v) for n, v in new if n not in _NO_UPDATE)
    return storable_headers(merged)


def head_update(status: int, stored_headers: Headers, head_headers: Headers) -> Headers | None:
    """RFC 9111 4.3.5: a 200 to a HEAD updates the stored GET response when every validator it carries
    (ETag, Last-Modified) and its Content-Length, if any, match the stored ones: returns the merged fields.
    None means: do not update, and treat the stored response as stale."""
    if status != 200:
        return None
    for field in (b"etag", b"last-modified", b"content-length"):
        new = first(head_headers, field)
        if new is not None:
            old = first(stored_headers, field)
            if old is None or old.strip(_OWS) != new.strip(_OWS):
                return None
    return merge_304(stored_headers, head_headers)


# --------------------------------------------------------------------------------------------------------
# Invalidation (RFC 9111 4.4)
# --------------------------------------------------------------------------------------------------------


def _same_origin_target(base_host: bytes, base_target: bytes, ref: bytes) -> bytes | None:
    host_s = base_host.decode("latin-1")
    path = base_target.decode("latin-1")
    if not path.startswith("/"):
        parts = urlsplit(path)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    try:
        url = urlsplit(urljoin("http://" + host_s + path, ref.strip(_OWS).decode("latin-1")))
    except ValueError:
        return None
    if url.scheme not in ("http", "https"):
        return None
    ports = (b"443",) if url.scheme == "https" else (b"80",)
    if normalise_host(url.netloc.rpartition("@")[2].encode("latin-1"), ports) != normalise_host(base_host):
        return None
    t = (url.path or "/") + ("?" + url.query if url.query else "")
    return t.encode("latin-1")


def content_location_is_target(resp_headers: Headers, host: bytes, target: bytes) -> bool:
    """Does the response's Content-Location identify the request's own target URI (RFC 9110 8.7, 9.3.3)?
    Compared after resolving it against the target and normalising both (RFC 9110 4.2.3)."""
    ref = first(resp_headers, b"content-location")
    if ref is None:
        return False
    t = _same_origin_target(host, target, ref)
    if t is None:
        return False
    return primary_key(b"GET", host, t) == primary_key(b"GET", host, target)


def invalidation_targets(
    method: bytes, status: int, host: bytes, target: bytes, resp_headers: Headers
) -> list[bytes]:
    """RFC 9111 4.4: a non-error (2xx/3xx) response to an unsafe method (or one of unknown safety) invalidates
    the target URI and the same-origin Location and Content-Location. Returns request targets to build
    primary keys from (with the same host); every variant under those keys is to be invalidated."""
    if method in _SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [target]
    for field in (b"location", b"content-location"):
        ref = first(resp_headers, field)
        if ref is None:
            continue
        t = _same_origin_target(host, target, ref)
        if t is not None and t not in out:
            out.append(t)
    return out
