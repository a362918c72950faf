"""End to end, over raw sockets, on both paths: the published attacks on caching proxies, one test per
attack and variant, each asserting what the client got AND what reached the origin (tests/origin.py records
every request it receives).

Sources: James Kettle, "Practical Web Cache Poisoning" (2018, unkeyed inputs) and "Web Cache Entanglement"
(2020, normalisation, parameter cloaking, fat GET), "HTTP Desync Attacks" (2019, CL.TE / TE.TE / TE.0);
Omer Gil, "Web Cache Deception" (2017); Nguyen, Lo Iacono, Federrath, "Your Cache Has Fallen: Cache-Poisoned
Denial-of-Service Attack" (CCS 2019: HHO, HMC, HMO); Nathan Davison, "hop-by-hop headers" (2019); RFC 9112
section 11 (response splitting, smuggling). issue 11 numbers the classes 1-5; each test names its class.
"""

from __future__ import annotations

import re

import pytest
from client import Conn, Edge, Response, get

OLD = (
    "Mon,%2001%20Jan%202024%2000:00:00%20GMT"  # a Last-Modified (query-encoded) for a long heuristic lifetime
)


def _raw(port: int, data: bytes, head_only: bool = False) -> tuple[Response, bool]:
    """Send raw bytes, read one response, and whether the proxy then closed the connection."""
    c = Conn(port)
    try:
        c.send(data)
        r = c.read_response(head_only=head_only)
        return r, c.closed_by_peer()
    finally:
        c.close()


def _bad_requests(edge: Edge) -> int:
    m = re.search(rb"^edgecore_bad_requests(?:_total)? ([0-9.e+]+)$", edge.admin("/metrics").body, re.M)
    assert m is not None
    return int(float(m.group(1)))


def _hit(r: Response) -> bool:
    """Answered from the cache (RFC 9211 2.1 "hit"; not the detail hit-for-miss)."""
    return r.cache_status.startswith("edgecore; hit")


def _alive(edge: Edge) -> None:
    """The worker survived and still serves."""
    assert get(edge.port, "/alive?body=ok").body == b"ok"


@pytest.fixture(scope="module")
def edge_opts(origin, path):
    """The operator settings of issue 11: a dropped parameter, Set-Cookie stripped, client errors never
    stored, underscores allowed."""
    e = Edge(
        origin.url,
        path=path,
        env={
            "EDGECORE_KEY_DROP_PARAMS": "utm_source",
            "EDGECORE_CACHE_SET_COOKIE": "strip",
            "EDGECORE_CACHE_CLIENT_ERRORS": "never",
            "EDGECORE_UNDERSCORES_IN_HEADERS": "true",
        },
    )
    yield e
    e.stop()


# ====================================================================== 1. key and upstream request agree


