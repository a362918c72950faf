"""Tables for edgecore.cachestatus: the Cache-Status member of this cache (RFC 9211 2) and the one spelling
of every detail (RFC 9211 2.8). Each row cites the section it checks."""

from __future__ import annotations

import re

import pytest

from edgecore import cachestatus, errors
from edgecore.cachestatus import (
    ALL_DETAILS,
    COLLAPSED_UNCACHEABLE,
    ERROR_DETAILS,
    FWD_REASONS,
    HIT_FOR_MISS,
    ONLY_IF_CACHED,
    PROXY_DETAILS,
    REQUEST_NO_STORE,
    STALE_IF_ERROR,
    STALE_WHILE_REVALIDATE,
    detail,
    error_detail,
    render,
)
from edgecore.policy import Reason

# ---------------------------------------------------------------------------------------------------------
# render (RFC 9211 2): parameters in one order (hit, fwd, fwd-status, stored, collapsed, ttl, detail)
# ---------------------------------------------------------------------------------------------------------

RENDER = [
    # the values on the wire today
    ({"hit": True, "ttl": 42}, b"edgecore; hit; ttl=42"),  # RFC 9211 2.1, 2.4
    (
        {"fwd": b"uri-miss", "fwd_status": 200, "stored": True, "ttl": 60},
        b"edgecore; fwd=uri-miss; fwd-status=200; stored; ttl=60",
    ),  # 2.2, 2.3, 2.5, 2.4
    ({"fwd": b"miss", "collapsed": True, "ttl": 5}, b"edgecore; fwd=miss; collapsed; ttl=5"),  # 2.6
    ({"fwd": b"stale", "fwd_status": 304}, b"edgecore; fwd=stale; fwd-status=304"),  # 2.2 stale, 2.3
    (
        {"fwd": b"stale", "detail": STALE_WHILE_REVALIDATE},
        b"edgecore; fwd=stale; detail=stale-while-revalidate",
    ),  # 2.8
    (
        {"fwd": b"stale", "fwd_status": 503, "detail": STALE_IF_ERROR},
        b"edgecore; fwd=stale; fwd-status=503; detail=stale-if-error",
    ),  # 2.3, 2.8
    (
        {"fwd": b"bypass", "detail": REQUEST_NO_STORE},
        b"edgecore; fwd=bypass; detail=request-no-store",
    ),  # 2.2 bypass, 2.8
    ({"fwd": b"miss", "detail": ONLY_IF_CACHED}, b"edgecore; fwd=miss; detail=only-if-cached"),  # 2.8
    ({"fwd": b"uri-miss", "detail": HIT_FOR_MISS}, b"edgecore; fwd=uri-miss; detail=hit-for-miss"),  # 2.8
    (
        {"fwd": b"uri-miss", "detail": COLLAPSED_UNCACHEABLE},
        b"edgecore; fwd=uri-miss; detail=collapsed-uncacheable",
    ),  # 2.8
    # moved from test_policy (policy.cache_status), now with bytes arguments
    ({"fwd": b"miss", "stored": True}, b"edgecore; fwd=miss; stored"),  # 2.2, 2.5
    ({"fwd": b"uri-miss"}, b"edgecore; fwd=uri-miss"),  # 2.2
    (
        {"fwd": b"bypass", "detail": detail(Reason.NO_STORE)},
        b"edgecore; fwd=bypass; detail=no-store",
    ),  # 2.8: the one spelling (was detail=no_store)
    ({"hit": True, "ttl": -5}, b"edgecore; hit; ttl=-5"),  # 2.4: negative when stale
    ({"fwd": b"miss", "collapsed": True}, b"edgecore; fwd=miss; collapsed"),  # 2.6
    ({"fwd": b"request", "detail": b"a b"}, b'edgecore; fwd=request; detail="a b"'),  # 2.8: sf-string
    ({"fwd": b"method"}, b"edgecore; fwd=method"),  # 2.2
    ({"fwd": b"vary-miss"}, b"edgecore; fwd=vary-miss"),  # 2.2
    ({"fwd": b"partial"}, b"edgecore; fwd=partial"),  # 2.2
    ({}, b"edgecore"),  # RFC 9211 2: a member with no parameters
    ({"fwd": b"miss", "detail": b'a"b\\c\x01'}, b'edgecore; fwd=miss; detail="a\\"b\\\\c"'),  # RFC 8941 3.3.3
    ({"fwd": b"miss", "detail": b"9lives"}, b'edgecore; fwd=miss; detail="9lives"'),  # RFC 8941 3.3.4
    ({"fwd": b"miss", "detail": b""}, b"edgecore; fwd=miss"),  # no detail
]


