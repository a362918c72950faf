"""Tables for edgecore.keys: primary keys (RFC 9111 2, RFC 9110 4.2.3), Vary and secondary keys
(RFC 9111 4.1). List splitting (RFC 9110 5.6.1) is tabled in test_fields.py."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgecore.keys import (
    KeyOptions,
    normalise_field_value,
    normalise_host,
    normalise_target,
    normalise_weighted,
    parse_vary,
    primary_key,
    remove_dot_segments,
    request_form,
    secondary_key,
)

# ---------------------------------------------------------------------------------------------------------
# Primary key: requests that must share a key
# ---------------------------------------------------------------------------------------------------------

SAME = [
    # (a, b) as (method, host, target); every pair must give one key
    ((b"GET", b"example.com", b"/a"), (b"HEAD", b"example.com", b"/a")),  # RFC 9111 4: HEAD from a stored GET
    ((b"GET", b"Example.COM", b"/a"), (b"GET", b"example.com", b"/a")),  # RFC 9110 4.2.3: host case
    ((b"GET", b"example.com:80", b"/a"), (b"GET", b"example.com", b"/a")),  # RFC 9110 4.2.3: default port
    ((b"GET", b"example.com:", b"/a"), (b"GET", b"example.com", b"/a")),  # RFC 3986 6.2.3: empty port
    ((b"GET", b"example.com.", b"/a"), (b"GET", b"example.com", b"/a")),  # RFC 3986 3.2.2: root label dot
    ((b"GET", b"[::1]:80", b"/a"), (b"GET", b"[::1]", b"/a")),  # RFC 9110 4.2.3: IPv6 literal, default port
    ((b"GET", b"example.com", b"/%7Euser"), (b"GET", b"example.com", b"/~user")),  # RFC 3986 6.2.2.2
    ((b"GET", b"example.com", b"/a%2fb"), (b"GET", b"example.com", b"/a%2Fb")),  # RFC 3986 6.2.2.1: hex case
    ((b"GET", b"example.com", b""), (b"GET", b"example.com", b"/")),  # RFC 9110 4.2.3: empty path is "/"
    ((b"GET", b"example.com", b"/a#frag"), (b"GET", b"example.com", b"/a")),  # RFC 9110 4.2.5: no fragment
    # RFC 9112 3.2.2: absolute-form target; its authority is the host
    ((b"GET", b"ignored", b"http://Example.com:80/a?b"), (b"GET", b"example.com", b"/a?b")),
    ((b"GET", b"ignored", b"http://example.com"), (b"GET", b"example.com", b"/")),
    ((b"GET", b"ignored", b"http://u:p@example.com/a"), (b"GET", b"example.com", b"/a")),
    ((b"GET", b"example.com", b"/s/../a"), (b"GET", b"example.com", b"/a")),  # RFC 3986 5.2.4: dot segments
    ((b"GET", b"example.com", b"/./a"), (b"GET", b"example.com", b"/a")),  # RFC 3986 5.2.4
    ((b"GET", b"example.com", b"/s/%2E%2e/a"), (b"GET", b"example.com", b"/a")),  # 6.2.2.2 then 6.2.2.3
    ((b"GET", b"example.com", b"/../a"), (b"GET", b"example.com", b"/a")),  # 5.2.4: not above the root
    ((b"GET", b"example.com.", b"/a"), (b"GET", b"example.com", b"/a")),  # RFC 9110 4.2.3: trailing dot
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_primary_key_equivalent_requests_share_a_key(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> None:
    assert primary_key(*a) == primary_key(*b)


DIFFERENT = [
    ((b"GET", b"example.com", b"/a"), (b"POST", b"example.com", b"/a")),  # RFC 9111 2: method is in the key
    ((b"GET", b"example.com", b"/a"), (b"GET", b"example.org", b"/a")),  # RFC 9111 2: host
    ((b"GET", b"example.com:8080", b"/a"), (b"GET", b"example.com", b"/a")),  # non-default port
    ((b"GET", b"example.com", b"/a"), (b"GET", b"example.com", b"/A")),  # RFC 3986 6.2.2.1: path case
    ((b"GET", b"example.com", b"/a?x=1"), (b"GET", b"example.com", b"/a?x=2")),  # query args differ
    ((b"GET", b"example.com", b"/a?x=1&y=2"), (b"GET", b"example.com", b"/a?y=2&x=1")),  # order kept
    ((b"GET", b"example.com", b"/a%2Fb"), (b"GET", b"example.com", b"/a/b")),  # reserved: never decoded
    ((b"GET", b"example.com", b"/a?b"), (b"GET", b"example.com", b"/a%3Fb")),
    # length prefixes: shifting bytes between parts gives another key
    ((b"GET", b"example.co", b"/m/a"), (b"GET", b"example.com", b"/a")),
    ((b"GET", b"a", b"/b"), (b"GET", b"a/", b"b")),
    ((b"GET", b"example.com", b"/s/..a"), (b"GET", b"example.com", b"/a")),  # RFC 3986 5.2.4: not a segment
    ((b"GET", b"example.com", b"/.well-known/a"), (b"GET", b"example.com", b"/well-known/a")),
    ((b"GET", b"example.com", b"/a?x=/../b"), (b"GET", b"example.com", b"/b")),  # 5.2.4: the path only
    ((b"GET", b"example.com", b"/a%2F..%2Fb"), (b"GET", b"example.com", b"/b")),  # %2F is no separator
]


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_primary_key_distinct_requests_get_distinct_keys(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> None:
    assert primary_key(*a) != primary_key(*b)


def test_primary_key_tenant_separates_keys() -> None:
    # tenant isolation: one tenant never reads another's entry
    assert primary_key(b"GET", b"h", b"/", tenant=b"t1") != primary_key(b"GET", b"h", b"/", tenant=b"t2")
    assert primary_key(b"GET", b"h", b"/", tenant=b"") != primary_key(b"GET", b"h", b"/", tenant=b"t")


QUERY = [
    # (options, target a, target b, same key?)
    (KeyOptions(sort_query=True), b"/a?y=2&x=1", b"/a?x=1&y=2", True),
    (KeyOptions(sort_query=True), b"/a?x=2&x=1", b"/a?x=1&x=2", False),  # values of one name keep order
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?utm_source=m&x=1", b"/a?x=1", True),
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?utm_source=m", b"/a", True),  # "?" dropped when empty
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?x=1", b"/a?x=2", False),
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?utm%5Fsource=m", b"/a", True),  # %5F is "_" (unreserved)
    (KeyOptions(sort_query=True), b"/a?&&x=1", b"/a?x=1", True),  # empty parameters carry nothing
    (KeyOptions(), b"/a?x=1", b"/a?x=1", True),
    (KeyOptions(default_ports=(b"80", b"443")), b"/a", b"/a", True),
    # issue 11 (parameter cloaking): ";" separates parameters too (RFC 3986 3.4 leaves it to the origin)
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?utm_source=m;x=1", b"/a?x=1", True),
    (KeyOptions(drop_params=(b"utm_source",)), b"/a?utm_source=m;x=1", b"/a", False),  # x=1 stays keyed
    (KeyOptions(sort_query=True), b"/a?y=2;x=1", b"/a?x=1&y=2", True),
    (KeyOptions(), b"/a?x=1;y=2", b"/a?x=1&y=2", False),  # default options: the query is verbatim
]


REQUEST_FORM = [
    # (host, target, options) -> (Host sent upstream, target sent upstream): the key's own parts
    (b"Example.COM:80", b"/a", KeyOptions(), (b"example.com", b"/a")),  # RFC 9110 4.2.3
    (b"example.com.", b"/a", KeyOptions(), (b"example.com", b"/a")),  # RFC 9110 4.2.3: trailing dot
    (b"example.com:", b"/a", KeyOptions(), (b"example.com", b"/a")),  # RFC 3986 6.2.3: empty port
    (b"h", b"http://Evil.COM:80/a?b", KeyOptions(), (b"evil.com", b"/a?b")),  # RFC 9112 3.2.2: absolute-form
    (b"h", b"http://evil.com", KeyOptions(), (b"evil.com", b"/")),  # RFC 9112 3.2.2: empty path
    (b"h", b"/%7euser/%2fx", KeyOptions(), (b"h", b"/~user/%2Fx")),  # RFC 3986 6.2.2.1, 6.2.2.2
    (b"h", b"/a/b/c/./../../g", KeyOptions(), (b"h", b"/a/g")),  # RFC 3986 5.2.4 (its example)
    (b"h", b"/a#frag", KeyOptions(), (b"h", b"/a")),  # RFC 9112 3.2: no fragment in a target
    (b"h", b"/a?utm_source=x;evil=1&b=2", KeyOptions(drop_params=(b"utm_source",)), (b"h", b"/a?evil=1&b=2")),
    (b"h", b"/a?utm_source=x", KeyOptions(drop_params=(b"utm_source",)), (b"h", b"/a")),
    (b"h", b"*", KeyOptions(), (b"h", b"*")),  # RFC 9112 3.2.4: asterisk-form kept
]


@pytest.mark.parametrize(("host", "target", "opts", "expected"), REQUEST_FORM)
def test_request_form(host: bytes, target: bytes, opts: KeyOptions, expected: tuple[bytes, bytes]) -> None:
    assert request_form(host, target, opts) == expected
    h, t = expected  # the key is built from exactly these parts: what goes upstream is what was keyed
    assert primary_key(b"GET", host, target, opts) == primary_key(b"GET", h, t, opts)


DOT_SEGMENTS = [
    # RFC 3986 5.2.4 / 5.4 examples, absolute paths
    (b"/a/b/c/./../../g", b"/a/g"),
    (b"/./a", b"/a"),
    (b"/a/.", b"/a/"),
    (b"/a/..", b"/"),
    (b"/..", b"/"),
    (b"/../../g", b"/g"),
    (b"/a/..b/.c", b"/a/..b/.c"),
    (b"/a//../b", b"/a/b"),
    (b"/", b"/"),
]


@pytest.mark.parametrize(("path", "expected"), DOT_SEGMENTS)
def test_remove_dot_segments(path: bytes, expected: bytes) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(("opts", "a", "b", "same"), QUERY)
def test_query_options(opts: KeyOptions, a: bytes, b: bytes, same: bool) -> None:
    assert (primary_key(b"GET", b"h", a, opts) == primary_key(b"GET", b"h", b, opts)) is same


HOSTS = [
    (b"Example.com", b"example.com"),  # RFC 9110 4.2.3
    (b"example.com:80", b"example.com"),
    (b"example.com:8080", b"example.com:8080"),
    (b"[::1]:80", b"[::1]"),
    (b"[::1]:8080", b"[::1]:8080"),
    (b" example.com ", b"example.com"),
    (b"example.com.", b"example.com"),
]


@pytest.mark.parametrize(("host", "expected"), HOSTS)
def test_normalise_host(host: bytes, expected: bytes) -> None:
    assert normalise_host(host) == expected


_host = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True).map(str.encode)
_target = st.from_regex(r"/[a-z0-9/?=&.~-]{0,20}", fullmatch=True).map(str.encode)
_method = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"])
_tenant = st.from_regex(r"[a-z0-9:]{0,6}", fullmatch=True).map(str.encode)


@given(_tenant, _method, _host, _target, _tenant, _method, _host, _target)
def test_primary_key_is_unambiguous(
    t1: bytes, m1: bytes, h1: bytes, p1: bytes, t2: bytes, m2: bytes, h2: bytes, p2: bytes
) -> None:
    # Among already-normal requests, keys are equal exactly when the requests are.
    same = (t1, m1, h1, p1) == (t2, m2, h2, p2)
    k1 = primary_key(m1, h1, p1, tenant=t1)
    k2 = primary_key(m2, h2, p2, tenant=t2)
    assert (k1 == k2) is same


def _general_key(method: bytes, host: bytes, target: bytes, opts: KeyOptions) -> bytes:
    """primary_key without its fast path: normalise_target, then normalise_host, then the encoding."""
    authority, t = normalise_target(target, opts)
    h = normalise_host(host if authority is None else authority, opts.default_ports)
    cls = b"GET" if method in (b"GET", b"HEAD") else method
    return b"0:%d:%s%d:%s%s" % (len(cls), cls, len(h), h, t)


# Hosts and targets around the fast path's edges: ports, dots, OWS, case, IPv6, "%", "#", absolute form.
_odd_host = st.text(alphabet="aZ0.:[] \t", max_size=8).map(str.encode)
_odd_target = st.one_of(
    st.from_regex(r"/[a-zA-Z0-9/?=&.~-]{0,12}", fullmatch=True).map(str.encode),  # the fast path's own
    st.text(alphabet="/aZ%2f7E#?=&*", max_size=10).map(str.encode),
    st.text(alphabet="/aZ%2f7E#?=&", max_size=8).map(lambda s: b"http://Ex.com" + s.encode()),
)


@pytest.mark.parametrize("opts", [None, KeyOptions(), KeyOptions(default_ports=(b"80",))])
@example(method=b"GET", host=b"\ta", target=b"/")  # OWS around the host: stripped either way
@example(method=b"GET", host=b"a\t", target=b"/")
@example(method=b"GET", host=b" A.:80", target=b"/")
@example(method=b"GET", host=b"", target=b"/")
@given(method=st.sampled_from([b"GET", b"HEAD", b"POST"]), host=_odd_host, target=_odd_target)
def test_primary_key_fast_path_agrees_with_the_general_path(
    opts: KeyOptions | None, method: bytes, host: bytes, target: bytes
) -> None:
    # The fast path runs for the default options object and for any equal one (what options_for builds).
    key = primary_key(method, host, target) if opts is None else primary_key(method, host, target, opts)
    assert key == _general_key(method, host, target, opts or KeyOptions())


@pytest.mark.parametrize("n", [0, 1, 9, 255, 256, 300])
def test_primary_key_host_length_prefix(n: int) -> None:
    host = b"h" * n
    assert primary_key(b"GET", host, b"/x") == b"0:3:GET%d:%s/x" % (n, host)


# ---------------------------------------------------------------------------------------------------------
# Vary (RFC 9111 4.1)
# ---------------------------------------------------------------------------------------------------------

VARY = [
    ([b"Foo"], (b"foo",)),  # RFC 9110 5.1: field names are case-insensitive
    ([b"Foo, Bar"], (b"bar", b"foo")),  # sorted: the order of Vary members does not matter
    ([b"Foo", b"Bar"], (b"bar", b"foo")),  # RFC 9110 5.3: several lines are one list
    ([b"foo, FOO"], (b"foo",)),  # de-duplicated
    ([b""], ()),  # RFC 9110 5.6.1: empty members ignored
    ([b" , accept-encoding ,"], (b"accept-encoding",)),
    ([b"*"], None),  # RFC 9111 4.1: "*" always fails to match
    ([b"*, *"], None),
    ([b"*", b"*"], None),
    ([b", *"], None),
    ([b"", b"*"], None),
    ([b"*, Foo"], None),
    ([b"Foo, *"], None),
    ([b"Foo Bar"], None),  # not a field name: treated like "*"
    ([b'"Foo"'], None),
]


@pytest.mark.parametrize(("values", "expected"), VARY)
def test_parse_vary(values: list[bytes], expected: tuple[bytes, ...] | None) -> None:
    assert parse_vary(values) == expected


P = primary_key(b"GET", b"example.com", b"/r")
FOO = (b"foo",)
FOO_BAR_BAZ = (b"bar", b"baz", b"foo")
AL = (b"accept-language",)
AE = (b"accept-encoding",)

SECONDARY = [
    # (vary, stored request headers, new request headers, same variant?)
    (FOO, [(b"foo", b"1")], [(b"foo", b"1")], True),  # RFC 9111 4.1 (vary-match)
    (FOO, [(b"foo", b"1")], [(b"foo", b"2")], False),  # (vary-no-match)
    (FOO, [(b"foo", b"1")], [], False),  # absent only matches absent (vary-omit)
    (FOO, [], [], True),
    (FOO, [(b"foo", b"")], [], False),  # empty is not absent
    (FOO, [(b"foo", b"1"), (b"other", b"2")], [(b"foo", b"1"), (b"other", b"3")], True),  # (vary-cache-key)
    (
        FOO_BAR_BAZ,
        [(b"foo", b"1"), (b"bar", b"abc"), (b"baz", b"789")],
        [(b"baz", b"789"), (b"foo", b"1"), (b"bar", b"abc")],
        True,
    ),
    (
        FOO_BAR_BAZ,
        [(b"foo", b"1"), (b"bar", b"abc4"), (b"baz", b"789")],
        [(b"foo", b"1"), (b"bar", b"abc"), (b"baz", b"789")],
        False,
    ),
    (
        FOO_BAR_BAZ,
        [(b"foo", b"1"), (b"baz", b"789")],
        [(b"foo", b"1"), (b"baz", b"789")],
        True,
    ),  # (vary-3-omit)
    (FOO_BAR_BAZ, [(b"foo", b"1")], [(b"foo", b"1"), (b"bar", b"abc")], False),  # (vary-2-match-omit)
    (FOO, [(b"foo", b"1,2")], [(b"foo", b" 1, 2 ")], True),  # RFC 9111 4.1: whitespace (normalise-space)
    (FOO, [(b"foo", b"1, 2")], [(b"foo", b"1"), (b"foo", b"2")], True),  # RFC 9110 5.3 (normalise-combine)
    (FOO, [(b"foo", b"a  b")], [(b"foo", b"a b")], True),  # inner whitespace collapsed
    (FOO, [(b"foo", b'"a  b"')], [(b"foo", b'"a b"')], False),  # quoted strings kept verbatim
    (FOO, [(b"foo", b'"1,2"')], [(b"foo", b'"1, 2"')], False),
    (FOO, [(b"foo", b"A")], [(b"foo", b"a")], False),  # values are case-sensitive
    (FOO, [(b"foo", b"1, 2")], [(b"foo", b"2, 1")], False),  # member order is kept
    # Accept-Language: case-insensitive ranges, equal weights unordered (RFC 9110 12.4.2, 12.5.4)
    (
        AL,
        [(b"accept-language", b"en, de")],
        [(b"accept-language", b"de, en")],
        True,
    ),  # (vary-normalise-lang-order)
    (
        AL,
        [(b"accept-language", b"en, de")],
        [(b"accept-language", b"eN, De")],
        True,
    ),  # (vary-normalise-lang-case)
    (AL, [(b"accept-language", b"en, de")], [(b"accept-language", b" en ,   de")], True),  # (lang-space)
    (AL, [(b"accept-language", b"en;q=0.5, de")], [(b"accept-language", b"de;q=1.0, EN;Q=0.50")], True),
    (AL, [(b"accept-language", b"en;q=0.5, de")], [(b"accept-language", b"en, de;q=0.5")], False),  # weights
    (AL, [(b"accept-language", b"en, de")], [(b"accept-language", b"en")], False),
    (AL, [(b"accept-language", b"en")], [], False),  # absent is still distinct
    (
        AL,
        [(b"accept-language", b"en;q=2, de")],
        [(b"accept-language", b"de, en;q=2")],
        False,
    ),  # invalid q: as is
    (AE, [(b"accept-encoding", b"gzip, br")], [(b"accept-encoding", b"BR,gzip")], True),  # 12.5.3, 8.4.1
]


@pytest.mark.parametrize(("vary", "stored", "new", "same"), SECONDARY)
def test_secondary_key(vary: tuple[bytes, ...], stored: list, new: list, same: bool) -> None:
    assert (secondary_key(P, vary, stored) == secondary_key(P, vary, new)) is same


def test_secondary_key_without_vary_is_the_primary_key() -> None:
    assert secondary_key(P, (), [(b"foo", b"1")]) == P


def test_secondary_key_never_equals_a_primary_key() -> None:
    # RFC 9111 4.1: a variant key is distinct from every primary key (it starts with "V")
    sk = secondary_key(P, FOO, [])
    assert sk != P and sk[:1] == b"V" and primary_key(b"GET", b"h", b"/")[:1] != b"V"


def test_secondary_key_is_length_prefixed() -> None:
    # a value that spells the next field cannot collide with two fields
    a = secondary_key(P, (b"a", b"b"), [(b"a", b"1-1:b=1:2")])
    b = secondary_key(P, (b"a", b"b"), [(b"a", b"1"), (b"b", b"2")])
    assert a != b


NORMALISE = [
    ([b"gzip"], b"gzip"),
    ([b"gzip,deflate"], b"gzip, deflate"),  # RFC 9110 5.6.1
    ([b"gzip ,  deflate"], b"gzip, deflate"),
    ([b"gzip", b"deflate"], b"gzip, deflate"),  # RFC 9110 5.3
    ([b"text/html;  q=0.9"], b"text/html; q=0.9"),
    ([b'a, "b,  c"'], b'a, "b,  c"'),
    ([b"a,,b"], b"a, b"),  # RFC 9110 5.6.1: empty members ignored
]


@pytest.mark.parametrize(("lines", "expected"), NORMALISE)
def test_normalise_field_value(lines: list[bytes], expected: bytes) -> None:
    assert normalise_field_value(lines) == expected


WEIGHTED = [
    ([b"en, de"], b"de, en"),  # RFC 9110 12.4.2: equal weights, no order of preference
    ([b"EN-gb;q=0.8, fr;Q=1.000, *;q=0"], b"fr, en-gb;q=0.8, *;q=0"),
    ([b"en", b"de;q=0.5"], b"en, de;q=0.5"),  # lines combined (RFC 9110 5.3)
    ([b"en;q=1.5"], None),  # invalid weight: not normalised
    ([b"en;level=1"], None),  # other parameters: not normalised
]


@pytest.mark.parametrize(("lines", "expected"), WEIGHTED)
def test_normalise_weighted(lines: list[bytes], expected: bytes | None) -> None:
    assert normalise_weighted(lines) == expected


_form_hosts = st.sampled_from(
    [b"a.example", b"A.Example", b"a.example:80", b"a.example:", b"a.example.", b"h:8080"]
)
_form_targets = st.text(alphabet="/.a%2e5fE?&;=#", max_size=14).map(
    lambda t: ("/" + t).encode()
) | st.sampled_from([b"http://B.example:80/x/../y", b"http://b.example", b"https://u@b.example/%61"])
_form_opts = st.sampled_from(
    [
        KeyOptions(),
        KeyOptions(sort_query=True),
        KeyOptions(drop_params=(b"a", b"5f")),
        KeyOptions(default_ports=()),
    ]
)


@given(host=_form_hosts, target=_form_targets, opts=_form_opts)
def test_requests_that_share_a_key_share_an_upstream_request(
    host: bytes, target: bytes, opts: KeyOptions
) -> None:
    """issue 11 point 1: the key is built from request_form's (Host, target) and nothing else, and
    request_form is a normal form (applying it again changes nothing): so two requests with one key (an
    unambiguous, length-prefixed encoding of those parts) send one request line and Host upstream."""
    h, t = request_form(host, target, opts)
    assert primary_key(b"GET", host, target, opts) == primary_key(b"GET", h, t, opts)
    assert request_form(h, t, opts) == (h, t)