def test_poisoning_via_absolute_form_target_with_another_host(edge, origin, uniq):
    """RFC 9112 3.2.2: an absolute-form target's authority replaces Host, and origin-form goes upstream.
    Before: the key said evil.example, the origin was sent the raw absolute target with Host test.local."""
    c = Conn(edge.port)
    try:
        c.send(f"GET http://Evil.Example{uniq}?cc=max-age=60 HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
        first = c.read_response()
        c.request("GET", f"{uniq}?cc=max-age=60", {"Host": "evil.example"})
        same_key = c.read_response()
        c.request("GET", f"{uniq}?cc=max-age=60", {"Host": "test.local"})
        other_key = c.read_response()
    finally:
        c.close()
    assert first.status == 200 and "stored" in first.cache_status
    assert _hit(same_key) and same_key.body == first.body
    assert not _hit(other_key)
    seen = origin.requests_for(uniq)
    assert [s.target for s in seen] == [f"{uniq}?cc=max-age=60"] * 2  # origin-form both times
    assert [s.header("host") for s in seen] == ["evil.example", "test.local"]


@pytest.mark.parametrize(
    "spelling", ["TEST.Local", "test.local:80", "test.local:", "test.local.", "Test.Local.:80"]
)
def test_host_spelling_variants_send_the_keyed_host(edge, origin, uniq, spelling):
    """RFC 9110 4.2.3: case, default port, empty port and trailing dot are one key, so one Host upstream.
    Before: the origin saw the raw spelling (an origin routing on it answered for another vhost)."""
    first = get(edge.port, f"{uniq}?cc=max-age=60", {"Host": spelling})
    again = get(edge.port, f"{uniq}?cc=max-age=60", {"Host": "test.local"})
    assert first.status == 200 and _hit(again)
    assert [s.header("host") for s in origin.requests_for(uniq)] == ["test.local"]


def test_entanglement_percent_encoded_unreserved_characters(edge, origin, uniq):
    """Web Cache Entanglement (normalisation): %61 and "a" are one key (RFC 3986 6.2.2.2), so the origin is
    sent the normalised target the key describes. Before: the raw %-encoded target went upstream."""
    first = get(edge.port, f"{uniq}/%61%62c?cc=max-age=60")
    again = get(edge.port, f"{uniq}/abc?cc=max-age=60")
    assert first.status == 200 and _hit(again)
    assert [s.target for s in origin.requests_for(uniq)] == [f"{uniq}/abc?cc=max-age=60"]


@pytest.mark.parametrize(
    "trick", ["/static/../private", "/static/%2e%2e/private", "/./private", "/x/./../private"]
)
def test_path_confusion_dot_segments(edge, origin, uniq, trick):
    """Dot segments are removed in both the key and the upstream target (RFC 3986 5.2.4), so a cached
    /static/../private is exactly the origin's /private. Before: keyed as written, the raw path upstream."""
    first = get(edge.port, f"{uniq}{trick}?cc=max-age=60")
    again = get(edge.port, f"{uniq}/private?cc=max-age=60")
    assert first.status == 200 and _hit(again)
    assert [s.target for s in origin.requests_for(uniq)] == [f"{uniq}/private?cc=max-age=60"]


def test_parameter_cloaking_with_semicolon(edge_opts, origin, uniq):
    """Web Cache Entanglement (parameter cloaking): with utm_source left out of the key, "utm_source=x;evil=1"
    must not let evil=1 reach the origin unkeyed: ";" separates parameters too, and the origin is sent the
    keyed query. Before: the raw query went upstream (a ";"-splitting framework read evil=1)."""
    first = get(edge_opts.port, f"{uniq}?cc=max-age=60&utm_source=x;evil=1")
    with_evil = get(edge_opts.port, f"{uniq}?cc=max-age=60&evil=1")
    without = get(edge_opts.port, f"{uniq}?cc=max-age=60")
    assert first.status == 200 and _hit(with_evil)  # evil=1 is keyed: same key
    assert not _hit(without)
    targets = [s.target for s in origin.requests_for(uniq)]
    assert targets == [f"{uniq}?cc=max-age=60&evil=1", f"{uniq}?cc=max-age=60"]


def test_dropped_parameter_never_reaches_the_origin(edge_opts, origin, uniq):
    """Practical Web Cache Poisoning (unkeyed query parameter): utm_source reflected by the origin would
    poison every utm_source-less request. Before: it went upstream in the raw target."""
    first = get(edge_opts.port, f"{uniq}?utm_source=%3Cscript%3E&cc=max-age=60")
    again = get(edge_opts.port, f"{uniq}?cc=max-age=60")
    assert first.status == 200 and _hit(again)
    assert [s.target for s in origin.requests_for(uniq)] == [f"{uniq}?cc=max-age=60"]


def test_unkeyed_header_poisoning_x_forwarded_host(edge, origin, uniq):
    """Practical Web Cache Poisoning (unkeyed headers): routing fields that origins use to build URLs are not
    sent on cache fetches (unchanged: already right)."""
    fields = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Scheme": "nothttps",
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
        "Forwarded": "host=evil.example",
    }
    r = get(edge.port, f"{uniq}?cc=max-age=60", fields)
    assert r.status == 200
    (seen,) = origin.requests_for(uniq)
    for name in fields:
        assert seen.header(name) is None, name


