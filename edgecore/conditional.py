"""Client conditionals and ranges answered from a stored response, sans-IO (RFC 9110 13, 14; RFC 9111 4.3.2).

Owns: whether a client's If-None-Match / If-Modified-Since is answered with 304 from the stored response and
which stored fields that 304 carries; single byte ranges of a stored response (Range, If-Range, and when a
416 is due).
Invariants: the stored response is complete (the cache only stores whole bodies); every question is answered
from the request's and the stored response's fields alone; when in doubt the answer is the full 200 (RFC 9110
14.2 lets a server ignore Range; a conditional that cannot be evaluated is not satisfied).
Never: I/O, clocks, asyncio, store or reuse decisions (that is policy), preconditions the origin evaluates
(If-Match / If-Unmodified-Since go upstream), or imports from edgecore modules other than fields.
"""

from __future__ import annotations

from .fields import Headers, etag_strong_match, etag_weak_match, first, parse_http_date, split_list

__all__ = [
    "client_not_modified",
    "not_modified_headers",
    "parse_range",
    "range_not_satisfiable",
    "if_range_matches",
]

_OWS = b" \t"


# --------------------------------------------------------------------------------------------------------
# Conditionals (RFC 9110 13; RFC 9111 4.3.2)
# --------------------------------------------------------------------------------------------------------


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
        etag = first(stored_headers, b"etag")
        for line in inm:
            for tag in split_list(line):
                if tag == b"*":
                    return True
                if etag is not None and etag_weak_match(tag, etag):
                    return True
        return False
    if len(ims) != 1:
        return False
    since = parse_http_date(ims[0])
    if since is None:
        return False
    lm = first(stored_headers, b"last-modified")
    when = parse_http_date(lm) if lm is not None else None
    if when is None:
        d = first(stored_headers, b"date")
        when = parse_http_date(d) if d is not None else None
    return when is not None and when <= since


# RFC 9110 15.4.5: what a 304 carries from the stored response.
_304_FIELDS = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})


def not_modified_headers(stored_headers: Headers) -> Headers:
    """The stored fields a 304 sent to the client carries (RFC 9110 15.4.5)."""
    return [(n, v) for n, v in stored_headers if n in _304_FIELDS]


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
        etag = first(stored_headers, b"etag")
        return etag is not None and etag_strong_match(v, etag)
    since = parse_http_date(v)
    lm_b = first(stored_headers, b"last-modified")
    lm = parse_http_date(lm_b) if lm_b is not None else None
    if since is None or lm is None or since != lm:
        return False
    date_b = first(stored_headers, b"date")
    date = parse_http_date(date_b) if date_b is not None else None
    return date is not None and lm <= date - 1
