"""End to end: the multi-step HTTP caching behaviours (RFC 9111, 5861, 9110 13-14, 9211, 9213) through a real
edgecore process and a real origin. The single-step rules are tabled in test_policy.py / test_keys.py."""

from __future__ import annotations

from client import get
from origin import body_bytes


def test_stale_response_is_revalidated_with_if_none_match(edge, origin, uniq):
    # RFC 9111 4.3.1-4.3.4: a stale entry with an ETag is validated; the 304 freshens the stored response
    t = f"{uniq}?cc=max-age=0&etag=%22v1%22&size=300"
    get(edge.port, t)
    r = get(edge.port, t)
    assert r.status == 200 and r.body == body_bytes(t, 300)
    assert "fwd=stale" in r.cache_status and "fwd-status=304" in r.cache_status
    seen = origin.requests_for(uniq)
    assert len(seen) == 2 and seen[1].header("if-none-match") == '"v1"'


def test_stale_response_is_revalidated_with_if_modified_since(edge, origin, uniq):
    lm = "Tue,%2015%20Nov%202022%2012:45:26%20GMT"
    t = f"{uniq}?cc=max-age=0&lm={lm}"
    get(edge.port, t)
    r = get(edge.port, t)
    assert r.status == 200 and "fwd-status=304" in r.cache_status
    assert origin.requests_for(uniq)[1].header("if-modified-since") == "Tue, 15 Nov 2022 12:45:26 GMT"


def test_304_updates_stored_headers(edge, origin, uniq):
    # RFC 9111 4.3.4: fields of the 304 replace the stored ones
    path = f"{uniq}/u"
    origin.override(path, cc="max-age=0", etag='"e"', hdr="X-Version:1")
    get(edge.port, path)
    origin.override(path, cc="max-age=0", etag='"e"', hdr="X-Version:2")
    r = get(edge.port, path)
    assert "fwd-status=304" in r.cache_status and r.header("x-version") == "2"


def test_no_cache_response_is_validated_on_every_use(edge, origin, uniq):
    # RFC 9111 5.2.2.4
    t = f"{uniq}?cc=no-cache&etag=%22n%22"
    for _ in range(3):
        assert get(edge.port, t).status == 200
    assert origin.count(uniq) == 3
    assert origin.requests_for(uniq)[2].header("if-none-match") == '"n"'


def test_client_conditional_is_answered_304_from_cache(edge, origin, uniq):
    # RFC 9110 13.1.2 (weak comparison for If-None-Match) and 15.4.5
    t = f"{uniq}?cc=max-age=60&etag=%22abc%22"
    get(edge.port, t)
    r = get(edge.port, t, headers={"If-None-Match": 'W/"abc"'})
    assert r.status == 304 and r.body == b"" and r.header("etag") == '"abc"'
    r = get(edge.port, t, headers={"If-None-Match": '"other"'})
    assert r.status == 200
    assert origin.count(uniq) == 1