def test_fat_get_body_is_not_cached(edge, origin, uniq):
    """Web Cache Entanglement (fat GET): a GET with a body is passed through, never stored (unchanged)."""
    c = Conn(edge.port)
    try:
        c.request("GET", f"{uniq}?cc=max-age=60&echo=1", body=b"callback=evil")
        fat = c.read_response()
        c.request("GET", f"{uniq}?cc=max-age=60&echo=1")
        plain = c.read_response()
    finally:
        c.close()
    assert "bypass" in fat.cache_status and b"evil" in fat.body
    assert b"evil" not in plain.body
    assert [s.body for s in origin.requests_for(uniq)] == [b"callback=evil", b""]


# ====================================================================== 2. the proxy's own fields


def test_hop_by_hop_abuse_cannot_remove_host_or_forwarding_fields(edge, origin, uniq):
    """Davison's hop-by-hop abuse: Connection naming Host, X-Forwarded-For, X-Forwarded-Proto, Via,
    Forwarded. Before: Host and the client's X-Forwarded-For chain were removed."""
    r = get(
        edge.port,
        f"{uniq}?cc=max-age=60",
        {
            "Connection": "keep-alive, host, x-forwarded-for, x-forwarded-proto, via, forwarded, x-hop",
            "X-Forwarded-For": "10.9.9.9",
            "X-Hop": "gone",
        },
    )
    assert r.status == 200
    (seen,) = origin.requests_for(uniq)
    assert seen.header("host") == "test.local"
    assert seen.header("x-forwarded-for") == "10.9.9.9, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("via") == "1.1 edgecore"
    assert seen.header("x-hop") is None  # a real hop-by-hop field is still removed (RFC 9110 7.6.1)


def test_hop_by_hop_abuse_cannot_change_framing(edge, origin, uniq):
    """Connection: content-length, transfer-encoding does not unframe the request body upstream."""
    c = Conn(edge.port)
    try:
        c.request(
            "POST",
            f"{uniq}?echo=1",
            {"Connection": "content-length, transfer-encoding"},
            body=b"0123456789",
        )
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200
    (seen,) = origin.requests_for(uniq)
    assert seen.body == b"0123456789" and seen.header("content-length") == "10"


def test_underscore_header_smuggling(edge, origin, uniq):
    """CGI/WSGI origins read X_Forwarded_Host as X-Forwarded-Host, which the cache drops: a field name with
    "_" is dropped (nginx underscores_in_headers off). Before: forwarded on both paths."""
    r = get(edge.port, f"{uniq}?cc=max-age=60", {"X_Forwarded_Host": "evil.example", "X_Original_URL": "/a"})
    assert r.status == 200
    (seen,) = origin.requests_for(uniq)
    assert not [n for n, _ in seen.headers if "_" in n]


def test_underscore_header_is_no_vary_input(edge, origin, uniq):
    """A dropped field is absent for Vary too: the origin never saw it, so it cannot pick the variant."""
    first = get(edge.port, f"{uniq}?cc=max-age=60&vary=X_Variant", {"X_Variant": "one"})
    second = get(edge.port, f"{uniq}?cc=max-age=60&vary=X_Variant", {"X_Variant": "two"})
    assert first.status == 200 and _hit(second)
    assert len(origin.requests_for(uniq)) == 1


def test_underscores_in_headers_allows_them(edge_opts, origin, uniq):
    r = get(edge_opts.port, f"{uniq}?cc=max-age=60", {"X_Custom": "kept"})
    assert r.status == 200
    (seen,) = origin.requests_for(uniq)
    assert seen.header("x_custom") == "kept"


# ====================================================================== 3. methods and framing refused


