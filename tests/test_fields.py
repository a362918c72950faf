"""Tables for edgecore.fields: the hop-by-hop set (RFC 9110 7.6.1, 11.7), lists (5.6.1), Connection-listed
names (7.6.1), singletons (5.5), HTTP-dates (5.6.7), entity-tag comparison (8.8.3), Cache-Control syntax
(RFC 9111 5.2) and targeted fields (RFC 9213 2.1, RFC 8941). Each row cites the section it checks."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from edgecore.fields import (
    HOP_BY_HOP,
    cache_control,
    connection_listed,
    connection_tokens,
    etag_parts,
    etag_strong_match,
    etag_weak_match,
    first,
    http_date,
    parse_cache_control,
    parse_http_date,
    parse_targeted,
    split_list,
)

# ---------------------------------------------------------------------------------------------------------
# The hop-by-hop set (RFC 9110 7.6.1, 11.7)
# ---------------------------------------------------------------------------------------------------------

HOP = [
    (b"connection", True),  # RFC 9110 7.6.1
    (b"keep-alive", True),  # RFC 9110 7.6.1 (named there as a field Connection commonly lists)
    (b"proxy-connection", True),  # RFC 9110 7.6.1 (non-standard, as Keep-Alive)
    (b"te", True),  # RFC 9110 7.6.1, 10.1.4
    (b"trailer", True),  # RFC 9110 6.6.2 (framing of this message)
    (b"transfer-encoding", True),  # RFC 9110 7.6.1; RFC 9112 6.1
    (b"upgrade", True),  # RFC 9110 7.6.1, 7.8
    (b"proxy-authenticate", True),  # RFC 9110 11.7.1: for the client of this proxy only
    (b"proxy-authorization", True),  # RFC 9110 11.7.2: consumed by the proxy it is for
    (b"content-length", False),  # RFC 9110 8.6: end to end (re-framed, but not hop-by-hop)
    (b"authorization", False),  # RFC 9110 11.6.2: end to end
    (b"www-authenticate", False),  # RFC 9110 11.6.1
    (b"cache-control", False),  # RFC 9111 5.2
]


@pytest.mark.parametrize(("name", "expected"), HOP)
def test_hop_by_hop(name: bytes, expected: bool) -> None:
    assert (name in HOP_BY_HOP) is expected


def test_hop_by_hop_is_exactly_the_nine() -> None:
    assert len(HOP_BY_HOP) == 9 and all(n == n.lower() for n in HOP_BY_HOP)


# ---------------------------------------------------------------------------------------------------------
# Lists (RFC 9110 5.6.1), Connection (7.6.1), singletons (5.5)
# ---------------------------------------------------------------------------------------------------------

SPLIT = [
    (b"a, b", [b"a", b"b"]),  # RFC 9110 5.6.1
    (b' "a,b" , c', [b'"a,b"', b"c"]),  # RFC 9110 5.6.4: commas inside quoted strings
    (b'"a\\",b", c', [b'"a\\",b"', b"c"]),  # RFC 9110 5.6.4: quoted-pair
    (b",,", []),  # RFC 9110 5.6.1: empty members dropped
]


@pytest.mark.parametrize(("value", "expected"), SPLIT)
def test_split_list(value: bytes, expected: list[bytes]) -> None:
    assert split_list(value) == expected


CONNECTION_TOKENS = [
    (b"close", [b"close"]),  # RFC 9110 9.6
    (b"keep-alive", [b"keep-alive"]),
    (b"Keep-Alive, Upgrade", [b"keep-alive", b"upgrade"]),  # RFC 9110 7.6.1: case-insensitive options
    (b" x-a ,, X-B\t", [b"x-a", b"x-b"]),  # RFC 9110 5.6.1: OWS, empty members
    (b"", []),
]


@pytest.mark.parametrize(("value", "expected"), CONNECTION_TOKENS)
def test_connection_tokens(value: bytes, expected: list[bytes]) -> None:
    assert connection_tokens(value) == expected


CONNECTION_LISTED = [
    ([], frozenset()),
    ([(b"x-a", b"1")], frozenset()),  # no Connection field
    ([(b"connection", b"close")], {b"close"}),  # RFC 9110 7.6.1
    ([(b"connection", b"X-Secret, close"), (b"x-secret", b"1")], {b"x-secret", b"close"}),
    ([(b"connection", b"a"), (b"x", b"1"), (b"connection", b"B")], {b"a", b"b"}),  # RFC 9110 5.3: all lines
]


@pytest.mark.parametrize(("headers", "expected"), CONNECTION_LISTED)
def test_connection_listed(headers: list, expected: set[bytes]) -> None:
    got = connection_listed(headers)
    assert isinstance(got, frozenset) and got == expected


FIRST = [
    ([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")], b"a", b"1"),  # RFC 9110 5.5: the first of several
    ([(b"a", b"1")], b"b", None),
    ([], b"a", None),
    ([(b"a", b"")], b"a", b""),  # present but empty is not absent
]


@pytest.mark.parametrize(("headers", "name", "expected"), FIRST)
def test_first(headers: list, name: bytes, expected: bytes | None) -> None:
    assert first(headers, name) == expected


# ---------------------------------------------------------------------------------------------------------
# Cache-Control syntax (RFC 9111 5.2)
# ---------------------------------------------------------------------------------------------------------

CC_PARSE = [
    ([b"max-age=5"], {b"max-age": b"5"}, set()),
    ([b"Max-Age=5, PUBLIC"], {b"max-age": b"5", b"public": None}, set()),  # 5.2: case-insensitive names
    ([b'no-cache="a, b"'], {b"no-cache": b"a, b"}, set()),  # 5.2.2.4: qualified form
    ([b'x="a\\"b"'], {b"x": b'a"b'}, set()),  # RFC 9110 5.6.4: quoted-pair
    ([b"max-age =5"], {}, {b"max-age"}),  # 5.2: no whitespace around "="
    ([b"max-age= 5"], {}, {b"max-age"}),  # RFC 9111 5.2: no whitespace after "="
    ([b"max-age="], {}, {b"max-age"}),  # RFC 9111 5.2: an empty argument is invalid
    ([b"max-age='5'"], {b"max-age": b"'5'"}, set()),  # a token, but not delta-seconds (rejected later)
    ([b"max-age=1, max-age=2"], {b"max-age": b"1"}, set()),  # 4.2.1: first occurrence
    ([b"max-age=1", b"max-age=2"], {b"max-age": b"1"}, set()),  # RFC 9111 4.2.1: across lines too
    (
        [b'ext="max-age=9", max-age=1'],
        {b"ext": b"max-age=9", b"max-age": b"1"},
        set(),
    ),  # RFC 9111 5.2: quoted, not a directive
    ([b"a b"], {}, {b"a"}),  # RFC 9111 5.2: a directive is one token
    ([b",,public,,"], {b"public": None}, set()),  # RFC 9110 5.6.1: empty members
]


@pytest.mark.parametrize(("lines", "directives", "bad"), CC_PARSE)
def test_parse_cache_control(lines: list[bytes], directives: dict, bad: set) -> None:
    d, b = parse_cache_control(lines)
    assert d == directives and set(b) == bad


# ---------------------------------------------------------------------------------------------------------
# HTTP-date (RFC 9110 5.6.7)
# ---------------------------------------------------------------------------------------------------------

EPOCH_1994 = 784111777.0
DATES = [
    (b"Sun, 06 Nov 1994 08:49:37 GMT", EPOCH_1994),  # IMF-fixdate
    (b"Sunday, 06-Nov-94 08:49:37 GMT", EPOCH_1994),  # rfc850-date
    (b"Sun Nov  6 08:49:37 1994", EPOCH_1994),  # asctime-date
    (b"SUN, 06 NOV 1994 08:49:37 gmt", EPOCH_1994),  # names case-insensitive
    (b"Sun, 06 Nov 1994 08:49:37 UTC", None),  # RFC 9110 5.6.7: "GMT" only
    (b"Sun, 06 Nov 94 08:49:37 GMT", None),  # RFC 9110 5.6.7: IMF-fixdate has a 4-digit year
    (b"Sun 06 Nov 1994 08:49:37 GMT", None),  # RFC 9110 5.6.7: the comma
    (b"Sun, 06 Nov 1994 8:49:37 GMT", None),  # RFC 9110 5.6.7: 2DIGIT hour
    (b"Sun, 31 Feb 1994 08:49:37 GMT", None),  # RFC 9110 5.6.7: no such day
    (b"Sun, 06 Nov 1994 24:49:37 GMT", None),  # RFC 9110 5.6.7: hour 00-23
    (b"0", None),  # RFC 9111 5.3: an invalid Expires such as "0" (not a date)
    (b"", None),  # RFC 9110 5.6.7
    (b"-1", None),  # RFC 9110 5.6.7
]


@pytest.mark.parametrize(("value", "expected"), DATES)
def test_parse_http_date(value: bytes, expected: float | None) -> None:
    assert parse_http_date(value) == expected


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_the_past() -> None:
    # RFC 9110 5.6.7
    now = parse_http_date(b"Mon, 01 Jan 2024 00:00:00 GMT")
    assert parse_http_date(b"Friday, 01-Jan-99 00:00:00 GMT", now) == parse_http_date(
        b"Fri, 01 Jan 1999 00:00:00 GMT"
    )
    assert parse_http_date(b"Tuesday, 01-Jan-30 00:00:00 GMT", now) == parse_http_date(
        b"Tue, 01 Jan 2030 00:00:00 GMT"
    )


HTTP_DATE = [
    (784111777.0, b"Sun, 06 Nov 1994 08:49:37 GMT"),  # RFC 9110 5.6.7: IMF-fixdate, the example
    (0.0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
    (1_700_000_000.0, formatdate(1_700_000_000.0, usegmt=True).encode()),
]


@pytest.mark.parametrize(("t", "expected"), HTTP_DATE)
def test_http_date(t: float, expected: bytes) -> None:
    assert http_date(t) == expected and parse_http_date(expected) == t  # RFC 9110 5.6.7: round trip


# ---------------------------------------------------------------------------------------------------------
# Entity tags (RFC 9110 8.8.3)
# ---------------------------------------------------------------------------------------------------------

ETAG_PARTS = [
    (b'"abc"', (False, b'"abc"')),  # RFC 9110 8.8.3: strong
    (b'W/"abc"', (True, b'"abc"')),  # 8.8.3: weak
    (b'w/"abc"', (True, b'"abc"')),  # lenient: lower-case weakness flag
    (b"abc", (False, b'"abc"')),  # lenient: unquoted tag quoted
    (b' "abc" ', (False, b'"abc"')),  # OWS around the field value (RFC 9110 5.5)
]


@pytest.mark.parametrize(("tag", "expected"), ETAG_PARTS)
def test_etag_parts(tag: bytes, expected: tuple[bool, bytes]) -> None:
    assert etag_parts(tag) == expected


ETAG_COMPARE = [
    # (a, b, strong match, weak match): the RFC 9110 8.8.3.2 table
    (b'W/"1"', b'W/"1"', False, True),
    (b'W/"1"', b'W/"2"', False, False),
    (b'W/"1"', b'"1"', False, True),
    (b'"1"', b'"1"', True, True),
]


@pytest.mark.parametrize(("a", "b", "strong", "weak"), ETAG_COMPARE)
def test_etag_comparison(a: bytes, b: bytes, strong: bool, weak: bool) -> None:
    assert etag_strong_match(a, b) is strong and etag_weak_match(a, b) is weak


# ---------------------------------------------------------------------------------------------------------
# Targeted fields (RFC 9213 2.1: an RFC 8941 dictionary; invalid -> ignored)
# ---------------------------------------------------------------------------------------------------------

TARGETED_PARSE = [
    ([b"max-age=60"], {b"max-age": b"60"}),  # RFC 9213 2.1
    ([b"max-age=60, public"], {b"max-age": b"60", b"public": None}),  # RFC 8941 4.2.2: bare key is true
    ([b'no-cache="a"'], {b"no-cache": b"a"}),  # RFC 9213 2.1: string argument
    ([b"no-store=?0"], {}),  # RFC 8941 3.3.6: false boolean: absent
    ([b"max-age=60", b"public"], {b"max-age": b"60", b"public": None}),  # RFC 9110 5.3: lines combined
    ([b"max-age=-1"], None),  # RFC 9213 2.1: not a non-negative integer: the field is ignored
    ([b'max-age="60"'], None),  # wrong type
    ([b"Max-Age=60"], None),  # RFC 8941 3.2: keys are lower-case
    ([b"max-age=60,"], None),  # RFC 8941 4.2.2: trailing comma
    ([b""], None),  # empty: ignored
]


@pytest.mark.parametrize(("lines", "expected"), TARGETED_PARSE)
def test_parse_targeted(lines: list[bytes], expected: dict | None) -> None:
    assert parse_targeted(lines) == expected


def test_cache_control_shares_the_memoised_parse_and_parse_cache_control_copies_it() -> None:
    # the memo behind cache_control is shared (read-only by contract); parse_cache_control hands out copies
    assert cache_control([b"public, max-age=7"]) is cache_control([b"public, max-age=7"])
    d, _ = parse_cache_control([b"public, max-age=7"])
    d[b"no-store"] = None
    assert b"no-store" not in cache_control([b"public, max-age=7"])[0]
