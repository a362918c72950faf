"""End to end: a real edgecore process between raw-socket clients and a real origin on 127.0.0.1.

Serving (keep-alive, pipelining, HTTP/1.0, bodies, Expect, HEAD, hop-by-hop, Via/X-Forwarded-*), upstream
framing (chunked, truncated, large), and the basics of caching in the path.
"""

from __future__ import annotations

import json

from client import Conn, get
from origin import body_bytes


def test_miss_then_hit_serves_identical_bytes_with_age(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=1024"
    r1 = get(edge.port, t)
    assert r1.status == 200
    assert r1.cache_status.startswith("edgecore; fwd=uri-miss")
    assert "stored" in r1.cache_status
    r2 = get(edge.port, t)
    assert r2.status == 200
    assert r2.cache_status.startswith("edgecore; hit")
    assert r2.header("age") is not None and int(r2.header("age")) >= 0  # RFC 9111 4.2.3 / 5.1
    assert r2.body == r1.body == body_bytes(t, 1024)
    assert origin.count(uniq) == 1


def test_keep_alive_serves_many_requests_on_one_connection(edge, origin, uniq):
    c = Conn(edge.port)
    try:
        for i in range(5):
            c.request("GET", f"{uniq}/{i % 2}?cc=max-age=60")
            r = c.read_response()
            assert r.status == 200
            assert r.body == body_bytes(f"{uniq}/{i % 2}?cc=max-age=60", 100)
    finally:
        c.close()
    assert origin.count(uniq) == 2


def test_pipelined_responses_come_in_request_order(edge, origin, uniq):
    slow = f"{uniq}/slow?delay=0.3&body=first"
    fast = f"{uniq}/fast?body=second"
    cached = f"{uniq}/c?cc=max-age=60&body=third"
    get(edge.port, cached)  # now a hit: answered synchronously, yet must wait its turn
    c = Conn(edge.port)
    try:
        req = b"".join(f"GET {t} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode() for t in (slow, fast, cached))
        c.send(req)
        bodies = [c.read_response().body for _ in range(3)]
    finally:
        c.close()
    assert bodies == [b"first", b"second", b"third"]


def test_http10_without_keep_alive_closes(edge, uniq):
    c = Conn(edge.port)
    try:
        c.request("GET", f"{uniq}?body=ten", version="1.0", headers={})
        r = c.read_response()
        assert r.status == 200 and r.body == b"ten"
        assert c.closed_by_peer()
    finally:
        c.close()


def test_http10_keep_alive_is_honoured(edge, uniq):
    c = Conn(edge.port)
    try:
        for _ in range(2):
            c.request(
                "GET", f"{uniq}?cc=max-age=60&body=k", version="1.0", headers={"Connection": "keep-alive"}
            )
            r = c.read_response()
            assert r.status == 200 and r.body == b"k"
            assert (r.header("connection") or "").lower() == "keep-alive"
    finally:
        c.close()


def test_request_body_with_content_length_is_forwarded(edge, origin, uniq):
    r = get(edge.port, f"{uniq}?echo=1", method="POST", body=b"hello=world")
    assert r.status == 200
    seen = origin.requests_for(uniq)[-1]
    assert seen.method == "POST" and seen.body == b"hello=world"
    assert r.cache_status.startswith("edgecore; fwd=method")


def test_chunked_request_body_is_forwarded_whole(edge, origin, uniq):
    c = Conn(edge.port)
    try:
        c.send(
            f"PUT {uniq}?echo=1 HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        c.send(b"5\r\nhello\r\n")
        c.send(b"6\r\n world\r\n0\r\n\r\n")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200
    assert origin.requests_for(uniq)[-1].body == b"hello world"
    assert json.loads(r.body)["method"] == "PUT"


def test_expect_100_continue(edge, origin, uniq):
    c = Conn(edge.port)
    try:
        c.send(
            f"POST {uniq}?echo=1 HTTP/1.1\r\nHost: test.local\r\nContent-Length: 4\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        assert c._line() == b"HTTP/1.1 100 Continue"  # RFC 9110 10.1.1: before we send the body
        assert c._line() == b""
        c.send(b"data")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200
    seen = origin.requests_for(uniq)[-1]
    assert seen.body == b"data" and seen.header("expect") is None


def test_head_is_answered_from_stored_get(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=500"
    get(edge.port, t)
    r = get(edge.port, t, method="HEAD")
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == "500"
    assert r.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 1


def test_head_miss_is_fetched_as_get_and_stored(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=300"
    c = Conn(edge.port)
    try:
        c.request("HEAD", t)
        r = c.read_response(head_only=True)
        assert r.status == 200 and r.header("content-length") == "300"
        c.request("GET", t)  # same connection: the HEAD response had no body on the wire
        r2 = c.read_response()
    finally:
        c.close()
    assert r2.body == body_bytes(t, 300) and r2.cache_status.startswith("edgecore; hit")
    assert [s.method for s in origin.requests_for(uniq)] == ["GET"]


def test_hop_by_hop_fields_are_removed_both_ways(edge, origin, uniq):
    # RFC 9110 7.6.1: Connection, the fields it names, Keep-Alive, TE, Upgrade, Proxy-* are per hop
    r = get(
        edge.port,
        f"{uniq}?echo=1&hdr=Connection:x-up-private&hdr=X-Up-Private:1&hdr=Keep-Alive:timeout=5",
        headers={
            "Connection": "x-down-private",
            "X-Down-Private": "1",
            "Keep-Alive": "300",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9v",
            "X-Kept": "yes",
        },
    )
    assert r.status == 200
    seen = origin.requests_for(uniq)[-1]
    names = {n.lower() for n, _ in seen.headers}
    assert "x-down-private" not in names and "keep-alive" not in names and "te" not in names
    assert "proxy-authorization" not in names
    assert seen.header("x-kept") == "yes"
    assert r.header("x-up-private") is None and r.header("keep-alive") is None


def test_via_and_forwarded_fields_are_added(edge, origin, uniq):
    get(edge.port, f"{uniq}?echo=1", headers={"X-Forwarded-For": "203.0.113.9"})
    seen = origin.requests_for(uniq)[-1]
    assert "edgecore" in (seen.header("via") or "")
    assert seen.header("x-forwarded-for") == "203.0.113.9, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    r = get(edge.port, f"{uniq}?body=v")
    assert "edgecore" in (r.header("via") or "")


def test_chunked_upstream_body_is_relayed_and_cached(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&chunked=1&size=20000"
    r1 = get(edge.port, t)
    assert r1.status == 200 and r1.complete and r1.body == body_bytes(t, 20000)
    r2 = get(edge.port, t)
    assert r2.cache_status.startswith("edgecore; hit") and r2.body == r1.body
    assert r2.header("content-length") == "20000"
    assert origin.count(uniq) == 1


def test_truncated_upstream_body_closes_client_and_is_never_stored(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=50000&truncate=1"
    # a small body is held until complete (then nothing has reached the client yet: a clean 502);
    # a large one is streamed, and then the client sees the connection close mid-body
    big = f"{uniq}/big?cc=max-age=60&size={512 << 10}&truncate=1"
    for target, want in ((t, "502"), (big, "cut")):
        r = get(edge.port, target)
        if want == "502":
            assert r.status == 502 and r.complete
        else:
            assert r.status == 200 and not r.complete and len(r.body) < 512 << 10
        get(edge.port, target)
    assert origin.count(f"{uniq}?") == 2 and origin.count(f"{uniq}/big") == 2  # nothing was stored


def test_truncated_chunked_upstream_body_is_never_stored(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=50000&truncate=1&chunked=1"
    r = get(edge.port, t)
    assert not r.complete
    get(edge.port, t)
    assert origin.count(uniq) == 2


def test_close_delimited_upstream_body_is_relayed(edge, origin, uniq):
    t = f"{uniq}?noclen=1&size=7000"
    r = get(edge.port, t)
    assert r.status == 200 and r.complete and r.body == body_bytes(t, 7000)


def test_large_object_streams_byte_for_byte_and_is_not_cached(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size={3 << 20}"
    r1 = get(edge.port, t)
    assert r1.status == 200 and r1.body == body_bytes(t, 3 << 20)
    assert "stored" not in r1.cache_status
    r2 = get(edge.port, t)
    assert r2.body == r1.body and not r2.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2


def test_only_storable_responses_are_stored(edge, origin, uniq):
    # RFC 9111 3 and 5.2.2: no-store and private never go into a shared cache
    for i, cc in enumerate(("no-store", "private,max-age=60", "max-age=60")):
        t = f"{uniq}/{i}?cc={cc}"
        get(edge.port, t)
        r = get(edge.port, t)
        assert r.cache_status.startswith("edgecore; hit") == (cc == "max-age=60"), cc
    assert (
        origin.count(f"{uniq}/0") == 2 and origin.count(f"{uniq}/1") == 2 and origin.count(f"{uniq}/2") == 1
    )


def test_authorization_request_is_not_stored_without_explicit_permission(edge, origin, uniq):
    # RFC 9111 3.5
    t = f"{uniq}?cc=max-age=60&body=secret"
    get(edge.port, t, headers={"Authorization": "Bearer alice"})
    r = get(edge.port, t)
    assert not r.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2


def test_interim_responses_are_relayed_and_never_stored(edge, origin, uniq):
    # RFC 9110 15.2: a proxy forwards 1xx responses; RFC 9111 3: only final responses are stored
    t = f"{uniq}?cc=max-age=60&hints=%3C/s.css%3E;%20rel=preload&body=final"
    c = Conn(edge.port)
    try:
        c.request("GET", t)
        assert c._line() == b"HTTP/1.1 103 Early Hints"
        hint = c._line()
        assert hint.lower() == b"link: </s.css>; rel=preload"
        assert c._line() == b""
        r = c.read_response()
        assert r.status == 200 and r.body == b"final"
        c.request("GET", t)
        r2 = c.read_response()  # from cache: the final response alone, no 103 in front
        assert r2.status == 200 and r2.cache_status.startswith("edgecore; hit") and r2.body == b"final"
    finally:
        c.close()


def test_non_chunked_transfer_coding_ends_at_close_and_is_stored(edge, origin, uniq):
    # RFC 9112 6.3: a final transfer coding other than chunked means the body runs to the close
    t = f"{uniq}?cc=max-age=60&te=identity-ish&size=3000"
    r = get(edge.port, t)
    assert r.status == 200 and r.complete and r.body == body_bytes(t, 3000)
    assert r.header("transfer-encoding") in (None, "chunked")
    r2 = get(edge.port, t)
    assert r2.cache_status.startswith("edgecore; hit") and r2.body == r.body
    assert origin.count(uniq) == 1


def test_large_cached_object_is_served_whole_from_the_c_hit_path(edge, origin, uniq):
    # bodies over 32 KiB leave the C hit path as views of the looked-up copy (writelines), not one buffer
    t = f"{uniq}?cc=max-age=60&size={300 << 10}"
    first = get(edge.port, t)
    c = Conn(edge.port)
    try:
        for method in ("GET", "HEAD", "GET"):
            c.request(method, t)
            r = c.read_response(head_only=method == "HEAD")
            assert r.cache_status.startswith("edgecore; hit")
            assert r.header("content-length") == str(300 << 10)
            assert r.body == (b"" if method == "HEAD" else first.body)
    finally:
        c.close()
    assert first.body == body_bytes(t, 300 << 10) and origin.count(uniq) == 1
