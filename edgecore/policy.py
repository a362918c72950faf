"""HTTP caching decisions, sans-IO: storable? fresh for how long? reusable for this request?

Standards: RFC 9111 (HTTP Caching), RFC 9110 (Semantics: conditionals 13, ranges 14, dates 5.6.7),
RFC 5861 (stale-while-revalidate, stale-if-error), RFC 9213 (targeted cache control), RFC 9211 (Cache-Status).

Owns: parsing of Cache-Control and targeted fields (CDN-Cache-Control, Edgecore-Cache-Control), HTTP dates,
Age; the store decision and the Freshness record kept beside a stored response; the reuse decision; serving
stale on error; validators for revalidation; header updates from a 304 or a HEAD; the client's own conditional
requests; invalidation after unsafe methods; single byte ranges; the Cache-Status field value.
Invariants: every refusal to store or reuse is a named Reason (its lower-cased name goes into Cache-Status
detail and metrics); times are plain floats (seconds since the epoch) passed in by the caller; a Freshness
holds only floats and bools; when in doubt the answer is "do not store" / "go upstream".
Never: I/O, reading a clock, asyncio, or imports from edgecore modules other than errors and keys; never a
regex on the per-request path (parse_request, decide_use, current_age).
"""

from __future__ import annotations

import calendar
import enum
import functools
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urljoin, urlsplit

from .keys import HOP_BY_HOP, Headers, normalise_host, parse_vary, primary_key, split_list

__all__ = [
    "Reason",
    "Options",
    "Freshness",
    "RequestControl",
    "Use",
    "DELTA_MAX",
    "HEURISTIC_STATUSES",
    "parse_cache_control",
    "parse_http_date",
    "decide_store",
    "current_age",
    "storable_headers",
    "parse_request",
    "decide_use",
    "may_serve_stale_on_error",
    "validators_for",
    "merge_304",
    "matches_304",
    "head_update",
    "client_not_modified",
    "origin_preconditions",
    "not_modified_headers",
    "invalidation_targets",
    "content_location_is_target",
    "parse_range",
    "range_not_satisfiable",
    "if_range_matches",
    "cache_status",
]


class Reason(enum.Enum):
    """Why a response is not stored, or a stored response not reused as is. `.detail` goes in Cache-Status."""

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
    # reusing (RFC 9111 4, 5.2.1; RFC 9110 13)
    REQUEST_NO_CACHE = enum.auto()  # request no-cache, or Pragma: no-cache alone (5.2.1.4, 5.4)
    REQUEST_MAX_AGE = enum.auto()  # older than the request max-age (5.2.1.1)
    REQUEST_MIN_FRESH = enum.auto()  # not fresh for long enough for the request min-fresh (5.2.1.3)
    STALE = enum.auto()  # stale (or stale on arrival with nothing to revalidate with)
    NO_CACHE = enum.auto()  # response no-cache: always revalidate (5.2.2.4)
    MUST_REVALIDATE = enum.auto()  # stale and must-revalidate, proxy-revalidate, s-maxage (5.2.2.2, 5.2.2.8)
    ONLY_IF_CACHED = enum.auto()  # request only-if-cached and nothing fits: 504 (5.2.1.7)
    PRECONDITION = enum.auto()  # If-Match / If-Unmodified-Since: for the origin to evaluate (RFC 9111 4.3.2)
    RANGE = enum.auto()  # a Range request the cache does not answer (multiple ranges, If-Range mismatch)

    @property
    def detail(self) -> str:
        return self.name.lower()


class Use(enum.Enum):
    """What to do with a stored response for this request (decide_use)."""

    FRESH = enum.auto()  # serve it
    STALE = enum.auto()  # serve it although stale: the client allowed it (max-stale)
    STALE_REVALIDATE = enum.auto()  # serve it now and refresh in the background (RFC 5861 3), one per key
    VALIDATE = enum.auto()  # go upstream, conditionally when validators_for() gives any
    ONLY_IF_CACHED_FAIL = enum.auto()  # answer 504 without going upstream (5.2.1.7)