@pytest.mark.parametrize(("kwargs", "expected"), RENDER)
def test_render(kwargs: dict, expected: bytes) -> None:
    assert render(**kwargs) == expected
    assert render(**kwargs) == expected  # memoised: the same answer again


@pytest.mark.parametrize("fwd", [b"nope", b"MISS", b"hit"])
def test_render_rejects_a_fwd_that_is_not_a_forward_reason(fwd: bytes) -> None:
    # RFC 9211 2.2: fwd is one of the registered forward reasons
    with pytest.raises(ValueError):
        render(fwd=fwd)


def test_render_memo_is_bounded() -> None:
    for ttl in range(cachestatus._MEMO_MAX + 10):
        assert render(hit=True, ttl=ttl) == b"edgecore; hit; ttl=%d" % ttl
    assert len(cachestatus._MEMO) <= cachestatus._MEMO_MAX


# ---------------------------------------------------------------------------------------------------------
# Details (RFC 9211 2.8): one spelling each, lower-case, words joined by "-"
# ---------------------------------------------------------------------------------------------------------

DETAIL = [
    (Reason.NO_STORE, b"no-store"),  # RFC 9111 5.2.2.5
    (Reason.PRIVATE, b"private"),  # RFC 9111 5.2.2.7
    (Reason.VARY_STAR, b"vary-star"),  # RFC 9111 4.1
    (Reason.TOO_LARGE, b"too-large"),
    (Reason.REQUEST_NO_STORE, b"request-no-store"),  # RFC 9111 5.2.1.5
    (Reason.ONLY_IF_CACHED, b"only-if-cached"),  # RFC 9111 5.2.1.7
    (Reason.MUST_REVALIDATE, b"must-revalidate"),  # RFC 9111 5.2.2.2
    (Reason.SET_COOKIE, b"set-cookie"),  # issue 11: a cookie is set for one client (RFC 9111 3.1, 7.3)
    (Reason.CLIENT_ERROR, b"client-error"),  # issue 11: 400/413/414/431 (RFC 9110 15.5, CPDoS)
]


@pytest.mark.parametrize(("reason", "expected"), DETAIL)
def test_detail(reason: Reason, expected: bytes) -> None:
    assert detail(reason) == expected


_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*")


@pytest.mark.parametrize("d", ALL_DETAILS)
def test_every_detail_is_one_lower_case_token(d: bytes) -> None:
    # RFC 9211 2.8 (an sf-token, RFC 8941 3.3.4), written bare
    assert _SF_TOKEN.fullmatch(d) and d == d.lower() and b"_" not in d
    assert render(fwd=b"bypass", detail=d).endswith(b"; detail=" + d)


def test_all_details_lists_every_spelling_once() -> None:
    assert len(set(ALL_DETAILS)) == len(ALL_DETAILS)
    assert {detail(r) for r in Reason} | set(PROXY_DETAILS) | set(ERROR_DETAILS) == set(ALL_DETAILS)
    assert len({detail(r) for r in Reason}) == len(Reason)  # no two Reasons share a spelling


ERROR_DETAIL = [
    (errors.UpstreamError("x"), b"upstream-error"),  # RFC 9110 15.6.3 (502)
    (errors.UpstreamTimeout, b"upstream-timeout"),  # RFC 9110 15.6.5 (504)
    (errors.BadRequest("x"), b"bad-request"),  # RFC 9110 15.5.1 (400)
    (errors.HeaderTooLarge, b"header-too-large"),  # RFC 6585 5 (431)
    (errors.ContentTooLarge("x"), b"content-too-large"),  # RFC 9110 15.5.14 (413)
    (errors.NotCached, b"only-if-cached"),  # RFC 9111 5.2.1.7 (504)
    (errors.InternalError("x"), b"internal-error"),  # RFC 9110 15.6.1 (500)
    (errors.URITooLong("x"), b"uri-too-long"),  # RFC 9110 15.5.15 (414)
    (errors.MethodNotAllowed, b"method-not-allowed"),  # RFC 9110 15.5.6 (405)
]


@pytest.mark.parametrize(("error", "expected"), ERROR_DETAIL)
def test_error_detail(error: errors.EdgeError | type[errors.EdgeError], expected: bytes) -> None:
    assert error_detail(error) == expected and expected in ALL_DETAILS


def test_fwd_reasons_are_rfc_9211s() -> None:
    # RFC 9211 2.2
    assert set(FWD_REASONS) == {
        b"bypass",
        b"method",
        b"uri-miss",
        b"vary-miss",
        b"miss",
        b"request",
        b"stale",
        b"partial",
    }