def test_connect_tunnel_is_not_forwarded(edge, origin, uniq):
    """This is no forward proxy: CONNECT is 405 with Allow, the connection closes, nothing goes upstream.
    Before: it was forwarded to the origin."""
    target = f"{uniq[1:]}.internal:22"
    before = _bad_requests(edge)
    r, closed = _raw(edge.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert r.status == 405 and r.header("allow") and "detail=method-not-allowed" in r.cache_status
    assert closed
    assert not [s for s in origin.seen if s.method == "CONNECT" or target in s.target]
    assert _bad_requests(edge) == before + 1
    _alive(edge)


DESYNC = {
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (TE.0 / 1.0 downgrade desync); before: 200
    "te-in-http10": b"POST {u} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET {u}/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    # the rest were refused before too (HTTP Desync Attacks; RFC 9112 6.3, 11.2)
    "cl-te": b"POST {u} HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nG",
    "te-te-obfuscated": b"POST {u} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: x\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST {u} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-not-chunked-last": b"POST {u} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    "cl-cl": b"POST {u} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "duplicate-host": b"GET {u} HTTP/1.1\r\nHost: a\r\nHost: evil.example\r\n\r\n",
    "host-with-path": b"GET {u} HTTP/1.1\r\nHost: a/evil\r\n\r\n",  # before: keyed and forwarded
    "host-with-userinfo": b"GET {u} HTTP/1.1\r\nHost: evil@a\r\n\r\n",  # before: keyed and forwarded
    # RFC 9112 11.1 response splitting: a CR inside a field value
    "crlf-in-field": b"GET {u} HTTP/1.1\r\nHost: a\r\nX-A: b\rSet-Cookie: x=y\r\n\r\n",
}


@pytest.mark.parametrize("attack", list(DESYNC))
def test_http_desync_variants_are_refused(edge, origin, uniq, attack):
    raw = DESYNC[attack].replace(b"{u}", uniq.encode())
    r, closed = _raw(edge.port, raw)
    assert r.status == 400 and "detail=bad-request" in r.cache_status
    assert closed
    assert origin.requests_for(uniq) == []
    _alive(edge)


def test_request_line_over_the_limit_is_414(edge, origin, uniq):
    """RFC 9112 3: a target over max_request_line (8KiB) is 414, counted, closed, not forwarded.
    Before: forwarded (or 431 past the whole head limit)."""
    before = _bad_requests(edge)
    target = f"{uniq}?cc=max-age=60&pad=" + "a" * 8300
    r, closed = _raw(edge.port, f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert r.status == 414 and "detail=uri-too-long" in r.cache_status
    assert closed and origin.requests_for(uniq) == []
    assert _bad_requests(edge) == before + 1
    _alive(edge)


def test_cpdos_hho_oversized_header_block_is_431(edge, origin, uniq):
    """CPDoS HTTP Header Oversize: a head over max_header_size is refused here (431), so no origin error
    for it can be cached; the resource then still answers normally."""
    before = _bad_requests(edge)
    raw = f"GET {uniq}?cc=max-age=60 HTTP/1.1\r\nHost: test.local\r\n".encode()
    raw += b"".join(b"X-Oversized-%d: %s\r\n" % (i, b"b" * 1000) for i in range(20)) + b"\r\n"
    r, closed = _raw(edge.port, raw)
    assert r.status == 431 and "detail=header-too-large" in r.cache_status
    assert closed and origin.requests_for(uniq) == []
    assert _bad_requests(edge) == before + 1
    assert get(edge.port, f"{uniq}?cc=max-age=60").status == 200


def test_cpdos_hmc_meta_character_is_refused(edge, origin, uniq):
    """CPDoS HTTP Meta Character: a control character in a field is refused here, not passed on to make
    the origin answer 400 (unchanged)."""
    r, closed = _raw(edge.port, f"GET {uniq} HTTP/1.1\r\nHost: a\r\nX-Meta: a\x07b\r\n\r\n".encode())
    assert r.status == 400 and closed
    assert origin.requests_for(uniq) == []


def test_cpdos_hmo_method_override_is_not_forwarded(edge, origin, uniq):
    """CPDoS HTTP Method Override: X-HTTP-Method-Override: DELETE on a cache fetch would make the origin
    answer something else for everyone; it is not sent (unchanged)."""
    fields = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "POST", "X-Method-Override": "PUT"}
    first = get(edge.port, f"{uniq}?cc=max-age=60", fields)
    assert first.status == 200
    (seen,) = origin.requests_for(uniq)
    assert seen.method == "GET" and not [n for n in fields if seen.header(n) is not None]


# ====================================================================== 4. per-client responses


def test_set_cookie_response_is_not_shared(edge, origin, uniq):
    """Session fixation / cookie leak through the cache: a response that sets a cookie is not stored by
    default (Cache-Status detail set-cookie). Before: the second client got the first one's cookie."""
    url = f"{uniq}?cc=max-age=60&hdr=Set-Cookie:session=alice"
    first = get(edge.port, url)
    second = get(edge.port, url)
    assert first.header("set-cookie") == "session=alice" and "detail=set-cookie" in first.cache_status
    assert not _hit(second)
    assert len(origin.requests_for(uniq)) == 2


def test_set_cookie_stripped_from_the_stored_copy(edge_opts, origin, uniq):
    """cache_set_cookie = "strip": stored without Set-Cookie; the client whose request fetched it gets its
    cookie, every other client the stored copy without it."""
    url = f"{uniq}?cc=max-age=60&hdr=Set-Cookie:session=alice"
    first = get(edge_opts.port, url)
    second = get(edge_opts.port, url)
    assert first.header("set-cookie") == "session=alice" and "stored" in first.cache_status
    assert _hit(second) and second.header("set-cookie") is None
    assert len(origin.requests_for(uniq)) == 1


def test_vary_cookie_responses_stay_per_cookie(edge, origin, uniq):
    """Vary: Cookie keeps one variant per cookie (RFC 9111 4.1; unchanged: already right)."""
    url = f"{uniq}?cc=max-age=60&vary=Cookie"
    alice = get(edge.port, url, {"Cookie": "session=alice"})
    bob = get(edge.port, url, {"Cookie": "session=bob"})
    alice2 = get(edge.port, url, {"Cookie": "session=alice"})
    assert alice.body == b"variant session=alice" and bob.body == b"variant session=bob"
    assert not _hit(bob) and _hit(alice2)
    assert len(origin.requests_for(uniq)) == 2


def test_authorization_response_is_not_shared(edge, origin, uniq):
    """RFC 9111 3.5: a response to an authorized request is not shared without public/s-maxage (and Vary:
    Authorization never matches another credential; unchanged: already right)."""
    url = f"{uniq}?cc=max-age=60&body=secret"
    mine = get(edge.port, url, {"Authorization": "Bearer alice"})
    theirs = get(edge.port, url)
    assert mine.body == b"secret" and "detail=authorization" in mine.cache_status
    assert not _hit(theirs)
    vurl = f"{uniq}/v?cc=public,max-age=60&vary=Authorization"
    get(edge.port, vurl, {"Authorization": "Bearer alice"})
    other = get(edge.port, vurl, {"Authorization": "Bearer bob"})
    assert other.body == b"variant Bearer bob"
    assert len(origin.requests_for(uniq)) == 4


def test_web_cache_deception_static_looking_suffix(edge, origin, uniq):
    """Omer Gil's web cache deception: /account/x.css is not cached for its extension; only the origin's
    own freshness or validators decide (unchanged: already right)."""
    url = f"{uniq}/account.php/nonexistent.css?body=private-page"
    first = get(edge.port, url)
    second = get(edge.port, url)
    assert first.body == second.body == b"private-page"
    assert not _hit(second)
    assert len(origin.requests_for(uniq)) == 2


# ====================================================================== 5. errors caused by the request


@pytest.mark.parametrize("status", [400, 413, 414, 431])
def test_cpdos_error_response_without_explicit_freshness_is_not_stored(edge, origin, uniq, status):
    """CPDoS: an origin error about the request is not stored from heuristics (414 is heuristically
    cacheable by RFC 9110 15.1, public makes any status so). Before: stored for a heuristic lifetime."""
    url = f"{uniq}?status={status}&cc=public&lm={OLD}"
    first = get(edge.port, url)
    second = get(edge.port, url)
    assert first.status == second.status == status
    assert "detail=client-error" in first.cache_status and not _hit(second)
    assert len(origin.requests_for(uniq)) == 2


def test_cpdos_error_response_with_explicit_freshness_is_stored_by_default(edge, origin, uniq):
    """cache_client_errors = "explicit" (default): the origin said how long, the origin is obeyed."""
    url = f"{uniq}?status=400&cc=max-age=60"
    get(edge.port, url)
    second = get(edge.port, url)
    assert second.status == 400 and _hit(second)
    assert len(origin.requests_for(uniq)) == 1


def test_cpdos_cache_client_errors_never(edge_opts, origin, uniq):
    """cache_client_errors = "never": refused even with explicit freshness."""
    url = f"{uniq}?status=400&cc=max-age=60"
    first = get(edge_opts.port, url)
    second = get(edge_opts.port, url)
    assert "detail=client-error" in first.cache_status and not _hit(second)
    assert len(origin.requests_for(uniq)) == 2


def test_worker_survives_every_attack_above(edge):
    """Bad input never kills a worker: the same process still answers, with its counters."""
    assert edge.proc.poll() is None
    _alive(edge)


# ====================================================================== the one rendering, as a table


REQUEST_HEADS = [
    # (client fields, Connection-listed names, host given) -> the field lines request_head sends after the
    # request line, before Via / X-Forwarded-*
    ([(b"host", b"A.example:80")], [b"host"], b"a.example", [b"host: a.example"]),  # RFC 9110 7.6.1: not Host
    ([(b"accept", b"*/*")], [], b"a.example", [b"host: a.example", b"accept: */*"]),  # RFC 9112 3.2.2
    ([(b"accept", b"a"), (b"host", b"x"), (b"host", b"y")], [], b"k", [b"accept: a", b"host: k"]),
    ([(b"host", b"a")], [], b"", []),  # HTTP/1.0 without a Host of its own and origin-form: none sent
    ([(b"x-hop", b"1"), (b"cookie", b"c")], [b"x-hop"], None, [b"cookie: c"]),  # a real hop-by-hop field
    (
        [(b"via", b"1.0 lb"), (b"forwarded", b"for=1")],
        [b"via", b"forwarded"],
        None,
        [b"via: 1.0 lb, 1.1 edgecore", b"forwarded: for=1"],
    ),
    ([(b"x-forwarded-host", b"h")], [b"x-forwarded-host"], None, [b"x-forwarded-host: h"]),  # X-Forwarded-*
]


@pytest.mark.parametrize(("fields", "listed", "host", "expected"), REQUEST_HEADS)
def test_request_head_connection_cannot_remove_the_proxys_fields(fields, listed, host, expected):
    from edgecore.upstream import request_head

    head = request_head(b"GET", b"/x", fields, frozenset(listed), b"1.2.3.4", host=host)
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /x HTTP/1.1"
    rest = [
        ln for ln in lines[1:] if ln and not ln.startswith(b"x-forwarded-for") and ln != b"via: 1.1 edgecore"
    ]
    assert [ln for ln in rest if ln != b"x-forwarded-proto: http"] == expected
    assert b"x-forwarded-for: " in head  # the proxy's own chain, always


def test_hop_by_hop_abuse_cannot_store_a_response_to_a_stripped_keyed_input(edge, origin, uniq):
    """Connection naming an end-to-end field the request carries (here the Cookie a Vary names) removes it
    upstream (RFC 9110 7.6.1): the answer then describes another request than the key says, so it is passed
    to this client alone and never stored; the next client with that cookie gets its own answer."""
    t = f"{uniq}?cc=max-age=60&vary=Cookie"
    abused = get(edge.port, t, {"Cookie": "session=victim", "Connection": "cookie"})
    assert abused.status == 200 and "detail=connection-listed" in abused.cache_status
    assert "stored" not in abused.cache_status
    (seen,) = origin.requests_for(uniq)
    assert seen.header("cookie") is None  # the field was hop-by-hop for this hop, as the client said
    victim = get(edge.port, t, {"Cookie": "session=victim"})
    assert "fwd=" in victim.cache_status and "stored" in victim.cache_status  # fetched, not the abused copy
    assert origin.requests_for(uniq)[-1].header("cookie") == "session=victim"
    again = get(edge.port, t, {"Cookie": "session=victim", "Connection": "cookie"})
    assert again.cache_status.startswith("edgecore; hit")  # a stored answer may still serve such a request
    assert again.body == victim.body and len(origin.requests_for(uniq)) == 2