@dataclass(frozen=True, slots=True)
class Options:
    shared: bool = True  # a shared cache (s-maxage, proxy-revalidate, private, Authorization apply)
    # RFC 9213 targeted fields, in precedence order; the first valid one replaces Cache-Control and Expires.
    targeted_fields: tuple[bytes, ...] = (b"edgecore-cache-control", b"cdn-cache-control")
    heuristic_fraction: float = 0.1  # of (Date - Last-Modified), RFC 9111 4.2.2
    heuristic_max: float = 86400.0  # cap on a heuristic lifetime
    stale_if_error_default: float = 0.0  # window to serve stale on upstream errors without stale-if-error
    max_object_size: int | None = None  # bodies above this are not stored (TOO_LARGE)


DEFAULT_OPTIONS = Options()


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


# --------------------------------------------------------------------------------------------------------
# Cache-Control (RFC 9111 5.2) and targeted fields (RFC 9213 2.1, RFC 8941 dictionaries)
# --------------------------------------------------------------------------------------------------------

Directives = dict[bytes, bytes | None]


def _unquote(q: bytes) -> bytes | None:
    """A quoted-string (RFC 9110 5.6.4) -> its content, None when malformed."""
    if len(q) < 2 or q[:1] != b'"' or q[-1:] != b'"':
        return None
    inner = q[1:-1]
    if 0x5C not in inner:  # no backslash (int needles: see primary_key in keys)
        return None if 0x22 in inner else inner
    out = bytearray()
    it = iter(inner)
    for c in it:
        if c == 0x5C:
            nxt = next(it, None)
            if nxt is None:
                return None
            out.append(nxt)
        elif c == 0x22:
            return None
        else:
            out.append(c)
    return bytes(out)


def parse_cache_control(lines: list[bytes]) -> tuple[Directives, frozenset[bytes]]:
    """Cache-Control field lines -> ({name: value or None}, names seen with invalid syntax).

    RFC 9111 5.2: names are case-insensitive; token or quoted-string arguments (both accepted, 5.2);
    no whitespace around "=" ("max-age =5" and "max-age= 5" are invalid); a quoted phrase never counts as a
    directive; the first occurrence of a directive wins (4.2.1).
    """
    d, bad = _cc(lines)
    return dict(d), bad


# Field values repeat heavily across responses ("public, max-age=3600"): a bounded memo of short ones.
# Memoised results are shared: internal callers treat them as read-only.
_MEMO_MAX_LEN = 256


def _cc(lines: list[bytes]) -> tuple[Directives, frozenset[bytes]]:
    if len(lines) == 1 and len(lines[0]) <= _MEMO_MAX_LEN:
        return _cc_memo(lines[0])
    return _parse_cc(lines)


@functools.lru_cache(maxsize=1024)
def _cc_memo(line: bytes) -> tuple[Directives, frozenset[bytes]]:
    return _parse_cc((line,))


def _parse_cc(lines: list[bytes] | tuple[bytes, ...]) -> tuple[Directives, frozenset[bytes]]:
    d: Directives = {}
    bad: set[bytes] = set()
    for line in lines:
        for elem in split_list(line):
            eq = elem.find(b"=")
            raw_name = elem if eq == -1 else elem[:eq]
            words = raw_name.split()
            if not words:
                continue
            name = words[0].lower()
            if name in d or name in bad:  # 4.2.1: the first occurrence wins
                continue
            if len(words) != 1 or raw_name[-1:] in (b" ", b"\t") or 0x22 in raw_name:
                bad.add(name)  # "max-age =5", "max-age 5", a stray quote
                continue
            if eq == -1:
                d[name] = None
                continue
            value = elem[eq + 1 :]
            if value[:1] in (b" ", b"\t", b""):  # "max-age= 5", "max-age="
                bad.add(name)
            elif value[:1] == b'"':
                uq = _unquote(value)
                if uq is None:
                    bad.add(name)
                else:
                    d[name] = uq
            elif 0x22 in value or 0x20 in value or 0x09 in value:  # '"', SP, HTAB
                bad.add(name)
            else:
                d[name] = value
    return d, frozenset(bad)


_SF_KEY_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyz*")
_SF_KEY = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-.*")
_SF_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:/")
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset(b"0123456789")
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class _SFError(ValueError):
    pass


