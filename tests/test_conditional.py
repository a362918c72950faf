"""Tables for edgecore.conditional: the client's conditionals answered from a stored response (RFC 9110
13.1.2, 13.1.3, 13.2.2, 15.4.5; RFC 9111 4.3.2) and single byte ranges (RFC 9110 14, 13.1.5, 15.5.17).
Rows marked with a cache-tests id mirror a case of the public HTTP caching test suite (cache-tests.fyi)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from edgecore.conditional import (
    client_not_modified,
    if_range_matches,
    not_modified_headers,
    parse_range,
    range_not_satisfiable,
)
from edgecore.fields import Headers

T = 1_700_000_000.0
CC = "Cache-Control"


def date(offset: float) -> bytes:
    return formatdate(T + offset, usegmt=True).encode()


def H(*pairs: tuple[str, str | int]) -> Headers:
    """Headers as the protocol hands them over; an int value is an HTTP-date that many seconds from T."""
    return [(n.lower().encode(), date(v) if isinstance(v, int) else v.encode()) for n, v in pairs]


# ---------------------------------------------------------------------------------------------------------
# Conditionals (RFC 9110 13; RFC 9111 4.3.2)
# ---------------------------------------------------------------------------------------------------------

CLIENT_304 = [
    # (id, stored headers, request headers, answer 304?)  RFC 9110 13.1.2, 13.1.3, 13.2.2; RFC 9111 4.3.2
    ("conditional-etag-strong-respond", (("ETag", '"abcdef"'),), (("If-None-Match", '"abcdef"'),), True),
    ("conditional-etag-weak-respond", (("ETag", 'W/"abcdef"'),), (("If-None-Match", 'W/"abcdef"'),), True),
    (
        "weak-comparison-mixed",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", 'W/"abcdef"'),),
        True,
    ),  # 13.1.2: weak
    (
        "conditional-etag-strong-respond-multiple-first",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", '"abcdef", "1234", "5678"'),),
        True,
    ),
    (
        "conditional-etag-strong-respond-multiple-second",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", '"1234", "abcdef", "5678"'),),
        True,
    ),
    (
        "conditional-etag-strong-respond-multiple-last",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", '"1234", "5678", "abcdef"'),),
        True,
    ),
    (
        "inm-two-lines",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", '"1"'), ("If-None-Match", '"abcdef"')),
        True,
    ),
    ("inm-comma-in-tag", (("ETag", '"a,b"'),), (("If-None-Match", '"a,b"'),), True),
    ("inm-star", (("ETag", '"x"'),), (("If-None-Match", "*"),), True),  # 13.1.2
    ("inm-mismatch", (("ETag", '"abcdef"'),), (("If-None-Match", '"nope"'),), False),
    ("inm-no-stored-etag", (), (("If-None-Match", '"abcdef"'),), False),
    (
        "conditional-etag-quoted-respond-unquoted",
        (("ETag", '"abcdef"'),),
        (("If-None-Match", "abcdef"),),
        True,
    ),
    (
        "conditional-etag-weak-respond-lowercase",
        (("ETag", 'w/"abcdef"'),),
        (("If-None-Match", 'w/"abcdef"'),),
        True,
    ),
    (
        "conditional-etag-precedence",
        (("ETag", '"abcdef"'), ("Last-Modified", -5000)),
        (("If-None-Match", '"abcdef"'), ("If-Modified-Since", -6000)),
        True,
    ),
    (
        "inm-over-ims",
        (("ETag", '"abcdef"'), ("Last-Modified", -5000)),
        (("If-None-Match", '"x"'), ("If-Modified-Since", 0)),
        False,
    ),  # 13.2.2
    (
        "conditional-lm-fresh",
        (("Last-Modified", -3000), ("Date", 0)),
        (("If-Modified-Since", -3000),),
        True,
    ),  # 13.1.3
    (
        "conditional-lm-fresh-earlier",
        (("Last-Modified", -3000), ("Date", 0)),
        (("If-Modified-Since", -2000),),
        True,
    ),
    ("ims-before-lm", (("Last-Modified", -3000), ("Date", 0)), (("If-Modified-Since", -4000),), False),
    ("ims-no-lm-uses-date", (("Date", -100),), (("If-Modified-Since", 0),), True),  # RFC 9111 4.3.2
    ("ims-no-lm-newer-date", (("Date", 0),), (("If-Modified-Since", -3000),), False),
    (
        "ims-invalid",
        (("Last-Modified", -3000),),
        (("If-Modified-Since", "yesterday"),),
        False,
    ),  # 13.1.3: ignored
    (
        "ims-two-lines",
        (("Last-Modified", -3000),),
        (("If-Modified-Since", 0), ("If-Modified-Since", 0)),
        False,
    ),
    ("no-conditionals", (("ETag", '"x"'),), (), False),
]


@pytest.mark.parametrize(("case", "stored", "req", "expected"), CLIENT_304, ids=[r[0] for r in CLIENT_304])
def test_client_not_modified(case: str, stored: tuple, req: tuple, expected: bool) -> None:
    assert client_not_modified(H(*req), H(*stored)) is expected


def test_ims_in_rfc850_form() -> None:
    # RFC 9110 5.6.7: a recipient accepts all three date formats (cache-tests conditional-lm-fresh-rfc850)
    stored = H(("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"))
    assert client_not_modified(H(("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")), stored)


def test_not_modified_headers() -> None:
    # RFC 9110 15.4.5: what a 304 carries (cache-tests conditional-304-etag)
    stored = H(("Content-Type", "text/plain"), ("ETag", '"a"'), (CC, "max-age=5"), ("Date", 0), ("Vary", "x"))
    assert [n for n, _ in not_modified_headers(stored)] == [b"etag", b"cache-control", b"date", b"vary"]


# ---------------------------------------------------------------------------------------------------------
# Ranges (RFC 9110 14)
# ---------------------------------------------------------------------------------------------------------

RANGES = [
    # (Range value, length, (first, last) or None); RFC 9110 14.1.2
    (b"bytes=0-1", 11, (0, 1)),  # cache-tests partial-store-complete-reuse-partial
    (b"bytes=1-", 11, (1, 10)),  # partial-store-complete-reuse-partial-no-last
    (b"bytes=-1", 11, (10, 10)),  # partial-store-complete-reuse-partial-suffix
    (b"bytes=-100", 11, (0, 10)),  # suffix longer than the representation
    (b"bytes=5-100", 11, (5, 10)),  # last clamped
    (b"Bytes=0-0", 11, (0, 0)),  # 14.1: range unit case-insensitive
    (b"bytes= 0-1 ", 11, (0, 1)),  # RFC 9110 14.1.1: OWS around the value
    (b"bytes=11-", 11, None),  # unsatisfiable
    (b"bytes=-0", 11, None),  # RFC 9110 14.1.2: a zero suffix is unsatisfiable
    (b"bytes=2-1", 11, None),  # invalid
    (b"bytes=0-1,5-6", 11, None),  # several ranges: not answered from cache
    (b"items=0-1", 11, None),  # unknown unit
    (b"bytes=a-b", 11, None),  # RFC 9110 14.1.2: invalid
    (b"bytes=0-1", 0, None),  # RFC 9110 14.1.2: nothing to satisfy it from
    (b"bytes", 11, None),  # RFC 9110 14.1.1: no range-set
]


@pytest.mark.parametrize(("value", "length", "expected"), RANGES)
def test_parse_range(value: bytes, length: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, length) == expected


UNSATISFIABLE = [
    # (Range value, length, 416?)  RFC 9110 14.1.2, 15.5.17
    (b"bytes=11-", 11, True),  # RFC 9110 14.1.2: first-pos past the end
    (b"bytes=11-20, 30-40", 11, True),  # RFC 9110 14.1.2: none satisfiable
    (b"bytes=-0", 11, True),  # RFC 9110 14.1.2: zero suffix
    (b"bytes=0-1", 11, False),  # RFC 9110 14.1.2: satisfiable
    (b"bytes=0-1,5-6", 11, False),  # several ranges: satisfiable, answered in full by this cache
    (b"bytes=11-, 0-1", 11, False),  # one satisfiable range is enough
    (b"bytes=-5", 0, False),  # a non-zero suffix is satisfiable
    (b"bytes=2-1", 11, False),  # invalid: Range ignored, not a 416
    (b"bytes=a-", 11, False),  # RFC 9110 14.2: invalid, ignored
    (b"items=20-", 11, False),  # unknown unit: ignored
    (b"bytes=", 11, False),  # RFC 9110 14.2: empty range-set, ignored
]


@pytest.mark.parametrize(("value", "length", "expected"), UNSATISFIABLE)
def test_range_not_satisfiable(value: bytes, length: int, expected: bool) -> None:
    assert range_not_satisfiable(value, length) is expected


IF_RANGE = [
    # (If-Range, stored headers, range honoured?)  RFC 9110 13.1.5
    ('"a"', (("ETag", '"a"'),), True),  # RFC 9110 13.1.5: strong match
    ('"a"', (("ETag", '"b"'),), False),  # RFC 9110 13.1.5
    ('W/"a"', (("ETag", 'W/"a"'),), False),  # strong comparison only
    ('"a"', (("ETag", 'W/"a"'),), False),  # RFC 9110 13.1.5: a weak stored tag never matches
    (-100, (("Last-Modified", -100), ("Date", 0)), True),  # RFC 9110 13.1.5: strong Last-Modified
    (-100, (("Last-Modified", -100), ("Date", -100)), False),  # weak Last-Modified
    (-50, (("Last-Modified", -100), ("Date", 0)), False),  # exact match only
    ("nonsense", (("Last-Modified", -100), ("Date", 0)), False),  # RFC 9110 13.1.5: neither tag nor date
]


@pytest.mark.parametrize(("value", "stored", "expected"), IF_RANGE)
def test_if_range_matches(value: str | int, stored: tuple, expected: bool) -> None:
    assert if_range_matches(H(("If-Range", value))[0][1], H(*stored)) is expected
