"""Tables for edgecore.policy. Each row cites the rule it checks (RFC 9111 unless named otherwise); rows
marked with a cache-tests id mirror a case of the public HTTP caching test suite (cache-tests.fyi).

`outcome` plays the suite's two-request pattern: the response is offered for storing at T, then a request
arrives `pause` seconds later. It gives "not_stored:<reason>" or "<use>[:<reason>]" from decide_use.
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecore.config import build
from edgecore.fields import parse_cache_control
from edgecore.keys import Headers
from edgecore.policy import (
    DELTA_MAX,
    ERROR_STATUSES,
    STALE_KEEP,
    Freshness,
    Options,
    Reason,
    RequestControl,
    Use,
    current_age,
    decide_store,
    decide_use,
    head_update,
    invalidation_targets,
    matches_304,
    may_serve_stale_on_error,
    merge_304,
    options_for,
    parse_request,
    retention,
    serves_stale_on,
    storable_headers,
    stored_head_differs,
    validators_for,
)

DEFAULT = Options()
T = 1_700_000_000.0  # "now" of the exchange that stored the response


def date(offset: float) -> bytes:
    return formatdate(T + offset, usegmt=True).encode()


def H(*pairs: tuple[str, str | int]) -> Headers:
    """Headers as the protocol hands them over; an int value is an HTTP-date that many seconds from T."""
    return [(n.lower().encode(), date(v) if isinstance(v, int) else v.encode()) for n, v in pairs]


def outcome(
    resp: tuple = (),
    *,
    req: tuple = (),
    later: tuple = (),
    status: int = 200,
    method: bytes = b"GET",
    pause: float = 3.0,
    opts: Options = DEFAULT,
) -> str:
    f, reason = decide_store(method, status, H(*req), H(*resp), request_time=T, response_time=T, opts=opts)
    if f is None:
        assert reason is not None
        return "not_stored:" + reason.name.lower()
    assert reason is None
    use, why = decide_use(f, parse_request(H(*later)), T + pause)
    return use.name.lower() + (":" + why.name.lower() if why else "")


def store(resp: tuple, *, status: int = 200, opts: Options = DEFAULT, req: tuple = ()) -> Freshness:
    f, reason = decide_store(b"GET", status, H(*req), H(*resp), request_time=T, response_time=T, opts=opts)
    assert f is not None, reason
    return f


CC = "Cache-Control"
CDN = "CDN-Cache-Control"
ECC = "Edgecore-Cache-Control"
FRESH_TEMPLATE = (("Expires", 100000), (CC, "max-age=100000"), ("Last-Modified", 0), ("Date", 0))
STALE_TEMPLATE = (("Expires", -5000), ("Last-Modified", -100000), ("Date", 0))

# ---------------------------------------------------------------------------------------------------------
# Freshness lifetime (4.2.1), Cache-Control parsing (5.2), Expires (5.3), Age (4.2.3)
# ---------------------------------------------------------------------------------------------------------

FRESHNESS = [
    # (id, response headers, expected outcome after 3 s)
    ("freshness-none", (), "not_stored:no_freshness"),  # 3, 4.2.2: nothing to go by
    ("freshness-max-age", ((CC, "max-age=3600"),), "fresh"),  # 5.2.2.1
    ("freshness-max-age-quoted", ((CC, 'max-age="3600"'),), "fresh"),  # 5.2: quoted form accepted
    (
        "freshness-max-age-single-quoted",
        ((CC, "max-age='3600'"),),
        "not_stored:stale",
    ),  # 4.2.1: invalid=stale
    ("freshness-max-age-ignore-quoted", ((CC, 'extension="max-age=100", max-age=1'),), "validate:stale"),
    ("freshness-max-age-ignore-quoted-rev", ((CC, 'max-age=1, extension="max-age=100"'),), "validate:stale"),
    (
        "freshness-max-age-ignore-quoted-all",
        ((CC, 'extension="max-age=100", max-age="1"'),),
        "validate:stale",
    ),
    ("freshness-max-age-space-before-equals", ((CC, "max-age =100"),), "not_stored:stale"),  # 5.2 grammar
    ("freshness-max-age-space-after-equals", ((CC, "max-age= 100"),), "not_stored:stale"),
    ("freshness-max-age-0", ((CC, "max-age=0"),), "not_stored:stale"),
    ("freshness-max-age-a100", ((CC, "max-age=a100"),), "not_stored:stale"),  # 1.2.2: 1*DIGIT
    ("freshness-max-age-100a", ((CC, "max-age=100a"),), "not_stored:stale"),
    ("freshness-max-age-negative", ((CC, "max-age=-100"),), "not_stored:stale"),
    ("freshness-max-age-decimal", ((CC, "max-age=3600.5"),), "not_stored:stale"),
    ("freshness-max-age-leading-zero", ((CC, "max-age=003600"),), "fresh"),  # 1.2.2
    ("freshness-max-age-max", ((CC, "max-age=2147483648"),), "fresh"),  # 1.2.2: 2^31
    ("freshness-max-age-max-plus", ((CC, "max-age=99999999999"),), "fresh"),  # 1.2.2: capped, not invalid
    ("freshness-max-age-age", (("Date", 0), (CC, "max-age=10"), ("Age", "15")), "not_stored:stale"),  # 4.2.3
    ("freshness-max-age-expires", ((CC, "max-age=3600"), ("Expires", -10000), ("Date", 0)), "fresh"),  # 4.2.1
    ("freshness-max-age-expires-invalid", ((CC, "max-age=3600"), ("Expires", "0"), ("Date", 0)), "fresh"),
    ("freshness-max-age-0-expires", (("Expires", 10000), (CC, "max-age=0"), ("Date", 0)), "not_stored:stale"),
    ("freshness-max-age-extension", ((CC, "foobar, max-age=3600"),), "fresh"),  # 5.2.3: unknown ignored
    ("freshness-max-age-case-insensitive", ((CC, "MaX-aGe=3600"),), "fresh"),  # 5.2
    ("freshness-s-maxage-shared", ((CC, "s-maxage=3600"),), "fresh"),  # 5.2.2.10
    # 4.2.1: s-maxage over max-age; 5.2.2.10: s-maxage implies proxy-revalidate, so no stale serving
    (
        "freshness-max-age-s-maxage-shared-longer",
        ((CC, "max-age=3600, s-maxage=1"),),
        "validate:must_revalidate",
    ),
    (
        "freshness-max-age-s-maxage-shared-longer-reversed",
        ((CC, "s-maxage=1, max-age=3600"),),
        "validate:must_revalidate",
    ),
    (
        "freshness-max-age-s-maxage-shared-longer-multiple",
        ((CC, "max-age=3600"), (CC, "s-maxage=1")),
        "validate:must_revalidate",
    ),
    ("freshness-max-age-s-maxage-shared-shorter", ((CC, "max-age=1, s-maxage=3600"),), "fresh"),
    ("s-maxage-invalid", ((CC, "s-maxage=x, max-age=3600"),), "not_stored:stale"),  # 4.2.1: invalid = stale
    # 4.2.1: the first occurrence of a duplicated directive is used
    ("freshness-max-age-two-fresh-stale-sameline", ((CC, "max-age=1800, max-age=1"),), "fresh"),
    ("freshness-max-age-two-fresh-stale-sepline", ((CC, "max-age=1800"), (CC, "max-age=1")), "fresh"),
    ("freshness-max-age-two-stale-fresh-sameline", ((CC, "max-age=1, max-age=1800"),), "validate:stale"),
    # Expires (5.3), relative to Date (4.2.1)
    ("freshness-expires-future", (("Expires", 30 * 86400), ("Date", 0)), "fresh"),
    ("freshness-expires-past", (("Expires", -30 * 86400), ("Date", 0)), "not_stored:stale"),
    ("freshness-expires-present", (("Expires", 0), ("Date", 0)), "not_stored:stale"),
    ("freshness-expires-old-date", (("Expires", 300), ("Date", 400)), "not_stored:stale"),
    (
        "freshness-expires-relative-to-date",
        (("Expires", 3600), ("Date", 3598)),
        "validate:stale",
    ),  # 4.2.1: skew
    (
        "freshness-expires-wrong-case-weekday",
        (("Expires", "THU, 18 Aug 2050 02:01:18 GMT"), ("Date", 0)),
        "fresh",
    ),
    (
        "freshness-expires-wrong-case-month",
        (("Expires", "Thu, 18 AUG 2050 02:01:18 GMT"), ("Date", 0)),
        "fresh",
    ),
    ("freshness-expires-wrong-case-tz", (("Expires", "Thu, 18 Aug 2050 02:01:18 gMT"), ("Date", 0)), "fresh"),
    ("freshness-expires-invalid", (("Expires", "0"), ("Date", 0)), "not_stored:stale"),  # 5.3: "0" is past
    (
        "freshness-expires-invalid-utc",
        (("Expires", "Thu, 18 Aug 2050 02:01:18 UTC"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-2-digit-year",
        (("Expires", "Thu, 18 Aug 50 02:01:18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-no-comma",
        (("Expires", "Thu 18 Aug 2050 02:01:18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-multiple-spaces",
        (("Expires", "Thu, 18  Aug  2050 02:01:18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-date-dashes",
        (("Expires", "Thu, 18-Aug-2050 02:01:18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-time-periods",
        (("Expires", "Thu, 18 Aug 2050 02.01.18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    (
        "freshness-expires-invalid-1-digit-hour",
        (("Expires", "Thu, 18 Aug 2050 2:01:18 GMT"), ("Date", 0)),
        "not_stored:stale",
    ),
    ("freshness-expires-invalid-date", (("Date", "foo"), ("Expires", 10)), "fresh"),  # RFC 9110 6.6.1
    ("freshness-expires-age-slow-date", (("Date", -10), ("Expires", 10), ("Age", "25")), "not_stored:stale"),
    ("freshness-expires-age-fast-date", (("Date", 10), ("Expires", 20), ("Age", "15")), "not_stored:stale"),
    (
        "freshness-expires-first-of-two",
        (("Expires", 3600), ("Expires", -3600), ("Date", 0)),
        "fresh",
    ),  # 4.2.1
    # Age (5.1): one delta-seconds; an invalid value is ignored; of a list (members or lines) the first
    # member counts (RFC 9110 5.5)
    ("age-parse-nonnumeric", (("Date", 0), (CC, "max-age=3600"), ("Age", "abc")), "fresh"),
    ("age-parse-negative", (("Date", 0), (CC, "max-age=3600"), ("Age", "-7200")), "fresh"),
    ("age-parse-float", (("Date", 0), (CC, "max-age=3600"), ("Age", "7200.0")), "fresh"),
    (
        "age-parse-large-minus-one",
        (("Date", 0), (CC, "max-age=3600"), ("Age", "2147483647")),
        "not_stored:stale",
    ),
    (
        "age-parse-large",
        (("Date", 0), (CC, "max-age=3600"), ("Age", "2147483648")),
        "not_stored:stale",
    ),  # 1.2.2
    ("age-parse-larger", (("Date", 0), (CC, "max-age=3600"), ("Age", "2147483649")), "not_stored:stale"),
    ("age-parse-suffix", (("Date", 0), (CC, "max-age=3600"), ("Age", "7200, 0")), "not_stored:stale"),
    ("age-parse-suffix-nospace", (("Date", 0), (CC, "max-age=3600"), ("Age", "7200,0")), "not_stored:stale"),
    (
        "age-parse-suffix-twoline",
        (("Date", 0), (CC, "max-age=3600"), ("Age", "7200"), ("Age", "0")),
        "not_stored:stale",
    ),
    ("age-parse-prefix", (("Date", 0), (CC, "max-age=3600"), ("Age", "0, 7200")), "fresh"),
    ("age-parse-prefix-twoline", (("Date", 0), (CC, "max-age=3600"), ("Age", "0"), ("Age", "7200")), "fresh"),
    ("age-parse-dup-0", (("Date", 0), (CC, "max-age=3600"), ("Age", "0, 0")), "fresh"),
    ("age-parse-dup-old", (("Date", 0), (CC, "max-age=10000"), ("Age", "3600"), ("Age", "3600")), "fresh"),
    ("age-parse-first-invalid", (("Date", 0), (CC, "max-age=3600"), ("Age", "abc, 7200")), "fresh"),
    ("age-honoured", (("Date", 0), (CC, "max-age=3600"), ("Age", "3599")), "validate:stale"),  # 4.2.3
    ("age-apparent", (("Date", -3599), (CC, "max-age=3600")), "validate:stale"),  # 4.2.3 apparent_age
    # Pragma in a response is not a cache directive (5.4)
    ("pragma-response-no-cache", ((CC, "max-age=3600"), ("Pragma", "no-cache")), "fresh"),
    ("pragma-response-extension", ((CC, "max-age=3600"), ("Pragma", "unrecognised-extension")), "fresh"),
    ("pragma-response-no-cache-heuristic", (("Last-Modified", -10000), ("Pragma", "no-cache")), "fresh"),
    (
        "other-fresh-content-disposition-attachment",
        ((CC, "max-age=3600"), ("Content-Disposition", "attachment")),
        "fresh",
    ),
]


@pytest.mark.parametrize(("case", "resp", "expected"), FRESHNESS, ids=[r[0] for r in FRESHNESS])
def test_freshness(case: str, resp: tuple, expected: str) -> None:
    assert outcome(resp) == expected


def test_huge_max_age_is_capped_at_2_31() -> None:
    # RFC 9111 1.2.2
    assert store(((CC, "max-age=99999999999"),)).lifetime == DELTA_MAX


# ---------------------------------------------------------------------------------------------------------
# Heuristic freshness (4.2.2) and status codes (3; RFC 9110 15.1)
# ---------------------------------------------------------------------------------------------------------

HEURISTIC = [
    (200, (), "fresh"),  # RFC 9110 15.1: heuristically cacheable
    (203, (), "fresh"),
    (204, (), "fresh"),
    (404, (), "fresh"),
    (405, (), "fresh"),
    (410, (), "fresh"),
    (414, (), "not_stored:client_error"),  # 15.1 says heuristic, but it describes the request (CPDoS)
    (501, (), "fresh"),
    (300, (), "fresh"),
    (301, (), "fresh"),
    (308, (), "fresh"),
    (201, (), "not_stored:status"),  # 4.2.2: heuristics only for heuristically cacheable status codes
    (202, (), "not_stored:status"),
    (302, (), "not_stored:status"),
    (403, (), "not_stored:status"),
    (500, (), "not_stored:status"),
    (502, (), "not_stored:status"),
    (503, (), "not_stored:status"),
    (504, (), "not_stored:status"),
    (599, (), "not_stored:status"),
    (599, ((CC, "public"),), "fresh"),  # 4.2.2: or marked public (5.2.2.9)
]


@pytest.mark.parametrize(("status", "extra", "expected"), HEURISTIC)
def test_heuristic_freshness_by_status(status: int, extra: tuple, expected: str) -> None:
    # cache-tests heuristic-<status>-cached / -not_cached: Last-Modified a day before Date
    resp = (("Last-Modified", -86400), ("Date", 0), *extra)
    assert outcome(resp, status=status) == expected


HEURISTIC_LIFETIME = [
    # (Last-Modified offset, options, lifetime); 4.2.2: a fraction of Date - Last-Modified, capped
    (-86400, Options(), 8640.0),
    (-5, Options(), 0.5),
    (-86400 * 100, Options(), 86400.0),  # capped at heuristic_max
    (-1000, Options(heuristic_fraction=0.5), 500.0),
    (-1000, Options(heuristic_max=60.0), 60.0),
]


@pytest.mark.parametrize(("lm", "opts", "lifetime"), HEURISTIC_LIFETIME)
def test_heuristic_lifetime(lm: int, opts: Options, lifetime: float) -> None:
    f = store((("Last-Modified", lm), ("Date", 0)), opts=opts)
    assert f.heuristic and f.lifetime == pytest.approx(lifetime)


def test_no_heuristics_when_explicit_freshness_is_present() -> None:
    # RFC 9111 4.2.2: MUST NOT use heuristics when an explicit expiration time is present
    f = store(((CC, "max-age=5"), ("Last-Modified", -86400), ("Date", 0)))
    assert not f.heuristic and f.lifetime == 5


def test_last_modified_in_the_future_gives_no_heuristic_lifetime() -> None:
    # 4.2.2 (the fraction of a negative interval is no freshness); an ETag keeps it revalidatable
    f = store((("Last-Modified", 100), ("Date", 0), ("ETag", '"x"')))
    assert f.lifetime == 0 and not f.heuristic


STATUS_EXPLICIT = [200, 203, 204, 299, 301, 302, 303, 307, 308, 400, 404, 410, 499, 500, 502, 503, 504, 599]


@pytest.mark.parametrize("status", STATUS_EXPLICIT)
def test_any_final_status_with_explicit_freshness_is_reused(status: int) -> None:
    # RFC 9111 3: explicit freshness makes any final status storable (cache-tests status-<code>-fresh)
    assert outcome(FRESH_TEMPLATE, status=status) == "fresh"


@pytest.mark.parametrize("status", STATUS_EXPLICIT)
def test_stale_response_is_not_reused_as_is(status: int) -> None:
    # RFC 9111 4.2: a stale response is validated, never served as fresh (cache-tests status-<code>-stale)
    assert not outcome(STALE_TEMPLATE, status=status).startswith(("fresh", "stale"))


STORE_REFUSALS = [
    # (id, method, status, request headers, response headers, expected)
    ("method-post", b"POST", 200, (), FRESH_TEMPLATE, "not_stored:method"),  # 3: only GET stored here
    ("method-head", b"HEAD", 200, (), FRESH_TEMPLATE, "not_stored:method"),  # 4.3.5: HEAD only updates
    ("status-100", b"GET", 100, (), FRESH_TEMPLATE, "not_stored:status"),  # 3: final status only
    ("status-304", b"GET", 304, (), FRESH_TEMPLATE, "not_stored:status"),  # 4.3.4: a 304 updates
    ("status-206", b"GET", 206, (), FRESH_TEMPLATE, "not_stored:partial"),  # 3.3: never as the full response
    ("cc-resp-no-store", b"GET", 200, (), ((CC, "no-store"),), "not_stored:no_store"),  # 5.2.2.5
    ("cc-resp-no-store-case-insensitive", b"GET", 200, (), ((CC, "No-StOrE"),), "not_stored:no_store"),
    (
        "cc-resp-no-store-fresh",
        b"GET",
        200,
        (),
        ((CC, "max-age=10000, no-store"), ("Expires", 10000), ("Date", 0)),
        "not_stored:no_store",
    ),
    (
        "cc-resp-private-shared",
        b"GET",
        200,
        (),
        ((CC, "private, max-age=3600"),),
        "not_stored:private",
    ),  # 5.2.2.7
    ("cc-resp-private-case", b"GET", 200, (), ((CC, "PRIVATE, max-age=3600"),), "not_stored:private"),
    (
        "cc-resp-private-empty-list",
        b"GET",
        200,
        (),
        ((CC, 'private="", max-age=3600'),),
        "not_stored:private",
    ),
    (
        "must-understand-unknown",
        b"GET",
        299,
        (),
        ((CC, "must-understand, no-store, max-age=3600"),),
        "not_stored:must_understand",
    ),  # 5.2.2.3
    (
        "other-authorization",
        b"GET",
        200,
        (("Authorization", "FOO"),),
        (("Expires", 30 * 86400), ("Date", 0)),
        "not_stored:authorization",
    ),  # 3.5
    (
        "ccreq-no-store",
        b"GET",
        200,
        ((CC, "no-store"),),
        FRESH_TEMPLATE,
        "not_stored:request_no_store",
    ),  # 5.2.1.5
    (
        "vary-syntax-star",
        b"GET",
        200,
        (),
        ((CC, "max-age=5000"), ("Vary", "*")),
        "not_stored:vary_star",
    ),  # 4.1
    (
        "vary-syntax-foo-star",
        b"GET",
        200,
        (),
        ((CC, "max-age=5000"), ("Vary", "Foo, *")),
        "not_stored:vary_star",
    ),
    (
        "vary-syntax-star-star-lines",
        b"GET",
        200,
        (),
        ((CC, "max-age=5000"), ("Vary", "*"), ("Vary", "*")),
        "not_stored:vary_star",
    ),
    (
        "vary-syntax-empty-star-lines",
        b"GET",
        200,
        (),
        ((CC, "max-age=5000"), ("Vary", ""), ("Vary", "*")),
        "not_stored:vary_star",
    ),
    (
        "cc-resp-no-cache-no-validator",
        b"GET",
        200,
        (),
        ((CC, "max-age=10000, no-cache"), ("Expires", 10000), ("Date", 0)),
        "not_stored:no_cache",
    ),
    (
        "content-length-bad",
        b"GET",
        200,
        (),
        ((CC, "max-age=60"), ("Content-Length", "x")),
        "not_stored:incomplete",
    ),  # 3.3
    (
        "content-length-conflict",
        b"GET",
        200,
        (),
        ((CC, "max-age=60"), ("Content-Length", "5"), ("Content-Length", "6")),
        "not_stored:incomplete",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "status", "req", "resp", "expected"),
    STORE_REFUSALS,
    ids=[r[0] for r in STORE_REFUSALS],
)
def test_store_refusals(
    case: str, method: bytes, status: int, req: tuple, resp: tuple, expected: str
) -> None:
    assert outcome(resp, req=req, method=method, status=status) == expected


STORE_ALLOWED = [
    # (id, status, request headers, response headers, expected, options)
    (
        "cc-resp-private-private",
        200,
        (),
        ((CC, "private, max-age=3600"),),
        "fresh",
        Options(shared=False),
    ),  # 5.2.2.7
    (
        "private-qualified",
        200,
        (),
        ((CC, 'private="set-cookie", max-age=3600'),),
        "fresh",
        Options(),
    ),  # 5.2.2.7
    (
        "no-cache-qualified",
        200,
        (),
        ((CC, 'no-cache="a"'), (CC, "max-age=3600")),
        "fresh",
        Options(),
    ),  # 5.2.2.4
    (
        "must-understand-200",
        200,
        (),
        ((CC, "must-understand, no-store, max-age=3600"),),
        "fresh",
        Options(),
    ),  # 5.2.2.3
    ("must-understand-451", 451, (), ((CC, "must-understand, no-store, max-age=3600"),), "fresh", Options()),
    (
        "other-authorization-public",
        200,
        (("Authorization", "FOO"),),
        ((CC, "max-age=3600, public"), ("Date", 0)),
        "fresh",
        Options(),
    ),  # 3.5
    (
        "other-authorization-must-revalidate",
        200,
        (("Authorization", "FOO"),),
        ((CC, "max-age=3600, must-revalidate"), ("Date", 0)),
        "fresh",
        Options(),
    ),
    (
        "other-authorization-smaxage",
        200,
        (("Authorization", "FOO"),),
        ((CC, "s-maxage=3600"), ("Date", 0)),
        "fresh",
        Options(),
    ),
    (
        "authorization-private-cache",
        200,
        (("Authorization", "FOO"),),
        ((CC, "max-age=3600"),),
        "fresh",
        Options(shared=False),
    ),
    # issue 11: a cookie is set for one client: passed by default (Varnish builtin VCL); "strip" stores the
    # response without it (RFC 9111 3.1 lets a cache leave fields out); a qualified no-cache / private naming
    # Set-Cookie is the origin allowing exactly that (5.2.2.4, 5.2.2.7)
    (
        "other-set-cookie",
        200,
        (),
        ((CC, "max-age=3600"), ("Set-Cookie", "a=b")),
        "not_stored:set_cookie",
        Options(),
    ),
    (
        "set-cookie-strip",
        200,
        (),
        ((CC, "max-age=3600"), ("Set-Cookie", "a=b")),
        "fresh",
        Options(cache_set_cookie="strip"),
    ),
    (
        "set-cookie-no-cache-qualified",
        200,
        (),
        ((CC, 'max-age=3600, no-cache="Set-Cookie"'), ("Set-Cookie", "a=b")),
        "fresh",
        Options(),
    ),  # 5.2.2.4
    (
        "set-cookie-private-qualified",
        200,
        (),
        ((CC, 'max-age=3600, private="set-cookie"'), ("Set-Cookie", "a=b")),
        "fresh",
        Options(),
    ),  # 5.2.2.7
    (
        "set-cookie-no-cache-other-field",
        200,
        (),
        ((CC, 'max-age=3600, no-cache="x-a"'), ("Set-Cookie", "a=b")),
        "not_stored:set_cookie",
        Options(),
    ),  # 5.2.2.4 names another field
    (
        "set-cookie-private-shared-false",
        200,
        (),
        ((CC, "max-age=3600"), ("Set-Cookie", "a=b")),
        "not_stored:set_cookie",
        Options(shared=False),
    ),
    ("other-cookie", 200, (("Cookie", "a=b"),), ((CC, "max-age=3600"),), "fresh", Options()),
    (
        "private-s-maxage-non-shared",
        200,
        (),
        ((CC, "s-maxage=3600, max-age=1"),),
        "validate:stale",
        Options(shared=False),
    ),
    (
        "content-length-ok",
        200,
        (),
        ((CC, "max-age=60"), ("Content-Length", "5")),
        "fresh",
        Options(max_object_size=5),
    ),
]


@pytest.mark.parametrize(
    ("case", "status", "req", "resp", "expected", "opts"), STORE_ALLOWED, ids=[r[0] for r in STORE_ALLOWED]
)
def test_store_allowed(case: str, status: int, req: tuple, resp: tuple, expected: str, opts: Options) -> None:
    assert outcome(resp, req=req, status=status, opts=opts) == expected


BODY = [
    # (Content-Length, body_length, max_object_size or None for the default, reason); RFC 9111 3.3 and the
    # size limit (Options.max_object_size, 1 MiB by default: config.max_object_size's default)
    ("5", 5, None, None),
    ("5", 4, None, Reason.INCOMPLETE),
    ("5", 6, None, Reason.INCOMPLETE),
    (None, 10, 5, Reason.TOO_LARGE),
    ("10", None, 5, Reason.TOO_LARGE),
    (None, 5, 5, None),
    (str(1 << 20), None, None, None),  # the default limit, from Content-Length alone
    (str((1 << 20) + 1), None, None, Reason.TOO_LARGE),
    (None, (1 << 20) + 1, None, Reason.TOO_LARGE),  # from the body length alone
]


@pytest.mark.parametrize(("cl", "body", "limit", "reason"), BODY)
def test_body_checks(cl: str | None, body: int | None, limit: int | None, reason: Reason | None) -> None:
    resp = H((CC, "max-age=60"), *((("Content-Length", cl),) if cl else ()))
    f, why = decide_store(
        b"GET",
        200,
        [],
        resp,
        request_time=T,
        response_time=T,
        opts=DEFAULT if limit is None else Options(max_object_size=limit),
        body_length=body,
    )
    assert why is reason and (f is None) is (reason is not None)


FLAGS = [
    # (response Cache-Control, attribute, value)
    ("max-age=60, must-revalidate", "must_revalidate", True),  # 5.2.2.2
    ("max-age=60, proxy-revalidate", "must_revalidate", True),  # 5.2.2.8 (shared)
    ("s-maxage=60", "must_revalidate", True),  # 5.2.2.10 (shared)
    ("max-age=60", "must_revalidate", False),
    ("max-age=60, immutable", "immutable", True),  # RFC 8246
    ("max-age=60, stale-while-revalidate=30", "stale_while_revalidate", 30.0),  # RFC 5861 3
    ("max-age=60, stale-if-error=40", "stale_if_error", 40.0),  # RFC 5861 4
    ("max-age=60, stale-while-revalidate=x", "stale_while_revalidate", 0.0),
]


@pytest.mark.parametrize(("cc", "attr", "value"), FLAGS)
def test_freshness_flags(cc: str, attr: str, value: object) -> None:
    assert getattr(store(((CC, cc), ("ETag", '"e"'))), attr) == value


def test_proxy_revalidate_does_not_bind_a_private_cache() -> None:
    # RFC 9111 5.2.2.8: proxy-revalidate applies to shared caches only
    assert not store(((CC, "max-age=60, proxy-revalidate"),), opts=Options(shared=False)).must_revalidate


def test_no_cache_response_with_validator_is_stored_and_always_validated() -> None:
    # cache-tests cc-resp-no-cache-revalidate(-fresh): RFC 9111 5.2.2.4
    resp = ((CC, "max-age=10000, no-cache"), ("Expires", 10000), ("Date", 0), ("ETag", '"abcd"'))
    assert outcome(resp, pause=0) == "validate:no_cache"
    assert outcome(((CC, "No-CaChE"), ("ETag", '"abcd"')), pause=0) == "validate:no_cache"


# ---------------------------------------------------------------------------------------------------------
# Age calculation (4.2.3)
# ---------------------------------------------------------------------------------------------------------

AGE = [
    # (request_time, response_time, Date offset, Age, now, expected current age)
    (T, T, 0, None, T, 0.0),
    (T, T, 0, None, T + 10, 10.0),  # resident_time
    (T - 2, T, 0, None, T, 2.0),  # response_delay counts: corrected_age_value
    (T - 2, T, 0, "30", T, 32.0),  # Age + response_delay
    (T, T, -50, "30", T, 50.0),  # apparent_age wins over a smaller corrected_age_value
    (T, T, 50, None, T, 0.0),  # a Date in the future gives no negative age
    (T, T, 0, "5", T + 1, 6.0),
]


@pytest.mark.parametrize(("req_t", "resp_t", "date_off", "age", "now", "expected"), AGE)
def test_current_age(
    req_t: float, resp_t: float, date_off: int, age: str | None, now: float, expected: float
) -> None:
    resp = H((CC, "max-age=3600"), ("Date", date_off), *((("Age", age),) if age else ()))
    f, _ = decide_store(b"GET", 200, [], resp, request_time=req_t, response_time=resp_t)
    assert f is not None
    assert current_age(f, now) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------
# Request directives (5.2.1) and Pragma (5.4)
# ---------------------------------------------------------------------------------------------------------

REQUEST = [
    # (id, response headers, later request headers, pause, expected)
    ("ccreq-ma0", FRESH_TEMPLATE, ((CC, "max-age=0"),), 3, "validate:request_max_age"),  # 5.2.1.1
    ("ccreq-ma1", FRESH_TEMPLATE, ((CC, "max-age=1"),), 3, "validate:request_max_age"),
    ("ccreq-ma-ok", FRESH_TEMPLATE, ((CC, "max-age=100"),), 3, "fresh"),
    (
        "ccreq-magreaterage",
        ((CC, "max-age=3600"), ("Age", "1800")),
        ((CC, "max-age=600"),),
        0,
        "validate:request_max_age",
    ),
    ("ccreq-max-stale", ((CC, "max-age=1"),), ((CC, "max-stale=1000"),), 3, "stale"),  # 5.2.1.2
    (
        "ccreq-max-stale-age",
        ((CC, "max-age=1500"), ("Age", "2000"), ("ETag", '"e"')),
        ((CC, "max-stale=1000"),),
        0,
        "stale",
    ),
    # stale on arrival with nothing to revalidate with: not worth storing, even for a max-stale client
    (
        "stale-on-arrival",
        ((CC, "max-age=1500"), ("Age", "2000")),
        ((CC, "max-stale=1000"),),
        0,
        "not_stored:stale",
    ),
    ("ccreq-max-stale-bare", ((CC, "max-age=1"),), ((CC, "max-stale"),), 3000, "stale"),
    ("ccreq-max-stale-exceeded", ((CC, "max-age=1"),), ((CC, "max-stale=1"),), 10, "validate:stale"),
    (
        "ccreq-max-stale-must-revalidate",
        ((CC, "max-age=1, must-revalidate"),),
        ((CC, "max-stale"),),
        3,
        "validate:must_revalidate",
    ),  # 5.2.2.2
    (
        "ccreq-min-fresh",
        ((CC, "max-age=1500"),),
        ((CC, "min-fresh=2000"),),
        0,
        "validate:request_min_fresh",
    ),  # 5.2.1.3
    (
        "ccreq-min-fresh-age",
        ((CC, "max-age=1500"), ("Age", "1000")),
        ((CC, "min-fresh=1000"),),
        0,
        "validate:request_min_fresh",
    ),
    ("ccreq-min-fresh-ok", ((CC, "max-age=1500"),), ((CC, "min-fresh=100"),), 0, "fresh"),
    (
        "ccreq-no-cache",
        ((CC, "max-age=3600"),),
        ((CC, "no-cache"),),
        0,
        "validate:request_no_cache",
    ),  # 5.2.1.4
    ("ccreq-no-cache-case", ((CC, "max-age=3600"),), ((CC, "NO-CACHE"),), 0, "validate:request_no_cache"),
    (
        "ccreq-no-store-reuse",
        ((CC, "max-age=3600"),),
        ((CC, "no-store"),),
        0,
        "fresh",
    ),  # 5.2.1.5: only storing
    ("ccreq-oic-fresh", ((CC, "max-age=3600"),), ((CC, "only-if-cached"),), 0, "fresh"),  # 5.2.1.7
    (
        "ccreq-oic-stale",
        ((CC, "max-age=1"),),
        ((CC, "only-if-cached"),),
        3,
        "only_if_cached_fail:only_if_cached",
    ),
    (
        "ccreq-oic-no-cache",
        ((CC, "max-age=60"),),
        ((CC, "only-if-cached, no-cache"),),
        0,
        "only_if_cached_fail:only_if_cached",
    ),
    ("ccreq-oic-max-stale", ((CC, "max-age=1"),), ((CC, "only-if-cached, max-stale=60"),), 3, "stale"),
    ("ccreq-invalid-max-age-ignored", ((CC, "max-age=3600"),), ((CC, "max-age=abc"),), 3, "fresh"),
    (
        "pragma-request-no-cache",
        ((CC, "max-age=3600"),),
        (("Pragma", "no-cache"),),
        0,
        "validate:request_no_cache",
    ),  # 5.4
    (
        "pragma-request-with-cc",
        ((CC, "max-age=3600"),),
        (("Pragma", "no-cache"), (CC, "max-stale=5")),
        0,
        "fresh",
    ),
    (
        "pragma-request-extension",
        ((CC, "max-age=3600"),),
        (("Pragma", "unrecognised-extension"),),
        0,
        "fresh",
    ),
]


@pytest.mark.parametrize(("case", "resp", "later", "pause", "expected"), REQUEST, ids=[r[0] for r in REQUEST])
def test_request_directives(case: str, resp: tuple, later: tuple, pause: float, expected: str) -> None:
    assert outcome(resp, later=later, pause=pause) == expected


PARSE_REQUEST = [
    ((), RequestControl()),
    (((CC, "max-age=5, min-fresh=2"),), RequestControl(max_age=5.0, min_fresh=2.0)),  # 5.2.1.1, 5.2.1.3
    (((CC, "max-stale"),), RequestControl(max_stale=float("inf"))),  # 5.2.1.2: no argument = any staleness
    (((CC, "max-stale=x"),), RequestControl()),  # invalid argument: directive ignored
    (((CC, "no-store"), (CC, "only-if-cached")), RequestControl(no_store=True, only_if_cached=True)),
    (((CC, "stale-if-error=30"),), RequestControl(stale_if_error=30.0)),  # RFC 5861 4
    ((("Pragma", "no-cache"),), RequestControl(no_cache=True)),  # 5.4
    ((("Pragma", "x, no-cache"),), RequestControl(no_cache=True)),
    ((("Pragma", "no-cache-please"),), RequestControl()),
    ((("Pragma", "no-cache"), (CC, "max-age=5")), RequestControl(max_age=5.0)),  # 5.4: CC present wins
]


@pytest.mark.parametrize(("req", "expected"), PARSE_REQUEST)
def test_parse_request(req: tuple, expected: RequestControl) -> None:
    assert parse_request(H(*req)) == expected


# ---------------------------------------------------------------------------------------------------------
# Targeted cache control (RFC 9213)
# ---------------------------------------------------------------------------------------------------------

TARGETED = [
    ("cdn-max-age", ((CDN, "max-age=3600"),), "fresh"),  # RFC 9213 2.2
    ("cdn-max-age-max", ((CDN, "max-age=2147483648"),), "fresh"),
    ("cdn-max-age-max-plus", ((CDN, "max-age=99999999999"),), "fresh"),
    ("cdn-max-age-age", (("Date", 0), (CDN, "max-age=3600"), ("Age", "7200")), "not_stored:stale"),
    ("cdn-max-age-space-before-equals", ((CC, "max-age=1"), (CDN, "max-age =100")), "validate:stale"),  # 2.1
    ("cdn-max-age-space-after-equals", ((CC, "max-age=1"), (CDN, "max-age= 100")), "validate:stale"),
    ("cdn-max-age-0", ((CDN, "max-age=0"),), "not_stored:stale"),
    ("cdn-max-age-extension", ((CDN, "foobar, max-age=3600"),), "fresh"),
    ("cdn-max-age-case-insensitive", ((CDN, "MaX-aGe=3600"),), "not_stored:no_freshness"),  # RFC 8941 keys
    ("cdn-max-age-expires", ((CDN, "max-age=3600"), ("Expires", -10000), ("Date", 0)), "fresh"),
    (
        "cdn-max-age-cc-max-age-invalid-expires",
        ((CDN, "max-age=3600"), ("Expires", "0"), ("Date", 0)),
        "fresh",
    ),
    ("cdn-max-age-0-expires", ((CDN, "max-age=0"), ("Expires", 10000), ("Date", 0)), "not_stored:stale"),
    (
        "cdn-expires-ignored",
        ((CDN, "must-revalidate"), ("Expires", 10000), ("Date", 0)),
        "not_stored:no_freshness",
    ),
    ("cdn-max-age-short-cc-max-age", ((CC, "max-age=1"), (CDN, "max-age=3600")), "fresh"),
    ("cdn-max-age-long-cc-max-age", ((CC, "max-age=3600"), (CDN, "max-age=1")), "validate:stale"),
    (
        "cdn-private",
        ((CDN, "private"), (CC, "max-age=10000"), ("Expires", 10000), ("Date", 0)),
        "not_stored:private",
    ),
    (
        "cdn-no-cache",
        ((CDN, "no-cache"), (CC, "max-age=10000"), ("Expires", 10000), ("Date", 0)),
        "not_stored:no_cache",
    ),
    (
        "cdn-no-store-cc-fresh",
        ((CC, "max-age=10000"), (CDN, "no-store"), ("Expires", 10000), ("Date", 0)),
        "not_stored:no_store",
    ),
    ("cdn-fresh-cc-nostore", ((CC, "no-store"), (CDN, "max-age=10000")), "fresh"),
    (
        "cdn-cc-invalid-sh-type-unknown",
        ((CDN, "max-age=10000, &&&&&"), (CC, "no-store")),
        "not_stored:no_store",
    ),
    ("cdn-cc-invalid-sh-type-wrong", ((CDN, 'max-age="10000"'), (CC, "no-store")), "not_stored:no_store"),
    ("cdn-decimal-wrong-type", ((CDN, "max-age=1.5"), (CC, "no-store")), "not_stored:no_store"),
    ("cdn-empty-ignored", ((CDN, ""), (CC, "max-age=3600")), "fresh"),
    ("cdn-trailing-comma-invalid", ((CDN, "max-age=3600,"), (CC, "no-store")), "not_stored:no_store"),
    ("cdn-none-placeholder", ((CC, "no-store"), (CDN, "none")), "not_stored:no_freshness"),  # 3.1 example
    (
        "cdn-params-and-swr",
        ((CDN, "max-age=0;x=1, stale-while-revalidate=60"), ("ETag", '"e"')),
        "stale_revalidate",
    ),
    ("edgecore-over-cdn", ((ECC, "max-age=1"), (CDN, "max-age=3600")), "validate:stale"),  # order of targets
    ("edgecore-invalid-falls-to-cdn", ((ECC, "max-age=x"), (CDN, "max-age=3600")), "fresh"),
    ("edgecore-over-cc", ((CC, "private"), (ECC, "max-age=3600")), "fresh"),
]


@pytest.mark.parametrize(("case", "resp", "expected"), TARGETED, ids=[r[0] for r in TARGETED])
def test_targeted_cache_control(case: str, resp: tuple, expected: str) -> None:
    assert outcome(resp) == expected


def test_targeted_fields_are_configurable() -> None:
    resp = ((ECC, "max-age=1"), (CDN, "max-age=3600"))
    assert outcome(resp, opts=Options(targeted_fields=(b"cdn-cache-control",))) == "fresh"
    assert outcome(((CC, "max-age=3600"), (CDN, "no-store")), opts=Options(targeted_fields=())) == "fresh"


# ---------------------------------------------------------------------------------------------------------
# Serving stale (RFC 9111 4.2.4, RFC 5861)
# ---------------------------------------------------------------------------------------------------------

SWR = [
    # (id, response Cache-Control, later request headers, pause, expected)
    ("stale-while-revalidate", "max-age=0, stale-while-revalidate=3600", (), 1, "stale_revalidate"),  # 5861 3
    ("swr-window-over", "max-age=1, stale-while-revalidate=5", (), 10, "validate:stale"),
    ("swr-fresh", "max-age=10, stale-while-revalidate=5", (), 1, "fresh"),
    (
        "swr-must-revalidate",
        "max-age=1, must-revalidate, stale-while-revalidate=60",
        (),
        3,
        "validate:must_revalidate",
    ),
    ("swr-s-maxage", "s-maxage=1, stale-while-revalidate=60", (), 3, "validate:must_revalidate"),
    ("swr-no-cache", "max-age=1, no-cache, stale-while-revalidate=60", (), 3, "validate:no_cache"),
    (
        "swr-request-no-cache",
        "max-age=1, stale-while-revalidate=60",
        ((CC, "no-cache"),),
        3,
        "validate:request_no_cache",
    ),
    (
        "swr-request-max-age",
        "max-age=1, stale-while-revalidate=60",
        ((CC, "max-age=0"),),
        3,
        "validate:request_max_age",
    ),
    (
        "swr-request-min-fresh",
        "max-age=1, stale-while-revalidate=60",
        ((CC, "min-fresh=1"),),
        3,
        "validate:request_min_fresh",
    ),
    (
        "swr-request-max-stale-short",
        "max-age=1, stale-while-revalidate=60",
        ((CC, "max-stale=1"),),
        3,
        "validate:stale",
    ),
    (
        "swr-only-if-cached",
        "max-age=1, stale-while-revalidate=60",
        ((CC, "only-if-cached"),),
        3,
        "only_if_cached_fail:only_if_cached",
    ),
]


@pytest.mark.parametrize(("case", "cc", "later", "pause", "expected"), SWR, ids=[r[0] for r in SWR])
def test_stale_while_revalidate(case: str, cc: str, later: tuple, pause: float, expected: str) -> None:
    assert outcome(((CC, cc), ("ETag", '"abc"')), later=later, pause=pause) == expected


def test_swr_makes_a_response_without_validators_worth_storing() -> None:
    # RFC 5861 3: max-age=0 with stale-while-revalidate is stored to be served while refreshing
    assert outcome(((CC, "max-age=0, stale-while-revalidate=3600"),), pause=1) == "stale_revalidate"


SIE = [
    # (id, response Cache-Control, later request headers, pause, options, may serve stale on error?)
    ("stale-sie-503", "max-age=2, stale-if-error=60", (), 3, Options(), True),  # RFC 5861 4
    ("stale-if-error-cc-response-expired", "max-age=0, stale-if-error=1", (), 3, Options(), False),
    ("stale-close", "max-age=2", (), 3, Options(), False),  # 4.2.4: not without permission
    ("stale-close-default-window", "max-age=2", (), 3, Options(stale_if_error_default=60), True),
    ("stale-close-must-revalidate", "max-age=2, must-revalidate, stale-if-error=60", (), 3, Options(), False),
    (
        "stale-close-proxy-revalidate",
        "max-age=2, proxy-revalidate, stale-if-error=60",
        (),
        3,
        Options(),
        False,
    ),
    ("stale-close-no-cache", "max-age=2, no-cache, stale-if-error=60", (), 3, Options(), False),
    ("stale-close-s-maxage=2", "max-age=2, s-maxage=2, stale-if-error=60", (), 3, Options(), False),
    (
        "stale-close-default-must-revalidate",
        "max-age=2, must-revalidate",
        (),
        3,
        Options(stale_if_error_default=60),
        False,
    ),
    ("stale-if-error-cc-request", "max-age=0", ((CC, "stale-if-error=3600"),), 3, Options(), True),  # 5861 4
    ("stale-if-error-cc-request-expired", "max-age=0", ((CC, "stale-if-error=1"),), 3, Options(), False),
    ("sie-request-no-cache", "max-age=2, stale-if-error=60", ((CC, "no-cache"),), 3, Options(), False),
    ("sie-request-max-age", "max-age=2, stale-if-error=60", ((CC, "max-age=1"),), 3, Options(), False),
    ("sie-request-max-stale", "max-age=2, stale-if-error=60", ((CC, "max-stale=0"),), 3, Options(), False),
    ("sie-fresh", "max-age=60", (), 3, Options(), True),  # not stale at all
    ("sie-fresh-but-client-no-cache", "max-age=60", ((CC, "no-cache"),), 3, Options(), False),
]


@pytest.mark.parametrize(("case", "cc", "later", "pause", "opts", "expected"), SIE, ids=[r[0] for r in SIE])
def test_stale_if_error(
    case: str, cc: str, later: tuple, pause: float, opts: Options, expected: bool
) -> None:
    f = store(((CC, cc), ("ETag", '"e"')), opts=opts)
    assert may_serve_stale_on_error(f, parse_request(H(*later)), T + pause) is expected


# ---------------------------------------------------------------------------------------------------------
# Storing header fields (3.1, 5.2.2.4, 5.2.2.7; RFC 9110 7.6.1)
# ---------------------------------------------------------------------------------------------------------

STORABLE = [
    # (response headers, strip, field names stored)
    (
        ((CC, "max-age=1"), ("Proxy-Authenticate", 'Basic realm="p"'), ("Keep-Alive", "5"), ("x", "1")),
        (),
        ["cache-control", "x"],
    ),  # RFC 9110 11.7.1, 7.6.1: fields.HOP_BY_HOP, Proxy-Authenticate included
    (
        ((CC, "max-age=1"), ("Connection", "Keep-Alive, X-A"), ("x-a", "1"), ("c", "3")),
        (),
        ["cache-control", "c"],
    ),  # RFC 9110 7.6.1: Connection-listed, case-insensitive
    (
        ((CC, "max-age=1"), ("Connection", "a, b"), ("a", "1"), ("b", "2"), ("c", "3")),
        (),
        ["cache-control", "c"],
    ),
    (
        ((CC, 'no-cache="a"'), ("a", "1"), ("b", "2"), (CC, "max-age=3600")),
        (),
        ["cache-control", "b", "cache-control"],
    ),
    (((CC, 'no-cache="a, b"'), ("a", "1"), ("b", "2"), ("c", "3")), (), ["cache-control", "c"]),
    (((CC, 'private="Set-Cookie"'), ("Set-Cookie", "a=b"), ("x", "1")), (), ["cache-control", "x"]),
    (((CDN, 'no-cache="a"'), ("a", "1"), ("x", "1")), (), ["cdn-cache-control", "x"]),
    (
        (
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Trailer", "x"),
            ("TE", "t"),
        ),
        (),
        [],
    ),
    ((("Proxy-Connection", "keep-alive"), ("Content-Type", "text/plain")), (), ["content-type"]),
    (
        (("Set-Cookie", "a=b"), ("Set-Cookie2", "a=b"), ("WWW-Authenticate", "x")),
        (),
        ["set-cookie", "set-cookie2", "www-authenticate"],
    ),
    ((("Set-Cookie", "a=b"), ("x", "1")), (b"set-cookie",), ["x"]),  # deployment choice
    ((("Age", "5"), ("Date", 0)), (), ["age", "date"]),
]


@pytest.mark.parametrize(("resp", "strip", "names"), STORABLE)
def test_storable_headers(resp: tuple, strip: tuple, names: list[str]) -> None:
    assert [n.decode() for n, _ in storable_headers(H(*resp), strip)] == names


# ---------------------------------------------------------------------------------------------------------
# Validation: upstream (4.3.1), 304 updates (4.3.4), HEAD (4.3.5); the client's conditionals are in
# test_conditional.py
# ---------------------------------------------------------------------------------------------------------

VALIDATORS = [
    ((("ETag", '"abc"'),), [(b"if-none-match", b'"abc"')]),  # RFC 9111 4.3.1
    ((("ETag", 'W/"abc"'),), [(b"if-none-match", b'W/"abc"')]),
    (
        (("ETag", "abcdef"),),
        [(b"if-none-match", b'"abcdef"')],
    ),  # cache-tests conditional-etag-strong-generate-unquoted
    (
        (("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),),
        [(b"if-modified-since", b"Sun, 06 Nov 1994 08:49:37 GMT")],
    ),
    (
        (("ETag", '"e"'), ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")),
        [(b"if-none-match", b'"e"'), (b"if-modified-since", b"Sun, 06 Nov 1994 08:49:37 GMT")],
    ),
    ((("Last-Modified", "yesterday"),), []),  # not a date: no If-Modified-Since
    ((("Date", 0),), []),
]


@pytest.mark.parametrize(("stored", "expected"), VALIDATORS)
def test_validators_for(stored: tuple, expected: list) -> None:
    assert validators_for(H(*stored)) == expected


MATCHES_304 = [
    # (stored, 304 headers, applies?)  RFC 9111 4.3.4
    ((("ETag", '"a"'),), (("ETag", '"a"'),), True),
    ((("ETag", '"a"'),), (("ETag", '"b"'),), False),
    ((("ETag", 'W/"a"'),), (("ETag", '"a"'),), False),  # a strong validator in the 304 needs a strong match
    ((("ETag", '"a"'),), (("ETag", 'W/"a"'),), True),  # a weak one matches weakly
    ((), (("ETag", '"a"'),), False),
    ((("Last-Modified", -10),), (("Last-Modified", -10),), True),
    ((("Last-Modified", -10),), (("Last-Modified", -20),), False),
    ((("ETag", '"a"'),), (), True),  # neither: applies to the one validated
]


@pytest.mark.parametrize(("stored", "new", "expected"), MATCHES_304)
def test_matches_304(stored: tuple, new: tuple, expected: bool) -> None:
    assert matches_304(H(*stored), H(*new)) is expected


UPDATE_FIELDS = [
    # cache-tests update304: 304-{lm,etag}-update-{response,stored}-<field>; RFC 9111 3.2, 4.3.4
    ("Test-Header", "a", "b"),
    ("X-Test-Header", "a", "b"),
    ("Content-Foo", "a", "b"),
    ("Content-Type", "text/plain", "text/plain;charset=utf-8"),
    ("Content-MD5", "rL0Y20zC+Fzt72VPzMSk2A==", "N7UdGUp1E+RbVvZSTy1R8g=="),
    ("Content-Location", "/foo", "/bar"),
    ("Content-Security-Policy", "default-src 'self'", "default-src 'self' cdn.example.com"),
    ("X-Frame-Options", "deny", "sameorigin"),
    ("X-XSS-Protection", "1", "1; mode=block"),
    ("Expires", "Thu, 18 Aug 2050 02:01:18 GMT", "Fri, 19 Aug 2050 02:01:18 GMT"),
    ("Clear-Site-Data", "cache", "cookies"),
    ("Public-Key-Pins", "a", "b"),
    ("Set-Cookie", "a=b", "a=c"),
    ("Set-Cookie2", "a=b", "a=c"),
]


@pytest.mark.parametrize(("field", "old", "new"), UPDATE_FIELDS)
def test_merge_304_updates_fields(field: str, old: str, new: str) -> None:
    stored = H((CC, "max-age=1"), ("Date", -10), ("ETag", '"e"'), (field, old))
    merged = merge_304(stored, H((CC, "max-age=3600"), ("Date", 0), ("ETag", '"e"'), (field, new)))
    key = field.lower().encode()
    assert [v for n, v in merged if n == key] == [new.encode()]
    assert [v for n, v in merged if n == b"cache-control"] == [b"max-age=3600"]


def test_merge_304_keeps_omitted_fields_and_framing() -> None:
    # RFC 9111 4.3.4 (304-lm-use-stored-Test-Header) and 3.2 (Content-Length is never updated)
    stored = H((CC, "max-age=1"), ("Date", -10), ("Age", "7"), ("Test-Header", "A"), ("Content-Length", "10"))
    merged = merge_304(
        stored, H((CC, "max-age=3600"), ("Content-Length", "0"), ("Connection", "x"), ("x", "1"))
    )
    fields = dict(merged)
    assert fields[b"test-header"] == b"A" and fields[b"content-length"] == b"10"
    assert b"date" not in fields and b"age" not in fields  # described the old exchange
    assert b"x" not in fields and b"connection" not in fields  # RFC 9110 7.6.1


def test_merge_304_then_decide_store_freshens_the_entry() -> None:
    # RFC 9111 4.3.4: the stored response is freshened from the 304
    stored = H((CC, "max-age=1"), ("Date", -100), ("ETag", '"e"'))
    merged = merge_304(stored, H((CC, "max-age=3600"), ("Date", 0), ("ETag", '"e"')))
    f, _ = decide_store(b"GET", 200, [], merged, request_time=T, response_time=T)
    assert f is not None and decide_use(f, RequestControl(), T + 60) == (Use.FRESH, None)


HEAD = [
    # (status, stored, HEAD response, updated Template-A or None)  RFC 9111 4.3.5
    (200, (("Template-A", "1"),), (("Template-A", "2"), (CC, "max-age=1000")), b"2"),
    (200, (("Template-A", "1"),), ((CC, "max-age=1000"),), b"1"),  # head-200-retain
    (200, (("ETag", '"a"'), ("Template-A", "1")), (("ETag", '"b"'), ("Template-A", "2")), None),
    (200, (("ETag", '"a"'), ("Template-A", "1")), (("ETag", '"a"'), ("Template-A", "2")), b"2"),
    (200, (("Content-Length", "10"), ("Template-A", "1")), (("Content-Length", "11"),), None),
    (200, (("Last-Modified", -10), ("Template-A", "1")), (("Last-Modified", -5),), None),
    (410, (("Template-A", "1"),), (("Template-A", "2"),), None),  # only a 200 updates
]


@pytest.mark.parametrize(("status", "stored", "head", "expected"), HEAD)
def test_head_update(status: int, stored: tuple, head: tuple, expected: bytes | None) -> None:
    merged = head_update(status, H(*stored), H(*head))
    if expected is None:
        assert merged is None
    else:
        assert merged is not None and dict(merged)[b"template-a"] == expected


# ---------------------------------------------------------------------------------------------------------
# Invalidation (4.4)
# ---------------------------------------------------------------------------------------------------------

INVALIDATION = [
    # (id, method, status, request target, response headers, targets)
    ("invalidate-POST", b"POST", 200, b"/r", (), [b"/r"]),
    ("invalidate-PUT", b"PUT", 201, b"/r", (), [b"/r"]),
    ("invalidate-DELETE", b"DELETE", 204, b"/r", (), [b"/r"]),
    ("invalidate-M-SEARCH", b"M-SEARCH", 200, b"/r", (), [b"/r"]),  # unknown safety counts as unsafe
    ("invalidate-POST-redirect", b"POST", 303, b"/r", (), [b"/r"]),  # 3xx is not an error
    ("invalidate-POST-failed", b"POST", 500, b"/r", (), []),  # only non-error responses
    ("invalidate-POST-4xx", b"POST", 404, b"/r", (), []),
    ("get-never-invalidates", b"GET", 200, b"/r", (("Location", "/x"),), []),
    ("options-safe", b"OPTIONS", 200, b"/r", (), []),
    ("invalidate-POST-location", b"POST", 200, b"/r", (("Location", "/loc"),), [b"/r", b"/loc"]),
    ("invalidate-POST-cl", b"POST", 200, b"/r", (("Content-Location", "/cl?x=1"),), [b"/r", b"/cl?x=1"]),
    (
        "both",
        b"POST",
        200,
        b"/a/r",
        (("Location", "loc"), ("Content-Location", "cl")),
        [b"/a/r", b"/a/loc", b"/a/cl"],
    ),
    (
        "absolute-same-origin",
        b"POST",
        200,
        b"/r",
        (("Location", "http://Example.com:80/loc"),),
        [b"/r", b"/loc"],
    ),
    ("https-same-host", b"POST", 200, b"/r", (("Location", "https://example.com/loc"),), [b"/r", b"/loc"]),
    (
        "other-origin",
        b"POST",
        200,
        b"/r",
        (("Location", "http://evil.example/loc"),),
        [b"/r"],
    ),  # same origin only
    ("other-port", b"POST", 200, b"/r", (("Location", "http://example.com:8080/loc"),), [b"/r"]),
    ("other-scheme", b"POST", 200, b"/r", (("Location", "ftp://example.com/loc"),), [b"/r"]),
    ("empty-location", b"POST", 200, b"/r", (("Location", ""),), [b"/r"]),
]


@pytest.mark.parametrize(
    ("case", "method", "status", "target", "resp", "expected"), INVALIDATION, ids=[r[0] for r in INVALIDATION]
)
def test_invalidation_targets(
    case: str, method: bytes, status: int, target: bytes, resp: tuple, expected: list
) -> None:
    assert invalidation_targets(method, status, b"example.com", target, H(*resp)) == expected


def test_memoised_parses_are_not_shared_with_callers() -> None:
    # the bounded memo behind parse_cache_control must not leak mutations into later parses
    d, _ = parse_cache_control([b"public, max-age=3600"])
    d[b"no-store"] = None
    assert b"no-store" not in parse_cache_control([b"public, max-age=3600"])[0]
    assert outcome(((CC, "public, max-age=3600"),)) == "fresh"


# ---------------------------------------------------------------------------------------------------------
# POST responses (RFC 9110 9.3.3): stored for later GETs only with explicit freshness and a Content-Location
# that is the request's own target URI
# ---------------------------------------------------------------------------------------------------------

POST_STORE = [
    # (response fields, stored?)
    (((CC, "max-age=60"), ("Content-Location", "/a?b=1")), True),
    (((CC, "max-age=60"), ("Content-Location", "http://h/a?b=1")), True),  # absolute, same origin
    (((CC, "max-age=60"), ("Content-Location", "http://H:80/%61?b=1")), True),  # RFC 9110 4.2.3 equivalent
    (((CC, "max-age=60"), ("Content-Location", "/a?b=2")), False),  # another resource
    (((CC, "max-age=60"), ("Content-Location", "http://other/a?b=1")), False),  # another origin
    (((CC, "max-age=60"),), False),  # no Content-Location
    (
        (("Content-Location", "/a?b=1"), ("Last-Modified", "Mon, 01 Jan 2001 00:00:00 GMT")),
        False,
    ),  # heuristic
    ((("Content-Location", "/a?b=1"), ("Expires", "Mon, 01 Jan 2100 00:00:00 GMT")), True),  # Expires
]


@pytest.mark.parametrize(("resp", "stored"), POST_STORE)
def test_post_response_store(resp: tuple, stored: bool) -> None:
    headers = [(n.lower().encode(), v.encode()) for n, v in resp]
    fresh, why = decide_store(
        b"POST", 200, [], headers, request_time=T, response_time=T, post_target=(b"h", b"/a?b=1")
    )
    assert (fresh is not None) is stored
    assert stored or why is Reason.METHOD


# ---------------------------------------------------------------------------------------------------------
# Fast paths: a single short Cache-Control line goes through the memoised parse (decide_store,
# storable_headers); several lines, or one over the memo's length limit, through the general parse. RFC 9110
# 5.3: the same members over one line or several are one field value, so the store decision must agree.
# (storable_headers reads each line on its own: only the one-line forms are compared for it.)
# ---------------------------------------------------------------------------------------------------------

_MEMBERS = [
    "public",
    "private",
    'private="x-foo"',
    "no-cache",
    'no-cache="x-foo, Set-Cookie"',
    "no-store",
    "max-age=60",
    "max-age=0",
    "max-age =5",
    'max-age="30"',
    "s-maxage=20",
    "s-maxage=x",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "immutable",
    "stale-while-revalidate=30",
    "stale-if-error=60",
    "x-ext=1",
]


def _store(cc_lines: list[str], status: int, auth: bool) -> tuple:
    resp = [
        (b"date", date(0)),
        (b"x-foo", b"1"),
        (b"set-cookie", b"a=b"),
        *((b"cache-control", line.encode()) for line in cc_lines),
        (b"etag", b'"e"'),
    ]
    req = [(b"authorization", b"Basic eA==")] if auth else []
    fresh, why = decide_store(b"GET", status, req, resp, request_time=T, response_time=T + 1)
    kept = [f for f in storable_headers(resp) if f[0] != b"cache-control"]
    return (fresh, why), kept


@given(
    members=st.lists(st.sampled_from(_MEMBERS), max_size=5),
    status=st.sampled_from([200, 302, 404, 599]),
    auth=st.booleans(),
    cut=st.integers(min_value=0, max_value=5),
)
def test_one_cache_control_line_or_several_decide_alike(
    members: list[str], status: int, auth: bool, cut: int
) -> None:
    one, one_kept = _store([", ".join(members)], status, auth)  # the memoised fast path
    two, _ = _store([", ".join(members[:cut]), ", ".join(members[cut:])], status, auth)  # the general path
    long, long_kept = _store([", ".join(members) + "," * 300], status, auth)  # over the memo's length limit
    assert one == two == long
    assert one_kept == long_kept


# ---------------------------------------------------------------------------------------------------------
# Would the stored head differ from the client's (5.2.2.4, 5.2.2.7), how long an entry is kept (RFC 5861,
# 4.3), which upstream errors stale-if-error covers (RFC 5861 4)
# ---------------------------------------------------------------------------------------------------------

HEAD_DIFFERS = [
    # (response fields, differs?)
    (((CC, "max-age=60"),), False),
    ((), False),
    (((CC, 'max-age=60, no-cache="set-cookie"'),), True),  # 5.2.2.4: the named field is not stored
    (((CC, "private=set-cookie, max-age=60"),), True),  # 5.2.2.7: token form of the qualified directive
    (((CC, 'PRIVATE="x-a"'),), True),  # 5.2: directive names are case-insensitive
    (((CC, "max-age=60"), (CC, 'no-cache="x-a"')), True),  # RFC 9110 5.3: any line
    (((CDN, 'private="x-a"'), (CC, "max-age=60")), True),  # RFC 9213: a targeted field too
    (((CC, "no-cache, max-age=60"),), False),  # 5.2.2.4: unqualified: the whole response, stored as is
    (((CC, 'no-cache="", max-age=60'),), False),  # an empty list names no field
    (((CC, 'x-ext="no-cache=\\"a\\"", max-age=60'),), False),  # 5.2: inside a quoted string, not a directive
    (((CC, "max-age=60, " + "x" * 300 + ', private="x-a"'),), True),  # a long line (not memoised)
    (((CC, "max-age=60, " + "x" * 300),), False),
    ((("X-Note", 'no-cache="a"'),), False),  # only cache-control fields count
]


@pytest.mark.parametrize(("resp", "expected"), HEAD_DIFFERS)
def test_stored_head_differs(resp: tuple, expected: bool) -> None:
    assert stored_head_differs(H(*resp)) is expected


def _fresh(lifetime: float, swr: float = 0.0, sie: float = 0.0, initial_age: float = 0.0) -> Freshness:
    return Freshness(lifetime, initial_age, T, stale_while_revalidate=swr, stale_if_error=sie)


RETENTION = [
    # (freshness, has validators, now, stale_keep, seconds kept past fresh_until)
    # RFC 9111 4.2.4 / config stale_keep: kept to be served stale on error, with or without validators
    (_fresh(60), False, T, STALE_KEEP, 600.0),
    (_fresh(60), False, T, 0.0, 0.0),  # stale_keep 0, no validators, no stale window: gone when stale
    (_fresh(60, swr=30), False, T, 0.0, 30.0),  # RFC 5861 3
    (_fresh(60, swr=30, sie=90), False, T, 0.0, 90.0),  # RFC 5861 4: the longer window
    (_fresh(60, sie=900), False, T, STALE_KEEP, 900.0),  # RFC 5861 4: a window longer than stale_keep
    (_fresh(60), True, T, STALE_KEEP, 600.0),  # 4.3: kept to be revalidated
    (_fresh(60, sie=3600), True, T, STALE_KEEP, 3600.0),
    (_fresh(60), True, T, 120.0, 120.0),  # stale_keep is configurable
    (_fresh(0, initial_age=10), True, T + 5000, 0.0, 5011.0),  # stale on arrival: kept until now + 1
    (_fresh(0), False, T + 5000, 0.0, 0.0),
]


@pytest.mark.parametrize(("f", "validators", "now", "keep", "expected"), RETENTION)
def test_retention(f: Freshness, validators: bool, now: float, keep: float, expected: float) -> None:
    assert retention(f, validators, now, keep) == pytest.approx(expected)


def test_retention_default_keep() -> None:
    assert STALE_KEEP == 600.0 and retention(_fresh(60), True, T) == 600.0


ERROR_STATUS = [
    (500, True),  # RFC 5861 4: 500, 502, 503, 504
    (502, True),
    (503, True),
    (504, True),
    (501, False),
    (404, False),
    (200, False),
    (505, False),
]


@pytest.mark.parametrize(("status", "expected"), ERROR_STATUS)
def test_serves_stale_on(status: int, expected: bool) -> None:
    assert serves_stale_on(status) is expected and (status in ERROR_STATUSES) is expected


def test_options_for_config() -> None:
    cfg = build(
        {"upstream": ["http://a:1"], "max_object_size": "2KiB", "cdn_cache_control": ["cdn-cache-control"]}
    )
    opts = options_for(cfg)
    assert opts.max_object_size == 2048 and opts.targeted_fields == (b"cdn-cache-control",)
    assert Options().max_object_size == 1 << 20 == build({"upstream": ["http://a:1"]}).max_object_size


# ---------------------------------------------------------------------------------------------------------
# Responses about the request (issue 11; CPDoS, CCS 2019): 400 (RFC 9110 15.5.1), 413 (15.5.14),
# 414 (15.5.15),
# 431 (RFC 6585 5) are stored only with explicit freshness (RFC 9111 4.2.1), never with "never"
# ---------------------------------------------------------------------------------------------------------

LM_DAY = (("Last-Modified", -86400), ("Date", 0))
CLIENT_ERRORS = [
    # (status, response fields, cache_client_errors, expected)
    *(
        (code, LM_DAY, "explicit", "not_stored:client_error") for code in (400, 413, 414, 431)
    ),  # 4.2.2 heuristic
    *(
        (code, ((CC, "public"), *LM_DAY), "explicit", "not_stored:client_error") for code in (400, 431)
    ),  # 4.2.2
    *((code, ((CC, "max-age=60"),), "explicit", "fresh") for code in (400, 413, 414, 431)),  # 4.2.1 max-age
    (400, ((CC, "s-maxage=60"),), "explicit", "fresh"),  # 4.2.1 s-maxage
    (400, (("Expires", 60), ("Date", 0)), "explicit", "fresh"),  # 4.2.1 Expires
    *((code, ((CC, "max-age=60"),), "never", "not_stored:client_error") for code in (400, 413, 414, 431)),
    (404, LM_DAY, "never", "fresh"),  # RFC 9110 15.1: a 404 describes the resource: heuristic as before
    (410, ((CC, "max-age=60"),), "never", "fresh"),
    (401, ((CC, "max-age=60"),), "never", "fresh"),  # explicit freshness: stored as before
]


@pytest.mark.parametrize(("status", "resp", "mode", "expected"), CLIENT_ERRORS)
def test_client_error_responses(status: int, resp: tuple, mode: str, expected: str) -> None:
    assert outcome(resp, status=status, opts=Options(cache_client_errors=mode)) == expected


def test_options_for_reads_the_security_keys() -> None:
    cfg = build({"cache_set_cookie": "strip", "cache_client_errors": "never"}, require_upstream=False)
    o = options_for(cfg)
    assert (o.cache_set_cookie, o.cache_client_errors, o.strip_on_store) == (
        "strip",
        "never",
        (b"set-cookie",),
    )
    assert options_for(build({}, require_upstream=False)).strip_on_store == ()


@pytest.mark.parametrize(
    ("resp", "strip", "differs"),
    [
        (((CC, "max-age=60"), ("Set-Cookie", "a=b")), (b"set-cookie",), True),  # RFC 9111 3.1: left out
        (((CC, "max-age=60"), ("Set-Cookie", "a=b")), (), False),
        (((CC, "max-age=60"),), (b"set-cookie",), False),
    ],
)
def test_stored_head_differs_with_strip(resp: tuple, strip: tuple, differs: bool) -> None:
    assert stored_head_differs(H(*resp), strip) is differs
    names = [n for n, _ in storable_headers(H(*resp), strip)]
    assert (b"set-cookie" in names) is (bool(resp[1:]) and not strip)


def test_options_for_config_stale_keys() -> None:
    cfg = build(
        {
            "upstream": ["http://a:1"],
            "stale_if_error": 30,
            "stale_while_revalidate": "5",
            "stale_keep": 120,
        }
    )
    opts = options_for(cfg)
    assert (opts.stale_if_error_default, opts.stale_while_revalidate_default, opts.stale_keep) == (30, 5, 120)
    d = options_for(build({"upstream": ["http://a:1"]}))
    assert (d.stale_if_error_default, d.stale_while_revalidate_default, d.stale_keep) == (60, 0, STALE_KEEP)


OPERATOR_STALE = [
    # (id, response Cache-Control, options, request pause, (use, may serve stale on error), stored?)
    # RFC 5861 3: the operator's stale-while-revalidate applies when the response names none
    (
        "swr-default",
        "max-age=2",
        Options(stale_while_revalidate_default=30),
        3,
        ("stale_revalidate", False),
        True,
    ),
    (
        "swr-own-wins",
        "max-age=2, stale-while-revalidate=0",
        Options(stale_while_revalidate_default=30),
        3,
        ("validate:stale", False),
        True,
    ),
    # RFC 5861 4 / RFC 9111 4.2.4: the operator's stale-if-error; the response's own value wins
    ("sie-default", "max-age=2", Options(stale_if_error_default=60), 30, ("validate:stale", True), True),
    (
        "sie-own-wins",
        "max-age=2, stale-if-error=1",
        Options(stale_if_error_default=60),
        30,
        ("validate:stale", False),
        True,
    ),
    ("sie-default-no-cache-request", "max-age=2", Options(stale_if_error_default=60), 3, None, True),
    # 4.2.4: never against must-revalidate / no-cache, whatever the operator says
    (
        "sie-default-must-revalidate",
        "max-age=2, must-revalidate",
        Options(stale_if_error_default=60),
        3,
        ("validate:must_revalidate", False),
        True,
    ),
    # stale on arrival: the operator's defaults do not make it worth storing (3: nothing to reuse it for)
    (
        "stale-on-arrival",
        "max-age=0",
        Options(stale_if_error_default=60, stale_while_revalidate_default=9),
        0,
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "cc", "opts", "pause", "expected", "stored"), OPERATOR_STALE, ids=[r[0] for r in OPERATOR_STALE]
)
def test_operator_stale_defaults(
    case: str, cc: str, opts: Options, pause: float, expected: tuple | None, stored: bool
) -> None:
    f, why = decide_store(b"GET", 200, [], H((CC, cc)), request_time=T, response_time=T, opts=opts)
    assert (f is not None) is stored, why
    if f is None:
        return
    if expected is None:  # the request forbids stale (RFC 9111 5.2.1.4)
        assert not may_serve_stale_on_error(f, parse_request(H((CC, "no-cache"))), T + pause)
        return
    use, reason = decide_use(f, parse_request([]), T + pause)
    got = use.name.lower() + (":" + reason.name.lower() if reason is not None else "")
    assert (got, may_serve_stale_on_error(f, parse_request([]), T + pause)) == expected


# decide_lease: with an invalidation bus, a stored response is reused without the origin only within the
# lease (docs/invalidation.md "Lease"); past it, what would be served is validated (RFC 9111 4.3.1), or 504
# under only-if-cached (RFC 9111 5.2.1.7); what already goes upstream is left alone.
_OIC = RequestControl(only_if_cached=True)
LEASE_ROWS = [
    # (use, reason, lease_until, now, request) -> (use, reason)          RFC / doc
    ((Use.FRESH, None, None, 10.0, RequestControl()), (Use.FRESH, None)),  # no bus: as decided (4.2)
    ((Use.FRESH, None, 11.0, 10.0, RequestControl()), (Use.FRESH, None)),  # within the lease (4.2)
    ((Use.FRESH, None, 10.0, 10.0, RequestControl()), (Use.VALIDATE, Reason.UNVERIFIED)),  # at its end: 4.3.1
    ((Use.FRESH, None, 0.0, 10.0, RequestControl()), (Use.VALIDATE, Reason.UNVERIFIED)),  # never confirmed
    ((Use.STALE, None, 5.0, 10.0, RequestControl()), (Use.VALIDATE, Reason.UNVERIFIED)),  # max-stale: 4.3.1
    ((Use.STALE_REVALIDATE, None, 5.0, 10.0, RequestControl()), (Use.VALIDATE, Reason.UNVERIFIED)),  # 5861 3
    ((Use.VALIDATE, Reason.STALE, 5.0, 10.0, RequestControl()), (Use.VALIDATE, Reason.STALE)),  # as is, 4.3.1
    ((Use.FRESH, None, 5.0, 10.0, _OIC), (Use.ONLY_IF_CACHED_FAIL, Reason.ONLY_IF_CACHED)),  # 5.2.1.7
    (
        (Use.ONLY_IF_CACHED_FAIL, Reason.ONLY_IF_CACHED, 5.0, 10.0, _OIC),
        (Use.ONLY_IF_CACHED_FAIL, Reason.ONLY_IF_CACHED),
    ),
]


@pytest.mark.parametrize(("args", "want"), LEASE_ROWS)
def test_decide_lease(args, want):
    from edgecore.policy import decide_lease

    assert decide_lease(*args) == want