def _sf_key(s: bytes, i: int) -> tuple[bytes, int]:
    if i >= len(s) or s[i] not in _SF_KEY_FIRST:
        raise _SFError("key")
    j = i + 1
    while j < len(s) and s[j] in _SF_KEY:
        j += 1
    return s[i:j], j


def _sf_bare_item(s: bytes, i: int) -> tuple[tuple[str, bytes], int]:
    """RFC 8941 4.2.3.1 -> ((type, raw value), next index)."""
    if i >= len(s):
        raise _SFError("item")
    c = s[i]
    if c == 0x2D or c in _DIGITS:  # number
        j = i + 1 if c == 0x2D else i
        start = j
        while j < len(s) and s[j] in _DIGITS:
            j += 1
        if j == start:
            raise _SFError("number")
        if j < len(s) and s[j] == 0x2E:  # decimal
            if j - start > 12:
                raise _SFError("decimal")
            k = j + 1
            while k < len(s) and s[k] in _DIGITS:
                k += 1
            if k == j + 1 or k - j - 1 > 3:
                raise _SFError("decimal")
            return ("decimal", s[i:k]), k
        if j - start > 15:
            raise _SFError("integer")
        return ("integer", s[i:j]), j
    if c == 0x22:  # string
        out = bytearray()
        j = i + 1
        while j < len(s):
            ch = s[j]
            if ch == 0x5C:
                if j + 1 >= len(s) or s[j + 1] not in (0x22, 0x5C):
                    raise _SFError("escape")
                out.append(s[j + 1])
                j += 2
                continue
            if ch == 0x22:
                return ("string", bytes(out)), j + 1
            if ch < 0x20 or ch > 0x7E:
                raise _SFError("string")
            out.append(ch)
            j += 1
        raise _SFError("string")
    if c in _ALPHA or c == 0x2A:  # token
        j = i + 1
        while j < len(s) and s[j] in _SF_TOKEN:
            j += 1
        return ("token", s[i:j]), j
    if c == 0x3A:  # byte sequence
        end = s.find(b":", i + 1)
        if end == -1 or any(ch not in _B64 for ch in s[i + 1 : end]):
            raise _SFError("bytes")
        return ("bytes", s[i + 1 : end]), end + 1
    if c == 0x3F:  # boolean
        if s[i + 1 : i + 2] in (b"0", b"1"):
            return ("boolean", s[i + 1 : i + 2]), i + 2
        raise _SFError("boolean")
    raise _SFError("item")


def _sf_params(s: bytes, i: int) -> int:
    while i < len(s) and s[i] == 0x3B:  # ";"
        i += 1
        while i < len(s) and s[i] == 0x20:
            i += 1
        _, i = _sf_key(s, i)
        if i < len(s) and s[i] == 0x3D:
            _, i = _sf_bare_item(s, i + 1)
    return i


def _sf_dictionary(value: bytes) -> dict[bytes, tuple[str, bytes]]:
    """RFC 8941 4.2.2 (dictionary), parameters parsed and discarded; inner lists typed "list"."""
    s = value.strip(b" ")
    out: dict[bytes, tuple[str, bytes]] = {}
    i = 0
    n = len(s)
    if n == 0:
        raise _SFError("empty")
    while i < n:
        key, i = _sf_key(s, i)
        item: tuple[str, bytes]
        if i < n and s[i] == 0x3D:
            i += 1
            if i < n and s[i] == 0x28:  # inner list
                j = i + 1
                while True:
                    while j < n and s[j] == 0x20:
                        j += 1
                    if j >= n:
                        raise _SFError("list")
                    if s[j] == 0x29:
                        j += 1
                        break
                    _, j = _sf_bare_item(s, j)
                    j = _sf_params(s, j)
                    if j < n and s[j] not in (0x20, 0x29):
                        raise _SFError("list")
                item, i = ("list", s[i:j]), j
            else:
                item, i = _sf_bare_item(s, i)
        else:
            item = ("boolean", b"1")
        i = _sf_params(s, i)
        out[key] = item  # RFC 8941: a later duplicate key overwrites
        while i < n and s[i] in (0x20, 0x09):
            i += 1
        if i >= n:
            break
        if s[i] != 0x2C:
            raise _SFError("separator")
        i += 1
        while i < n and s[i] in (0x20, 0x09):
            i += 1
        if i >= n:
            raise _SFError("trailing comma")
    return out


