"""End to end: malformed and hostile requests get a clear 4xx, the connection closes, the worker lives on,
and one slow client cannot stall the others."""

from __future__ import annotations

import pytest
from client import Conn, get


def _send_raw(port: int, data: bytes):
    c = Conn(port)
    try:
        c.send(data)
        r = c.read_response()
        closed = c.closed_by_peer()
        return r, closed
    finally:
        c.close()


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),  # RFC 9112 3.2: Host required
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # RFC 9112 3.2: one Host
        # RFC 9112 6.3 / 11.2: request smuggling
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            400,
        ),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),  # RFC 9112 3: max_request_line
    ],
)
def test_bad_request_gets_4xx_and_close(edge, raw, status):
    r, closed = _send_raw(edge.port, raw)
    assert r.status == status
    assert closed
    # the worker survived and still serves
    assert get(edge.port, "/alive?body=ok").body == b"ok"


def test_garbage_after_a_good_pipelined_request(edge, uniq):
    c = Conn(edge.port)
    try:
        c.send(f"GET {uniq}?body=good HTTP/1.1\r\nHost: a\r\n\r\n".encode() + b"\x00\x01garbage\r\n\r\n")
        assert c.read_response().body == b"good"
        assert c.read_response().status == 400
        assert c.closed_by_peer()
    finally:
        c.close()


def test_body_larger_than_limit_is_413(origin, path):
    from client import Edge

    e = Edge(origin.url, path=path, env={"EDGECORE_MAX_BODY_SIZE": "1KiB"})
    try:
        r, closed = _send_raw(e.port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        assert r.status == 413 and closed
    finally:
        e.stop()


def test_slow_client_does_not_stall_others(edge, uniq):
    slow = Conn(edge.port)
    try:
        slow.send(b"GET /slowloris HTTP/1.1\r\nHost: a\r\nX-A: ")  # and never more
        for i in range(20):
            assert get(edge.port, f"{uniq}/{i}?body=fine").body == b"fine"
    finally:
        slow.close()


def test_silent_clients_are_closed_after_client_timeout(origin, path):
    """Slow-loris: a client that stops inside its request head, or idles on keep-alive, is closed once
    client_timeout passes (checked once a second), while answering clients are not."""
    import time

    from client import Edge

    e = Edge(origin.url, path=path, env={"EDGECORE_CLIENT_TIMEOUT": "1"})
    try:
        stuck, idle = Conn(e.port), Conn(e.port)
        t0 = time.monotonic()
        stuck.send(b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: ")
        idle.request("GET", "/ok?body=fine")
        assert idle.read_response().body == b"fine"
        assert stuck.closed_by_peer(timeout=5) and idle.closed_by_peer(timeout=5)
        assert 0.9 < time.monotonic() - t0 < 4.5
        stuck.close()
        idle.close()
    finally:
        e.stop()