def test_range_requests_from_a_stored_response(edge, origin, uniq):
    # RFC 9110 14: one byte range from a complete stored response
    t = f"{uniq}?cc=max-age=60&size=1000"
    full = get(edge.port, t).body
    r = get(edge.port, t, headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.body == full[10:20]
    assert r.header("content-range") == "bytes 10-19/1000"
    r = get(edge.port, t, headers={"Range": "bytes=-5"})
    assert r.status == 206 and r.body == full[-5:]
    r = get(edge.port, t, headers={"Range": "bytes=5000-"})
    assert r.status == 416 and r.header("content-range") == "bytes */1000"
    r = get(edge.port, t, headers={"Range": "bytes=0-1,5-6"})  # several ranges: the whole 200 is fine
    assert r.status == 200 and r.body == full
    assert origin.count(uniq) == 1
    assert origin.requests_for(uniq)[0].header("range") is None


def test_vary_keeps_one_variant_per_request_value(edge, origin, uniq):
    # RFC 9111 4.1
    t = f"{uniq}?cc=max-age=60&vary=Accept-Language"
    a = get(edge.port, t, headers={"Accept-Language": "en"})
    b = get(edge.port, t, headers={"Accept-Language": "fr"})
    assert a.body == b"variant en" and b.body == b"variant fr"
    assert "vary-miss" in b.cache_status
    a2 = get(edge.port, t, headers={"Accept-Language": "en"})
    b2 = get(edge.port, t, headers={"Accept-Language": "  fr"})  # normalised whitespace
    assert a2.body == b"variant en" and a2.cache_status.startswith("edgecore; hit")
    assert b2.body == b"variant fr" and b2.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2


def test_vary_accept_language_is_normalised(edge, origin, uniq):
    # RFC 9111 4.1 (normalisation with identical semantics), RFC 9110 12.4.2 / 12.5.4: case and the order of
    # equally weighted ranges do not select another variant; a different weight does
    t = f"{uniq}?cc=max-age=60&vary=Accept-Language"
    get(edge.port, t, headers={"Accept-Language": "en, de"})
    assert get(edge.port, t, headers={"Accept-Language": "DE,en"}).cache_status.startswith("edgecore; hit")
    assert not get(edge.port, t, headers={"Accept-Language": "de;q=0.5, en"}).cache_status.startswith(
        "edgecore; hit"
    )
    assert origin.count(uniq) == 2


def test_vary_star_is_never_stored(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&vary=*"
    get(edge.port, t)
    r = get(edge.port, t)
    assert not r.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2


def test_unsafe_method_invalidates_the_target(edge, origin, uniq):
    # RFC 9111 4.4
    t = f"{uniq}?cc=max-age=60"
    get(edge.port, t)
    assert get(edge.port, t).cache_status.startswith("edgecore; hit")
    assert get(edge.port, t, method="POST", body=b"x").status == 200
    r = get(edge.port, t)
    assert not r.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 3


def test_stale_while_revalidate_serves_stale_and_refreshes_once(edge, origin, uniq):
    # RFC 5861 3
    t = f"{uniq}?cc=max-age=0,stale-while-revalidate=60&etag=%22s%22"
    get(edge.port, t)
    r = get(edge.port, t)
    assert r.status == 200 and "fwd=stale" in r.cache_status
    assert origin.wait_count(uniq, 2)  # the background refresh
    assert origin.requests_for(uniq)[1].header("if-none-match") == '"s"'


def test_stale_if_error_serves_stale_when_the_origin_fails(edge, origin, uniq):
    # RFC 5861 4
    path = f"{uniq}/sie"
    origin.override(path, cc="max-age=0,stale-if-error=60", etag='"x"', body="good")
    get(edge.port, path)
    origin.override(path, status="500", cc="no-store", body="broken")
    r = get(edge.port, path)
    assert r.status == 200 and r.body == b"good" and "stale" in r.cache_status


def test_must_revalidate_never_serves_stale_on_error(edge, origin, uniq):
    # RFC 9111 5.2.2.2
    path = f"{uniq}/mr"
    origin.override(path, cc="max-age=0,must-revalidate,stale-if-error=60", etag='"x"', body="good")
    get(edge.port, path)
    origin.override(path, status="500", cc="no-store", body="broken")
    r = get(edge.port, path)
    assert r.status == 500 and r.body == b"broken"


def test_request_directives(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&etag=%22r%22"
    get(edge.port, t)
    # RFC 9111 5.2.1.4 no-cache / 5.4 Pragma: validate upstream
    assert "fwd-status=304" in get(edge.port, t, headers={"Cache-Control": "no-cache"}).cache_status
    assert "fwd-status=304" in get(edge.port, t, headers={"Pragma": "no-cache"}).cache_status
    # 5.2.1.1 max-age=0: too old for this request
    assert "fwd-status=304" in get(edge.port, t, headers={"Cache-Control": "max-age=0"}).cache_status
    # 5.2.1.7 only-if-cached: a hit when stored, 504 when not
    assert get(edge.port, t, headers={"Cache-Control": "only-if-cached"}).status == 200
    assert get(edge.port, f"{uniq}/none", headers={"Cache-Control": "only-if-cached"}).status == 504
    assert origin.count(f"{uniq}/none") == 0


def test_targeted_cache_control_takes_precedence(edge, origin, uniq):
    # RFC 9213: CDN-Cache-Control (and Edgecore-Cache-Control) over Cache-Control, for edgecore only
    t = f"{uniq}?cc=no-store&hdr=CDN-Cache-Control:max-age%3D60"
    get(edge.port, t)
    r = get(edge.port, t)
    assert r.cache_status.startswith("edgecore; hit") and r.header("cache-control") == "no-store"
    t2 = f"{uniq}/2?cc=max-age=60&hdr=Edgecore-Cache-Control:no-store"
    get(edge.port, t2)
    assert not get(edge.port, t2).cache_status.startswith("edgecore; hit")


def test_upstream_age_is_honoured(edge, origin, uniq):
    # RFC 9111 4.2.3
    t = f"{uniq}?cc=max-age=100&hdr=Age:40"
    get(edge.port, t)
    r = get(edge.port, t)
    assert r.cache_status.startswith("edgecore; hit")
    assert 40 <= int(r.header("age")) <= 45
    ttl = int(r.cache_status.split("ttl=")[1].split(";")[0])
    assert 55 <= ttl <= 60


def test_unkeyed_routing_fields_cannot_poison_the_cache(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&echo=1"
    get(edge.port, t, headers={"X-Forwarded-Host": "evil.example", "X-Original-URL": "/admin"})
    seen = origin.requests_for(uniq)[0]
    assert seen.header("x-forwarded-host") is None and seen.header("x-original-url") is None


def test_cache_status_names_the_reason_for_not_storing(edge, uniq):
    r = get(edge.port, f"{uniq}?cc=private")
    assert "detail=private" in r.cache_status
    r = get(edge.port, f"{uniq}/ns?cc=no-store")
    assert "detail=no-store" in r.cache_status


def test_unsafe_method_invalidates_same_origin_location(edge, origin, uniq):
    # RFC 9111 4.4: Location and Content-Location on the same origin are invalidated too
    other = f"{uniq}/other?cc=max-age=60"
    get(edge.port, other)
    assert get(edge.port, other).cache_status.startswith("edgecore; hit")
    loc = other.replace("&", "%26").replace("?", "%3F").replace("=", "%3D")
    r = get(edge.port, f"{uniq}/form?hdr=Location:{loc}", method="PUT", body=b"x")
    assert r.status == 200 and r.header("location") == other
    assert not get(edge.port, other).cache_status.startswith("edgecore; hit")


def test_miss_with_range_is_answered_from_the_stored_response(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=400"
    r = get(edge.port, t, headers={"Range": "bytes=100-199"})
    assert r.status == 206 and r.body == body_bytes(t, 400)[100:200]
    assert origin.requests_for(uniq)[0].header("range") is None


def test_post_response_with_its_own_content_location_answers_a_later_get(edge, origin, uniq):
    # RFC 9110 9.3.3: explicit freshness and Content-Location equal to the target URI make a POST response
    # reusable for GET; RFC 9111 4.4: the POST first invalidates what was stored for the target
    path = f"{uniq}/p"
    origin.override(path, cc="max-age=60", body="old")
    get(edge.port, path)
    origin.override(path, cc="max-age=60", hdr=f"Content-Location:{path}", body="posted")
    r = get(edge.port, path, method="POST", body=b"x")
    assert r.status == 200 and r.body == b"posted"
    r = get(edge.port, path)
    assert r.cache_status.startswith("edgecore; hit") and r.body == b"posted"
    assert origin.count(path) == 2


def test_post_response_without_its_own_content_location_is_not_stored(edge, origin, uniq):
    path = f"{uniq}/q"
    origin.override(path, cc="max-age=60", hdr="Content-Location:/elsewhere", body="posted")
    r = get(edge.port, path, method="POST", body=b"x")
    assert r.status == 200 and "detail=method" in r.cache_status
    origin.override(path, cc="max-age=60", body="got")
    assert get(edge.port, path).body == b"got"
    assert origin.count(path) == 2


def test_key_options_sort_and_drop_query_parameters(origin, uniq, path):
    # issue 4 "Keys": an option to sort or drop listed query parameters
    from client import Edge

    e = Edge(
        origin.url,
        path=path,
        env={"EDGECORE_KEY_SORT_QUERY": "1", "EDGECORE_KEY_DROP_PARAMS": "utm_source,utm_medium"},
    )
    try:
        get(e.port, f"{uniq}?cc=max-age=60&b=2&a=1&utm_source=x")
        for variant in (f"{uniq}?a=1&cc=max-age=60&b=2", f"{uniq}?utm_medium=y&b=2&a=1&cc=max-age=60"):
            assert get(e.port, variant).cache_status.startswith("edgecore; hit"), variant
        assert not get(e.port, f"{uniq}?cc=max-age=60&b=3&a=1").cache_status.startswith("edgecore; hit")
        assert origin.count(uniq) == 2
    finally:
        e.stop()


def test_head_response_updates_the_stored_get(edge, origin, uniq):
    # RFC 9111 4.3.5: a stale entry, a HEAD sent upstream, its 200 with matching validators updates it
    path = f"{uniq}/h"
    origin.override(path, cc="max-age=0", etag='"h"', hdr="X-Version:1", body="payload")
    get(edge.port, path)
    origin.override(path, cc="max-age=60", etag='"h"', hdr="X-Version:2", body="payload")
    h = get(edge.port, path, method="HEAD")
    assert h.status == 200 and h.header("x-version") == "2"
    assert [s.method for s in origin.requests_for(path)] == ["GET", "HEAD"]
    r = get(edge.port, path)  # now fresh, with the updated fields, from cache
    assert r.cache_status.startswith("edgecore; hit") and r.header("x-version") == "2"
    assert r.body == b"payload"
    assert origin.count(path) == 2


def test_every_response_from_a_stored_entry_has_its_status_line_and_one_via(edge, origin, uniq):
    # RFC 9110 7.6.3: a proxy sends Via in the messages it forwards, appended to any the origin sent. The
    # entry stores neither the 200 OK status line nor our own Via (entry.E_STATUS_200, E_OWN_VIA): every
    # way a stored response is written must put them back, once and in order.
    plain = f"{uniq}/plain?cc=max-age=60&etag=%22p%22&size=50"
    get(edge.port, plain)
    answers = {
        "hit": get(edge.port, plain),
        "head": get(edge.port, plain, method="HEAD"),
        "304": get(edge.port, plain, headers={"If-None-Match": '"p"'}),
        "206": get(edge.port, plain, headers={"Range": "bytes=0-9"}),
    }
    stale = f"{uniq}/stale?cc=max-age=0&etag=%22s%22"
    get(edge.port, stale)
    answers["revalidated"] = get(edge.port, stale)
    expect = {"hit": 200, "head": 200, "304": 304, "206": 206, "revalidated": 200}
    for name, r in answers.items():
        assert r.status == expect[name], name
        assert r.all("via") == ["1.1 edgecore"], (name, r.headers)
    assert answers["hit"].reason == "OK" and answers["hit"].body == body_bytes(plain, 50)
    # both paths write the dynamic fields in one order, before the stored ones (serve._dynamic, hitpath.pyx)
    for name in ("hit", "head"):
        got = [n.lower() for n, _ in answers[name].headers][:4]
        assert got == ["age", "cache-status", "via", "content-length"], (name, answers[name].headers)
    assert "hit" in answers["hit"].cache_status and "fwd-status=304" in answers["revalidated"].cache_status
    # a response with its own Via stores it, ours appended, and nothing is added when serving
    proxied = f"{uniq}/via"
    origin.override(proxied, cc="max-age=60", hdr="Via:1.0 upstream-lb")
    first = get(edge.port, proxied)
    hit = get(edge.port, proxied)
    assert "hit" in hit.cache_status
    for r in (first, hit):
        assert r.all("via") == ["1.0 upstream-lb, 1.1 edgecore"], r.headers
    # a status other than 200 OK keeps its stored status line
    gone = f"{uniq}/gone?status=404&cc=max-age=60"
    get(edge.port, gone)
    r = get(edge.port, gone)
    assert (r.status, r.reason) == (404, "Not Found") and "hit" in r.cache_status
    assert r.all("via") == ["1.1 edgecore"]


def test_content_length_is_written_from_the_stored_body(edge, origin, uniq):
    # RFC 9110 8.6, 9.3.2: Content-Length is never stored (entry.content_length); a hit, GET or HEAD, small or
    # large (a large one is served from the shared mapping in place, pinned), says the stored body's length
    for size in (5, 100_000):
        t = f"{uniq}/{size}?cc=max-age=60&size={size}"
        assert get(edge.port, t).body == body_bytes(t, size)
        hit = get(edge.port, t)
        head = get(edge.port, t, method="HEAD")
        assert "hit" in hit.cache_status and "hit" in head.cache_status
        assert hit.body == body_bytes(t, size) and head.body == b""
        for r in (hit, head):
            assert r.all("content-length") == [str(size)], (size, r.headers)