_DELTA_DIRECTIVES = (b"max-age", b"s-maxage", b"stale-while-revalidate", b"stale-if-error")
_FLAG_DIRECTIVES = (
    b"no-store",
    b"public",
    b"must-revalidate",
    b"proxy-revalidate",
    b"must-understand",
    b"immutable",
    b"no-transform",
)


def _parse_targeted(lines: list[bytes]) -> Directives | None:
    """A targeted field (RFC 9213 2.1) -> directives, or None when it must be ignored (empty, not a valid
    Structured Fields dictionary, or a known directive of the wrong type)."""
    try:
        sf = _sf_dictionary(b", ".join(lines))
    except _SFError:
        return None
    d: Directives = {}
    for key, (typ, raw) in sf.items():
        if key in _DELTA_DIRECTIVES:
            if typ != "integer" or raw[:1] == b"-":
                return None
            d[key] = raw
        elif key in _FLAG_DIRECTIVES:
            if typ != "boolean":
                return None
            if raw == b"1":
                d[key] = None
        elif key in (b"no-cache", b"private"):
            if typ == "boolean":
                if raw == b"1":
                    d[key] = None
            elif typ == "string":
                d[key] = raw
            else:
                return None
        elif typ == "boolean":
            if raw == b"1":
                d[key] = None
        else:
            d[key] = raw
    return d


def _delta(value: bytes | None) -> float | None:
    """delta-seconds (RFC 9111 1.2.2): 1*DIGIT, capped at 2^31; None when invalid."""
    if value is None or not value.isdigit():
        return None
    if len(value) > 10:
        return _DELTA_MAX_F
    n = float(value)  # exact: at most 10 ASCII digits
    return n if n < DELTA_MAX else _DELTA_MAX_F


_DELTA_MAX_F = float(DELTA_MAX)


# --------------------------------------------------------------------------------------------------------
# HTTP-date (RFC 9110 5.6.7)
# --------------------------------------------------------------------------------------------------------

_MONTHS = {
    b"jan": 1,
    b"feb": 2,
    b"mar": 3,
    b"apr": 4,
    b"may": 5,
    b"jun": 6,
    b"jul": 7,
    b"aug": 8,
    b"sep": 9,
    b"oct": 10,
    b"nov": 11,
    b"dec": 12,
}
_MON = rb"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_IMF_RE = re.compile(
    rb"(?:mon|tue|wed|thu|fri|sat|sun), (\d\d) " + _MON + rb" (\d{4}) (\d\d):(\d\d):(\d\d) gmt",
    re.IGNORECASE,
)
_RFC850_RE = re.compile(
    rb"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), (\d\d)-"
    + _MON
    + rb"-(\d\d) (\d\d):(\d\d):(\d\d) gmt",
    re.IGNORECASE,
)
_ASCTIME_RE = re.compile(
    rb"(?:mon|tue|wed|thu|fri|sat|sun) " + _MON + rb" ( \d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4})",
    re.IGNORECASE,
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def http_date(t: float) -> bytes:
    """IMF-fixdate (RFC 9110 5.6.7) of a POSIX time, e.g. b"Sun, 06 Nov 1994 08:49:37 GMT"."""
    return formatdate(t, usegmt=True).encode("ascii")


def parse_http_date(value: bytes, now: float | None = None) -> float | None:
    """An HTTP-date (IMF-fixdate, rfc850-date or asctime-date; names case-insensitive) -> epoch seconds.

    None when invalid (the caller treats an invalid Expires as already expired, RFC 9111 5.3). A two-digit
    rfc850 year more than 50 years ahead of `now` means the past century (RFC 9110 5.6.7).
    """
    if len(value) == 29:  # the IMF-fixdate length: the common case, memoised (no `now` dependence)
        return _imf_memo(value)
    return _parse_http_date(value, now)


@functools.lru_cache(maxsize=1024)
def _imf_memo(value: bytes) -> float | None:
    return _parse_http_date(value, None)


def _parse_http_date(value: bytes, now: float | None) -> float | None:
    v = value.strip(_OWS)
    m = _IMF_RE.fullmatch(v)
    if m is not None:
        day, mon, year, hh, mm, ss = (
            m.group(1),
            m.group(2),
            int(m.group(3)),
            m.group(4),
            m.group(5),
            m.group(6),
        )
    else:
        m = _RFC850_RE.fullmatch(v)
        if m is not None:
            day, mon, hh, mm, ss = m.group(1), m.group(2), m.group(4), m.group(5), m.group(6)
            yy = int(m.group(3))
            ref = time.gmtime(now).tm_year if now is not None else 2000
            year = ref - ref % 100 + yy
            if now is not None:
                if year > ref + 50:
                    year -= 100
            elif yy >= 70:
                year -= 100
        else:
            m = _ASCTIME_RE.fullmatch(v)
            if m is None:
                return None
            mon, day, hh, mm, ss, year = (
                m.group(1),
                m.group(2),
                m.group(3),
                m.group(4),
                m.group(5),
                int(m.group(6)),
            )
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    month = _MONTHS[mon.lower()]
    if not (1 <= d <= _DAYS_IN_MONTH[month - 1]) or h > 23 or mi > 59 or s > 60:
        return None
    if month == 2 and d == 29 and not calendar.isleap(year):
        return None
    return float(calendar.timegm((year, month, d, h, mi, min(s, 59), 0, 0, 0)))


def _parse_age(values: list[bytes]) -> float:
    """Age (RFC 9111 5.1) is a singleton holding one delta-seconds. Sent as a list (several members or
    lines), its first member is used (RFC 9110 5.5: a recipient of a list where a singleton belongs may use
    one member; the first is the one an upstream cache wrote). An invalid first member is ignored (0)."""
    if not values:
        return 0.0
    first = values[0]
    comma = first.find(b",")
    if comma != -1:
        first = first[:comma]
    a = _delta(first.strip(_OWS))
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
                d = _parse_targeted(lines)
                if d is not None:
                    return d, frozenset(), True
    if not cc_lines:
        return {}, frozenset(), False
    d, bad = _cc(cc_lines)
    return d, bad, False


# The response fields decide_store reads (besides the targeted fields).
_STORE_FIELDS = frozenset(
    (b"cache-control", b"date", b"expires", b"age", b"last-modified", b"etag", b"vary", b"content-length")
)


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
    `body_length`, when known, is checked against Content-Length (INCOMPLETE) and opts.max_object_size.
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

    # The request: Authorization (3.5) and request no-store (5.2.1.5).
    authorization = False
    for name, value in req_headers:
        if name == b"authorization":
            authorization = True
        elif name == b"cache-control" and b"no-store" in _cc([value])[0]:
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
        else:  # content-length
            content_length.append(value)

    if targeted is None and len(cc_lines) == 1 and len(cc_lines[0]) <= _MEMO_MAX_LEN:
        d, bad = _cc_memo(cc_lines[0])  # the common case of _select_directives
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

    # 3.3: incomplete responses are not stored as complete; size limit.
    if content_length:
        cl = content_length[0].strip(_OWS)
        if not cl.isdigit() or (len(content_length) > 1 and any(c.strip(_OWS) != cl for c in content_length)):
            return None, Reason.INCOMPLETE
        if body_length is not None and int(cl) != body_length:
            return None, Reason.INCOMPLETE
        if body_length is None:
            body_length = int(cl)
    if opts.max_object_size is not None and body_length is not None and body_length > opts.max_object_size:
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
    elif status in HEURISTIC_STATUSES or public:  # 4.2.2: heuristic freshness
        explicit = False
        lifetime = 0.0
        lm = parse_http_date(last_modified, response_time) if last_modified is not None else None
        if lm is not None and lm < date_value:
            lifetime = min(opts.heuristic_max, opts.heuristic_fraction * (date_value - lm))
            heuristic = True
    else:  # 3: nothing allows storing this status
        return None, Reason.STATUS

    no_cache = False
    if b"no-cache" in d:
        no_cache_v = d[b"no-cache"]
        no_cache = no_cache_v is None or not split_list(no_cache_v)
    must_revalidate = b"must-revalidate" in d or (shared and (b"proxy-revalidate" in d or has_smaxage))
    v = d.get(b"stale-while-revalidate")
    swr = (_delta(v) or 0.0) if v is not None else 0.0
    v = d.get(b"stale-if-error")
    sie = _delta(v) if v is not None else None
    if sie is None:
        sie = opts.stale_if_error_default
    validators = has_etag or last_modified is not None
    if no_cache and not validators:  # would be fetched in full on every use: not worth storing
        return None, Reason.NO_CACHE
    if lifetime - initial_age <= 0 and not validators and swr <= 0 and sie <= 0:
        return None, (Reason.STALE if explicit or heuristic else Reason.NO_FRESHNESS)
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
                lv = value.lower()
                if lv != b"keep-alive" and lv != b"close":
                    drop.update(e.lower() for e in split_list(value))
        elif name[-13:] == b"cache-control":
            if len(value) <= _MEMO_MAX_LEN:
                d = _cc_memo(value)[0]  # a qualified no-cache / private shows in the memoised parse
            else:
                lv = value.lower()
                if lv.find(b"no-cache=") == -1 and lv.find(b"private=") == -1:
                    continue
                d = _parse_cc((value,))[0]
            for key in (b"no-cache", b"private"):
                v = d.get(key)
                if v:
                    drop.update(e.lower() for e in split_list(v))
    # the fields themselves are kept (tuples are immutable): only the list is new
    if not drop:
        return [f for f in resp_headers if f[0] not in HOP_BY_HOP]
    return [f for f in resp_headers if f[0] not in HOP_BY_HOP and f[0] not in drop]


# --------------------------------------------------------------------------------------------------------
# Reusing (RFC 9111 4, 4.2.4, 5.2.1; RFC 5861)
# --------------------------------------------------------------------------------------------------------


def parse_request(req_headers: Headers) -> RequestControl:
    """Request directives (RFC 9111 5.2.1). Pragma: no-cache counts only without Cache-Control (5.4).
    Invalid arguments make a directive ignored (max-stale without an argument means any staleness)."""
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
    if len(cc) == 1 and len(cc[0]) <= _MEMO_MAX_LEN:
        return _request_memo(cc[0])  # RequestControl is frozen: safe to share
    return _request_control(cc)


_PRAGMA_NO_CACHE = RequestControl(no_cache=True)


@functools.lru_cache(maxsize=1024)
def _request_memo(line: bytes) -> RequestControl:
    return _request_control([line])


def _request_control(cc: list[bytes]) -> RequestControl:
    d, _ = _cc(cc)
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


def _first(headers: Headers, field: bytes) -> bytes | None:
    for name, value in headers:
        if name == field:
            return value
    return None


def _etag_parts(tag: bytes) -> tuple[bool, bytes]:
    """(weak, opaque-tag) of an entity-tag (RFC 9110 8.8.3); lenient: an unquoted tag is quoted, a lower-case
    weakness flag accepted; anything else is compared as opaque bytes."""
    t = tag.strip(_OWS)
    weak = False
    if t[:2] in (b"W/", b"w/"):
        weak = True
        t = t[2:]
    if t[:1] != b'"' and b'"' not in t:
        t = b'"' + t + b'"'
    return weak, t


def _weak_match(a: bytes, b: bytes) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): opaque tags equal, weakness ignored."""
    return _etag_parts(a)[1] == _etag_parts(b)[1]


def _strong_match(a: bytes, b: bytes) -> bool:
    """Strong comparison (RFC 9110 8.8.3.2): both strong and opaque tags equal."""
    wa, ta = _etag_parts(a)
    wb, tb = _etag_parts(b)
    return not wa and not wb and ta == tb


def validators_for(stored_headers: Headers) -> Headers:
    """Conditional fields for revalidating a stored response upstream (RFC 9111 4.3.1): If-None-Match with
    its ETag (quoted if the origin sent it unquoted), If-Modified-Since with its Last-Modified."""
    out: Headers = []
    etag = _first(stored_headers, b"etag")
    if etag is not None and etag.strip(_OWS):
        weak, opaque = _etag_parts(etag)
        out.append((b"if-none-match", (b"W/" if weak else b"") + opaque))
    lm = _first(stored_headers, b"last-modified")
    if lm is not None and parse_http_date(lm) is not None:
        out.append((b"if-modified-since", lm.strip(_OWS)))
    return out


def matches_304(stored_headers: Headers, resp_304_headers: Headers) -> bool:
    """Does this 304 apply to this stored response (RFC 9111 4.3.4)? A strong ETag in the 304 must equal the
    stored one; a weak ETag must match weakly; else a Last-Modified must equal the stored one; a 304 with
    neither applies (the caller passes only the response it validated)."""
    new_etag = _first(resp_304_headers, b"etag")
    if new_etag is not None:
        old = _first(stored_headers, b"etag")
        if old is None:
            return False
        if _etag_parts(new_etag)[0]:
            return _weak_match(new_etag, old)
        return _strong_match(new_etag, old)
    new_lm = _first(resp_304_headers, b"last-modified")
    if new_lm is not None:
        old_lm = _first(stored_headers, b"last-modified")
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
        new = _first(head_headers, field)
        if new is not None:
            old = _first(stored_headers, field)
            if old is None or old.strip(_OWS) != new.strip(_OWS):
                return None
    return merge_304(stored_headers, head_headers)


def origin_preconditions(req_headers: Headers) -> bool:
    """If-Match / If-Unmodified-Since present: preconditions the origin evaluates (RFC 9111 4.3.2), so the
    request is forwarded rather than answered from cache."""
    return any(n == b"if-match" or n == b"if-unmodified-since" for n, _ in req_headers)


def client_not_modified(req_headers: Headers, stored_headers: Headers) -> bool:
    """Answer a client's GET/HEAD with 304 from the stored response (RFC 9111 4.3.2; RFC 9110 13.1.2,
    13.1.3, 13.2.2)? If-None-Match (weak comparison; "*" matches) takes precedence over If-Modified-Since;
    IMS is ignored unless it is a single valid date, and uses Last-Modified or else the stored Date."""
    inm: list[bytes] = []
    ims: list[bytes] = []
    for name, value in req_headers:
        if name == b"if-none-match":
            inm.append(value)
        elif name == b"if-modified-since":
            ims.append(value)
    if inm:
        etag = _first(stored_headers, b"etag")
        for line in inm:
            for tag in split_list(line):
                if tag == b"*":
                    return True
                if etag is not None and _weak_match(tag, etag):
                    return True
        return False
    if len(ims) != 1:
        return False
    since = parse_http_date(ims[0])
    if since is None:
        return False
    lm = _first(stored_headers, b"last-modified")
    when = parse_http_date(lm) if lm is not None else None
    if when is None:
        d = _first(stored_headers, b"date")
        when = parse_http_date(d) if d is not None else None
    return when is not None and when <= since


# RFC 9110 15.4.5: what a 304 carries from the stored response.
_304_FIELDS = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})


def not_modified_headers(stored_headers: Headers) -> Headers:
    """The stored fields a 304 sent to the client carries (RFC 9110 15.4.5)."""
    return [(n, v) for n, v in stored_headers if n in _304_FIELDS]


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
    ref = _first(resp_headers, b"content-location")
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
        ref = _first(resp_headers, field)
        if ref is None:
            continue
        t = _same_origin_target(host, target, ref)
        if t is not None and t not in out:
            out.append(t)
    return out


# --------------------------------------------------------------------------------------------------------
# Ranges (RFC 9110 14)
# --------------------------------------------------------------------------------------------------------


def parse_range(value: bytes, length: int) -> tuple[int, int] | None:
    """A single byte range (RFC 9110 14.1.2) against a representation of `length` bytes -> (first, last),
    inclusive and clamped; None when not "bytes", several ranges, invalid or unsatisfiable (the caller then
    serves the full response, RFC 9110 14.2 lets a server ignore Range)."""
    unit, eq, spec = value.strip(_OWS).partition(b"=")
    if not eq or unit.strip(_OWS).lower() != b"bytes" or length <= 0:
        return None
    specs = [s for s in (p.strip(_OWS) for p in spec.split(b",")) if s]
    if len(specs) != 1:
        return None
    first_b, dash, last_b = specs[0].partition(b"-")
    first_b, last_b = first_b.strip(_OWS), last_b.strip(_OWS)
    if not dash:
        return None
    if not first_b:  # suffix-range
        if not last_b.isdigit():
            return None
        n = int(last_b)
        if n == 0:
            return None
        return max(0, length - n), length - 1
    if not first_b.isdigit():
        return None
    first = int(first_b)
    if last_b:
        if not last_b.isdigit():
            return None
        last = int(last_b)
        if last < first:
            return None
        last = min(last, length - 1)
    else:
        last = length - 1
    if first >= length:
        return None
    return first, last


def range_not_satisfiable(value: bytes, length: int) -> bool:
    """True only for a valid bytes range-set none of whose ranges is satisfiable (RFC 9110 14.1.2): the case
    for a 416 (15.5.17). Several ranges, other units or invalid syntax give False: serve the full response."""
    unit, eq, spec = value.strip(_OWS).partition(b"=")
    if not eq or unit.strip(_OWS).lower() != b"bytes":
        return False
    specs = [s for s in (p.strip(_OWS) for p in spec.split(b",")) if s]
    if not specs:
        return False
    for one in specs:
        first_b, dash, last_b = one.partition(b"-")
        first_b, last_b = first_b.strip(_OWS), last_b.strip(_OWS)
        if not dash:
            return False
        if not first_b:  # suffix-range: satisfiable when non-zero
            if not last_b.isdigit() or int(last_b) > 0:
                return False
            continue
        if not first_b.isdigit() or (last_b and (not last_b.isdigit() or int(last_b) < int(first_b))):
            return False  # invalid: the Range field is ignored
        if int(first_b) < length:
            return False
    return True


def if_range_matches(value: bytes, stored_headers: Headers) -> bool:
    """If-Range (RFC 9110 13.1.5): an entity-tag must strongly match the stored ETag; a date must equal the
    stored Last-Modified, which must be strong (at least a second before the stored Date)."""
    v = value.strip(_OWS)
    if v[:1] == b'"' or v[:2] == b"W/":
        etag = _first(stored_headers, b"etag")
        return etag is not None and _strong_match(v, etag)
    since = parse_http_date(v)
    lm_b = _first(stored_headers, b"last-modified")
    lm = parse_http_date(lm_b) if lm_b is not None else None
    if since is None or lm is None or since != lm:
        return False
    date_b = _first(stored_headers, b"date")
    date = parse_http_date(date_b) if date_b is not None else None
    return date is not None and lm <= date - 1


# --------------------------------------------------------------------------------------------------------
# Cache-Status (RFC 9211)
# --------------------------------------------------------------------------------------------------------

_FWD = frozenset({"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})
_SF_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~:/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def cache_status(
    *,
    hit: bool,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: int | None = None,
    collapsed: bool = False,
    detail: str | None = None,
) -> bytes:
    """The Cache-Status member of this cache (RFC 9211 2), e.g. b"edgecore; hit; ttl=42",
    b"edgecore; fwd=miss; stored". `detail` is written as a token when it is one, else a string."""
    parts = ["edgecore"]
    if hit:
        parts.append("hit")
    if fwd is not None:
        if fwd not in _FWD:
            raise ValueError(f"fwd={fwd!r} is not an RFC 9211 forward reason")
        parts.append("fwd=" + fwd)
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status:d}")
    if stored:
        parts.append("stored")
    if ttl is not None:
        parts.append(f"ttl={ttl:d}")
    if collapsed:
        parts.append("collapsed")
    if detail:
        if (detail[0].isalpha() or detail[0] == "*") and all(c in _SF_TOKEN_CHARS for c in detail):
            parts.append("detail=" + detail)
        else:
            esc = (
                "".join(c for c in detail if 0x20 <= ord(c) <= 0x7E).replace("\\", "\\\\").replace('"', '\\"')
            )
            parts.append('detail="' + esc + '"')
    return "; ".join(parts).encode("ascii")
