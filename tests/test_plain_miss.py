"""The plain-miss fast path (commit 5122f2c): a plain GET/HEAD that misses is fetched over an idle pooled
connection without httptools (ClientProtocol._plain_miss, PlainMiss), with the upstream request rendered
by HitPath.upstream_head and the response head read by HitPath.parse_response.

Differentials first: parse_response against httptools (tables and fuzzed heads), upstream_head and
request_fields against the general path. Then the whole miss in process, through the real client protocol
and pool against a scripted origin on 127.0.0.1: what the client gets, what is stored, what the origin
sees, each response compared byte for byte with what the general path (fast path off) answers, and every
failure mode (restart, 502, 504, extra bytes). Spies on PlainMiss prove the fast path was taken.
Last, end to end in a real `edgecore serve` with a spy: two workers coalescing, a worker killed and SIGTERM
mid-miss, /stats and /metrics, a client gone, pipelining, a pooled connection paused for a slow client.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import httptools
import pytest
from client import Conn, Edge, Response, wait_for
from client import get as get_e2e
from hypothesis import given, settings
from hypothesis import strategies as st
from memtransport import MemoryTransport

from edgecore import cachepath, context, keys, plainmiss, protocol, upstream
from edgecore.cache import Cache
from edgecore.config import Config, Upstream, fastpath_disabled
from edgecore.metrics import F_WAITING, SharedCounters

PEER = b"127.0.0.1"
VIA = b"1.1 edgecore"


@pytest.fixture(scope="module")
def hp():
    cfg = Config(upstream=(Upstream("127.0.0.1", 1),), cache_size=8 << 20)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    counters = SharedCounters(slots=1)
    yield context.make_hitpath(cfg, cache, counters.slot_view(0), keys.KeyOptions())
    cache.close()


# ====================================================================== parse_response vs httptools


@dataclass
class Ref:
    """What httptools makes of a response head."""

    ok: bool = True  # no parser error up to the end of the head
    done: bool = False  # on_headers_complete came
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_len: int = -1
    keep_alive: bool = False
    version: str = ""


def _httptools_response(buf: bytes) -> Ref:
    """Fed byte by byte, so that the end of the head is known exactly."""
    ref = Ref()
    parser: httptools.HttpResponseParser

    class CB:
        def on_status(self, reason: bytes) -> None:
            ref.reason += reason

        def on_header(self, name: bytes, value: bytes) -> None:
            ref.headers.append((name.lower(), value.strip()))

        def on_headers_complete(self) -> None:
            ref.done = True
            ref.status = parser.get_status_code()
            ref.keep_alive = parser.should_keep_alive()
            ref.version = parser.get_http_version()

    parser = httptools.HttpResponseParser(CB())
    for i in range(len(buf)):
        try:
            parser.feed_data(buf[i : i + 1])
        except httptools.HttpParserError:
            if not ref.done:
                ref.ok = False
            break
        if ref.done:
            ref.head_len = i + 1
            break
    return ref


def _plain_for_httptools(ref: Ref) -> bool:
    """The kind of response parse_response may accept, in httptools' terms."""
    if not (ref.ok and ref.done) or ref.version != "1.1":
        return False
    if ref.status < 200 or ref.status in (204, 304):
        return False
    clens = [v for n, v in ref.headers if n == b"content-length"]
    if len(clens) != 1 or not clens[0].isdigit():
        return False
    for n, v in ref.headers:
        if n == b"transfer-encoding":
            return False
        if n == b"connection" and v.lower() not in (b"close", b"keep-alive"):
            return False
    return True


def _check_against_httptools(hp, buf: bytes) -> object:
    """parse_response(buf) is None only for an incomplete head, and a tuple only when httptools reads the
    same plain head: same status, reason, fields, end of head, length and keep-alive."""
    got = hp.parse_response(buf)
    if b"\r\n\r\n" not in buf:
        assert got is None
        return got
    assert got is not None
    if got is False:
        return got
    status, reason, fields, head_len, clen, keep = got
    ref = _httptools_response(buf)
    assert ref.ok and ref.done, f"parse_response accepted what httptools rejects: {buf!r}"
    assert _plain_for_httptools(ref), f"not plain for httptools: {buf!r} -> {ref}"
    assert status == ref.status
    assert reason == ref.reason
    assert fields == ref.headers
    assert head_len == ref.head_len == buf.index(b"\r\n\r\n") + 4
    assert clen == int(next(v for n, v in ref.headers if n == b"content-length"))
    assert keep == ref.keep_alive
    return got


PLAIN_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nCache-Control: max-age=5\r\n\r\nnop",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",  # no reason phrase
    b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",  # empty reason phrase
    b"HTTP/1.1 299 Some  odd\treason\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:7\r\nX-Mixed-Case:  spaced value \t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\nX-Empty:\r\nX-Tab:\tv\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: \x80\xff obs-text\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno",
    b'HTTP/1.1 200 OK\r\nETag: "a"\r\nLast-Modified: Tue, 01 Jan 2030 00:00:00 GMT\r\n'
    b"Content-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\nContent-Length: 2\r\n\r\nab",
]


@pytest.mark.parametrize("buf", PLAIN_RESPONSES)
def test_parse_response_reads_plain_heads_as_httptools_does(hp, buf):
    got = _check_against_httptools(hp, buf)
    assert isinstance(got, tuple), buf  # plain: the fast path must not bail on these


def test_parse_response_keep_alive(hp):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    assert hp.parse_response(ok + b"\r\n")[5] is True
    assert hp.parse_response(ok + b"Connection: keep-alive\r\n\r\n")[5] is True
    assert hp.parse_response(ok + b"Connection: close\r\n\r\n")[5] is False
    assert hp.parse_response(ok + b"Connection: CLOSE\r\n\r\n")[5] is False
    assert hp.parse_response(ok + b"Connection: close\r\nConnection: keep-alive\r\n\r\n")[5] is False


def test_parse_response_incomplete_head_is_none(hp):
    full = PLAIN_RESPONSES[1]
    end = full.index(b"\r\n\r\n") + 4
    for i in range(end):
        assert hp.parse_response(full[:i]) is None, full[:i]
    assert isinstance(hp.parse_response(full[:end]), tuple)  # the body need not be there


def test_parse_response_head_over_max_header_size_is_not_plain(hp):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: " + b"a" * (20 << 10)
    assert hp.parse_response(big) is False  # incomplete, yet already too long: never None forever
    assert hp.parse_response(big + b"\r\n\r\n") is False


NOT_PLAIN = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\r\n",  # no Content-Length: close-delimited
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",  # duplicate, even if equal
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\tOK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
    b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n\tb\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\nX: a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",  # bare CR
    b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",  # space before the colon
    b"HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nNo colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n: empty name\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX\x80: bad name\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: nul\x00\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: del\x7f\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: foo\r\nFoo: bar\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close, foo\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: upgrade\r\n\r\n",
    b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
]


@pytest.mark.parametrize("buf", NOT_PLAIN)
def test_parse_response_leaves_what_is_not_plain_to_httptools(hp, buf):
    assert hp.parse_response(buf) is False


_status_lines = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 599 X",
        b"HTTP/1.1 999 X",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 103 Early Hints",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 200\tOK",
        b"HTTP/1.1 200 \x80\xfe",
        b"HTTP/1.1 200 a\x00b",
        b"HTTP/1.2 200 OK",
        b"HTTP/1.1 2x0 OK",
    ]
)
_resp_names = st.sampled_from(
    [
        b"Content-Length",
        b"content-length",
        b"CONTENT-LENGTH",
        b"Transfer-Encoding",
        b"Connection",
        b"Cache-Control",
        b"X-A",
        b"Keep-Alive",
        b"Content-Length ",
        b" X",
        b"X\x80",
        b"X\x00",
        b"",
        b"a@b",
    ]
)
_resp_values = st.sampled_from(
    [
        b"0",
        b"5",
        b"007",
        b" 12 ",
        b"5,5",
        b"+5",
        b"-1",
        b"",
        b"close",
        b"keep-alive",
        b"Keep-Alive",
        b"close, keep-alive",
        b"chunked",
        b"max-age=60",
        b"a\tb",
        b"\x80\xff",
        b"a\x00b",
        b"a\x7fb",
        b"a\rb",
        b"a\nb",
        b"a\r\n b",
        b"123456789012345678",
    ]
) | st.binary(max_size=8)
_resp_lines = st.tuples(_resp_names, st.sampled_from([b":", b": ", b" :", b":\t"]), _resp_values).map(
    b"".join
)


@settings(max_examples=1500, deadline=None)
@given(
    status=_status_lines,
    lines=st.lists(_resp_lines, max_size=5),
    sep=st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "]),
    end=st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\r\n"]),
    body=st.sampled_from([b"", b"hello", b"HTTP/1.1 200 OK\r\n\r\n"]),
)
def test_fuzzed_structured_heads_agree_with_httptools(hp, status, lines, sep, end, body):
    head = status + b"".join(sep + ln for ln in lines) + end
    _check_against_httptools(hp, head + body)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=160), st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 ", b""]))
def test_fuzzed_bytes_agree_with_httptools(hp, noise, prefix):
    _check_against_httptools(hp, prefix + noise)


@settings(max_examples=500, deadline=None)
@given(
    name=st.from_regex(rb"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}\Z"),
    value=st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v),
    clen=st.integers(0, 10**9),
)
def test_fuzzed_field_values_agree_with_httptools(hp, name, value, clen):
    buf = b"HTTP/1.1 200 OK\r\n%s: %s\r\nContent-Length: %d\r\n\r\n" % (name, value, clen)
    _check_against_httptools(hp, buf)


# ====================================================================== upstream_head / request_fields


def _general_request(head: bytes) -> context.Request:
    """The request as the general path's parser callbacks build it (ClientProtocol.on_header)."""
    r = context.Request()

    class CB:
        def on_url(self, url: bytes) -> None:
            r.target += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if b"_" in name:
                return  # dropped (underscores_in_headers off, as nginx)
            name, value = name.lower(), value.strip()
            r.headers.append((name, value))
            if name == b"host":
                r.host = value.lower()
            elif name == b"connection":
                r.conn_tokens.extend(t.strip().lower() for t in value.split(b","))

    parser = httptools.HttpRequestParser(CB())
    parser.feed_data(head)
    r.method = parser.get_method()
    r.version = parser.get_http_version().encode()
    return r


@pytest.fixture(scope="module")
def general():
    """A ClientProtocol for cachepath.upstream_head, which renders the general path's cache fetch."""
    loop = asyncio.new_event_loop()
    cfg = Config(upstream=(Upstream("127.0.0.1", 1),), cache_size=8 << 20)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    ctx = protocol.make_context(cfg, cache, SharedCounters(slots=1).slot_view(0), loop)
    p = protocol.ClientProtocol(ctx)
    p.peer = PEER
    yield p
    ctx.stop()
    loop.close()
    cache.close()


def _general_head(general, head: bytes) -> bytes:
    r = _general_request(head)
    return cachepath.upstream_head(general, r, method=b"GET", drop=upstream.CACHE_FETCH_DROP)


PLAIN_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /x?y=1&z=2 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: a.example\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
    b"GET /c HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.1\r\nhOsT: A.Example:80\r\nX-MiXeD: CaSe Value\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost:a.example\r\nX-Ows:  \t v  w \t \r\nX-Empty:\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nx-forwarded-for: 1.1.1.1\r\nAccept: a\r\n"
    b"X-FORWARDED-FOR:  2.2.2.2 , 3.3.3.3 \r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=1.2.3.4\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 9.9.9.9\r\nX-Host: evil\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 300\r\n"
    b"Proxy-Authorization: Basic eA==\r\nCookie: a=b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nAccept-Encoding: gzip, br\r\nAccept-Language: de\r\n\r\n",
    b"HEAD /x HTTP/1.0\r\nHost: a.example\r\nConnection: Keep-Alive\r\nX-Forwarded-For: 8.8.8.8\r\n\r\n",
    # issue 11: Host as the key spells it (RFC 9110 4.2.3), fields with "_" dropped
    b"GET /x HTTP/1.1\r\nHost: A.Example.\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example:\r\n\r\n",
    b"GET /x HTTP/1.1\r\nAccept: a\r\nHost: A.EXAMPLE.:80\r\nUser-Agent: u\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nX_Forwarded_Host: evil\r\nAccept_Language: xx\r\n\r\n",
    b"GET /.well-known/x?a=/../b HTTP/1.1\r\nHost: a.example\r\n\r\n",
]


@pytest.mark.parametrize("head", PLAIN_REQUESTS)
def test_upstream_head_is_what_the_general_path_sends(hp, general, head):
    assert hp.key_for(head[:-4]) is not None  # serve() takes this request: it may become a plain miss
    got = hp.upstream_head(head, 0, len(head), PEER, VIA)
    assert got == _general_head(general, head)


def test_upstream_head_of_a_request_in_the_middle_of_a_buffer(hp, general):
    """serve() hands over (data, miss.start, miss.end) with other requests around the miss."""
    before = b"GET /hit HTTP/1.1\r\nHost: a.example\r\n\r\n"
    head = PLAIN_REQUESTS[9]
    after = b"GET /next HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    data = before + head + after
    got = hp.upstream_head(data, len(before), len(before) + len(head), PEER, VIA)
    assert got == _general_head(general, head)


def test_upstream_head_leaves_via_and_many_forwarded_for_lines_to_the_general_path(hp):
    via = b"GET /x HTTP/1.1\r\nHost: a.example\r\nVia: 1.1 other\r\n\r\n"
    assert hp.key_for(via[:-4]) is not None
    assert hp.upstream_head(via, 0, len(via), PEER, VIA) is None
    via_lower = b"GET /x HTTP/1.1\r\nHost: a.example\r\nvIA: 1.0 x\r\n\r\n"
    assert hp.upstream_head(via_lower, 0, len(via_lower), PEER, VIA) is None
    many = b"GET /x HTTP/1.1\r\nHost: a.example\r\n" + b"X-Forwarded-For: 1.1.1.1\r\n" * 9 + b"\r\n"
    assert hp.upstream_head(many, 0, len(many), PEER, VIA) is None


_req_names = st.sampled_from(
    [
        b"Accept",
        b"X-A",
        b"x-a",
        b"X-Forwarded-For",
        b"x-forwarded-for",
        b"X-Forwarded-Host",
        b"Forwarded",
        b"X-Forwarded-Proto",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"Cookie",
        b"User-Agent",
        b"Accept-Encoding",
        b"Connection",
        b"Close",
        b"X_Forwarded_Host",
        b"accept_language",
    ]
)
_req_values = st.sampled_from(
    [
        b"",
        b"v",
        b" v ",
        b"\tv\t",
        b"a, b",
        b"1.2.3.4",
        b" 1.2.3.4 , 5.6.7.8 ",
        b"keep-alive",
        b"close",
        b"x y",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"HEAD"]),
    target=st.from_regex(rb"\A/[A-Za-z0-9._~!$&'()*+,;=:@/?-]{0,30}\Z"),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    host=st.sampled_from([b"a.example", b"A.EXAMPLE:80", b"h:8080", b"A.Example.", b"a.example:", b"a.:80"]),
    fields=st.lists(st.tuples(_req_names, st.sampled_from([b":", b": ", b":\t"]), _req_values), max_size=5),
)
def test_fuzzed_upstream_heads_agree_with_the_general_path(
    hp, general, method, target, version, host, fields
):
    lines = [b"Host: " + host] + [b"".join(f) for f in fields]
    head = b"%s %s %s\r\n%s\r\n\r\n" % (method, target, version, b"\r\n".join(lines))
    if hp.key_for(head[:-4]) is None:
        return  # serve() would not take it: never a plain miss
    got = hp.upstream_head(head, 0, len(head), PEER, VIA)
    if got is None:
        return
    assert got == _general_head(general, head)


@pytest.mark.parametrize("target", [b"/a/../b", b"/a/./b", b"/a/..", b"/.", b"/x/..?q=1", b"/" + b"a" * 9000])
def test_targets_the_key_rewrites_or_refuses_are_left_to_the_general_path(hp, general, target):
    """Dot segments (RFC 3986 5.2.4: keys and upstream both remove them) and targets over max_request_line
    (414) are not the C path's: it bails, and the general path renders the normalised target."""
    head = b"GET %s HTTP/1.1\r\nHost: a.example\r\n\r\n" % target
    assert hp.key_for(head[:-4]) is None
    if len(target) < 100:
        sent = _general_head(general, head)
        assert sent.startswith(b"GET %s HTTP/1.1\r\n" % keys.request_form(b"a", target)[1])
        assert b"/." not in sent.split(b" ")[1]


@pytest.mark.parametrize("host", [b"a.example/x", b"a.example?x", b"a.example#x", b"u@a.example", b"a\\b"])
def test_hosts_that_are_no_authority_are_left_to_the_general_path(hp, host):
    head = b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % host
    assert hp.key_for(head[:-4]) is None  # the general path answers 400


def test_empty_forwarded_for_is_rendered_as_the_general_path_does(hp, general):
    head = b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For:\r\n\r\n"
    assert hp.key_for(head[:-4]) is not None
    assert hp.upstream_head(head, 0, len(head), PEER, VIA) == _general_head(general, head)


def test_field_named_by_connection_is_dropped_as_the_general_path_does(hp, general):
    head = b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nClose: 1\r\n\r\n"
    assert hp.key_for(head[:-4]) is not None
    got = hp.upstream_head(head, 0, len(head), PEER, VIA)
    assert got == _general_head(general, head)
    assert b"close: 1" not in got


@pytest.mark.parametrize("head", PLAIN_REQUESTS)
def test_request_fields_are_what_httptools_collects(hp, head):
    r = _general_request(head)
    method, target, fields = hp.request_fields(head, 0, len(head))
    assert (method, target, fields) == (r.method, r.target, r.headers)
    before = b"GET /other HTTP/1.1\r\nHost: b\r\n\r\n"
    assert hp.request_fields(before + head + before, len(before), len(before) + len(head)) == (
        method,
        target,
        fields,
    )


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"HEAD"]),
    target=st.from_regex(rb"\A/[A-Za-z0-9._~!$&'()*+,;=:@/?-]{0,30}\Z"),
    fields=st.lists(
        st.tuples(_req_names, st.sampled_from([b":", b": ", b":\t", b":  "]), _req_values | st.just(b"")),
        max_size=5,
    ),
)
def test_fuzzed_request_fields_are_what_httptools_collects(hp, method, target, fields):
    head = b"%s %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (
        method,
        target,
        b"".join(b"".join(f) + b"\r\n" for f in fields),
    )
    if hp.key_for(head[:-4]) is None:
        return
    r = _general_request(head)
    assert hp.request_fields(head, 0, len(head)) == (r.method, r.target, r.headers)


# ====================================================================== in process, against an origin


def ok(body: bytes, *fields: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(f + b"\r\n" for f in fields)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Script:
    """The origin's behaviour per request path (the target without its query): bytes to write, or one of
    ("drop",) close without answering, ("hang",) never answer, ("close", bytes) write then close,
    ("gate", bytes) write once `gate` is set. Default: a cacheable 200 whose body is the target."""

    def __init__(self) -> None:
        self.routes: dict[bytes, object] = {}
        self.seen: list[bytes] = []  # request heads, as received
        self.connections = 0
        self.lost = 0
        self.transports: list[asyncio.Transport] = []
        self.gate = asyncio.Event()

    def heads_for(self, path: bytes) -> list[bytes]:
        return [h for h in self.seen if h.split(b" ", 2)[1].split(b"?")[0] == path]

    def header(self, head: bytes, name: bytes) -> list[bytes]:
        out = []
        for line in head.split(b"\r\n")[1:]:
            n, _, v = line.partition(b":")
            if n.lower() == name:
                out.append(v.strip())
        return out


class OriginProtocol(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport
        self.script.connections += 1
        self.script.transports.append(transport)

    def connection_lost(self, exc):
        self.script.lost += 1

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.script.seen.append(head + b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            action = self.script.routes.get(target.split(b"?")[0])
            if action is None:
                action = ok(target, b"Cache-Control: max-age=60")
            if isinstance(action, bytes):
                self.transport.write(action)
            elif action[0] == "drop":
                self.transport.close()
                return
            elif action[0] == "hang":
                pass
            elif action[0] == "close":
                self.transport.write(action[1])
                self.transport.close()
                return
            elif action[0] == "gate":
                asyncio.get_running_loop().create_task(self._later(action[1]))

    async def _later(self, data: bytes) -> None:
        await self.script.gate.wait()
        self.transport.write(data)


class Env:
    """One edge (a real Context, pool and cache) in process, in front of a scripted origin on 127.0.0.1,
    its own event loop; `fast=False` turns the fast paths off (EDGECORE_NO_FASTPATH=1, read when the
    Context is made: the general path answers hits and misses)."""

    def __init__(self, monkeypatch, fast: bool = True, **cfg_kw) -> None:
        self.loop = asyncio.new_event_loop()
        self.script = Script()
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: OriginProtocol(self.script), "127.0.0.1", 0)
        )
        port = self.server.sockets[0].getsockname()[1]
        cfg = Config(upstream=(Upstream("127.0.0.1", port),), cache_size=8 << 20, **cfg_kw)
        self.cache = Cache(cfg.cache_size, cfg.max_object_size)
        self.counters = SharedCounters(slots=2)
        monkeypatch.setenv("EDGECORE_NO_FASTPATH", "0" if fast else "1")
        self.ctx = protocol.make_context(cfg, self.cache, self.counters.slot_view(1), self.loop)
        assert self.ctx.hitpath.enabled == fast

    def client(self) -> tuple[protocol.ClientProtocol, MemoryTransport]:
        p = protocol.ClientProtocol(self.ctx)
        t = MemoryTransport(("127.0.0.1", 40000))
        p.connection_made(t)
        return p, t

    def run_until(self, cond, timeout: float = 5.0) -> None:
        async def wait() -> None:
            deadline = time.monotonic() + timeout
            for _ in range(100_000):
                if cond():
                    return
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.001)
            raise AssertionError("timed out")

        self.loop.run_until_complete(wait())

    def key(self, target: bytes, host: bytes = b"t.example") -> bytes:
        return keys.primary_key(b"GET", host, target, self.ctx.key_opts)

    def stored(self, target: bytes) -> bool:
        return self.cache.lookup(self.key(target), time.time()) is not None

    def warm(self) -> tuple[protocol.ClientProtocol, MemoryTransport]:
        """A first miss (the general path: no idle connection yet) leaves one idle pooled connection."""
        p, t = self.client()
        p.data_received(get(b"/warm"))
        self.run_until(lambda: len(responses(t.data)) == 1)
        self.run_until(lambda: self.script.connections == 1)
        return p, t

    def close(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.ctx.stop()
        self.server.close()
        for tr in self.script.transports:
            tr.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()
        self.cache.close()


@pytest.fixture
def spy(monkeypatch):
    """Counts what PlainMiss does (created, completed, handed over, lost, failed). The tests using it check
    that the fast path ran: fast path only."""
    if fastpath_disabled():
        pytest.skip("asserts that the plain-miss fast path ran; EDGECORE_NO_FASTPATH is set for this run")
    calls: collections.Counter[str] = collections.Counter()
    made: list[plainmiss.PlainMiss] = []
    calls.made = made  # type: ignore[attr-defined]  # the PlainMiss objects, in order
    for name in ("__init__", "_complete", "_hand_over", "lost", "_fail"):
        orig = getattr(plainmiss.PlainMiss, name)

        def wrapper(self, *a, _orig=orig, _name=name, **kw):
            calls[_name] += 1
            if _name == "__init__":
                made.append(self)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(plainmiss.PlainMiss, name, wrapper)
    return calls


@pytest.fixture
def envs(monkeypatch, spy):
    made: list[Env] = []

    def make(fast: bool = True, **cfg_kw) -> Env:
        e = Env(monkeypatch, fast, **cfg_kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def get(target: bytes, *fields: bytes, method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s %s\r\nHost: t.example\r\n%s\r\n" % (
        method,
        target,
        version,
        b"".join(f + b"\r\n" for f in fields),
    )


@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


def responses(data: bytes | bytearray, head_only: tuple[int, ...] = ()) -> list[Resp]:
    """The complete responses in data (Content-Length or chunked framing); the ones whose index is in
    head_only answer HEAD (no body)."""
    out: list[Resp] = []
    rest = bytes(data)
    interim = b""  # 1xx responses relayed before a final one are part of its raw bytes
    while b"\r\n\r\n" in rest:
        head, after = rest.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        fields = [(n.lower(), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines[1:])]
        d = dict(fields)
        status = int(lines[0].split(b" ")[1])
        if 100 <= status < 200:
            interim += head + b"\r\n\r\n"
            rest = after
            continue
        if len(out) in head_only:
            body, n = b"", 0
        elif d.get(b"transfer-encoding") == b"chunked":
            body, pos = b"", 0
            while True:
                eol = after.find(b"\r\n", pos)
                if eol < 0:
                    return out
                size = int(after[pos:eol], 16)
                if len(after) < eol + 2 + size + 2:
                    return out
                body += after[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            n = pos
        else:
            n = int(d.get(b"content-length", b"0"))
            if len(after) < n:
                return out
            body = after[:n]
        out.append(Resp(status, fields, body, interim + head + b"\r\n\r\n" + after[:n]))
        interim = b""
        rest = after[n:]
    return out


# max-age=60, less the (sub-second) response delay counted in the initial age (RFC 9111 4.2.3)
STORED_60 = re.compile(rb"edgecore; fwd=uri-miss; fwd-status=200; stored; ttl=(59|60)")


def _cs(r: Resp) -> bytes:
    return r.header(b"cache-status") or b""


# ---------------------------------------------------------------------- the plain miss itself


def test_plain_miss_is_fetched_stored_and_then_a_hit(envs, spy):
    env = envs()
    p, t = env.warm()
    assert spy["__init__"] == 0  # the first miss had no idle connection: the general path
    p.data_received(get(b"/a?x=1"))
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert (spy["__init__"], spy["_complete"], spy["_hand_over"]) == (1, 1, 0)
    r = responses(t.data)[1]
    assert r.status == 200 and r.body == b"/a?x=1"
    assert STORED_60.fullmatch(_cs(r)), _cs(r)
    assert r.header(b"age") == b"0"
    assert r.header(b"via") == VIA and r.header(b"content-length") == b"6"
    assert r.header(b"connection") is None  # HTTP/1.1 keep-alive: nothing to say
    assert env.stored(b"/a?x=1")
    assert not env.ctx.flights.busy(env.key(b"/a?x=1"))
    # the connection went back to the pool: the next miss takes the fast path again, on it
    p.data_received(get(b"/b"))
    env.run_until(lambda: len(responses(t.data)) == 3)
    assert spy["_complete"] == 2 and env.script.connections == 1
    # and the stored one is a hit (answered in C, the origin not asked)
    p.data_received(get(b"/a?x=1"))
    env.run_until(lambda: len(responses(t.data)) == 4)
    hit = responses(t.data)[3]
    assert hit.body == b"/a?x=1" and _cs(hit).startswith(b"edgecore; hit; ttl=")
    assert len(env.script.heads_for(b"/a")) == 1
    assert not t.closed


def test_plain_miss_answers_exactly_as_the_general_path(envs, spy):
    """The same exchange with the fast path on and off: identical bytes to the client (Age aside) and
    identical requests at the origin."""
    outs = []
    for fast in (True, False):
        env = envs(fast=fast)
        env.script.routes[b"/same"] = ok(
            b"body!",
            b"Cache-Control: max-age=120",
            b'ETag: "e1"',
            b"Age: 20",
            b"Surrogate-Key: k1",
            b"X-A: b",
        )
        p, t = env.warm()
        p.data_received(get(b"/same", b"X-Forwarded-For: 10.0.0.9", b"Accept: text/html"))
        env.run_until(lambda t=t: len(responses(t.data)) == 2)
        p.data_received(get(b"/same"))
        env.run_until(lambda t=t: len(responses(t.data)) == 3)
        outs.append((responses(t.data)[1:], env.script.seen))
    assert spy["_complete"] == 1
    (fast_resps, fast_seen), (gen_resps, gen_seen) = outs
    assert re.fullmatch(rb"edgecore; fwd=uri-miss; fwd-status=200; stored; ttl=(99|100)", _cs(fast_resps[0]))
    assert [_no_age(r.raw) for r in fast_resps] == [_no_age(r.raw) for r in gen_resps]
    assert fast_seen == gen_seen


def _no_age(raw: bytes) -> bytes:
    return re.sub(rb"\r\nage: \d+\r\n", b"\r\nage: N\r\n", raw)


def test_plain_miss_head(envs, spy):
    env = envs()
    p, t = env.warm()
    p.data_received(get(b"/h", method=b"HEAD"))
    env.run_until(lambda: len(responses(t.data, head_only=(1,))) == 2)
    assert spy["_complete"] == 1
    r = responses(t.data, head_only=(1,))[1]
    assert r.status == 200 and r.header(b"content-length") == b"2"
    assert t.data.endswith(b"\r\n\r\n")  # no body
    assert STORED_60.fullmatch(_cs(r)), _cs(r)
    assert env.script.heads_for(b"/h")[0].startswith(b"GET /h HTTP/1.1\r\n")  # fetched as GET
    p.data_received(get(b"/h"))  # the GET is now a hit, with the body
    env.run_until(lambda: len(responses(t.data, head_only=(1,))) == 3)
    hit = responses(t.data, head_only=(1,))[2]
    assert hit.body == b"/h" and _cs(hit).startswith(b"edgecore; hit")
    assert len(env.script.heads_for(b"/h")) == 1


def test_plain_miss_http10_keep_alive_and_close(envs, spy):
    env = envs()
    p, t = env.warm()
    p.data_received(get(b"/ten", b"Connection: keep-alive", version=b"HTTP/1.0"))
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_complete"] == 1
    r = responses(t.data)[1]
    assert r.body == b"/ten" and r.header(b"connection") == b"keep-alive"
    assert not t.closed
    p.data_received(get(b"/ten2", version=b"HTTP/1.0"))  # no keep-alive: answered, then closed
    env.run_until(lambda: len(responses(t.data)) == 3)
    assert spy["_complete"] == 2
    r = responses(t.data)[2]
    assert r.body == b"/ten2" and r.header(b"connection") == b"close"
    assert t.closed


def test_plain_miss_with_connection_close_closes_after_the_response(envs, spy):
    env = envs()
    p, t = env.warm()
    p.data_received(get(b"/cc", b"Connection: close"))
    env.run_until(lambda: t.closed)
    assert spy["_complete"] == 1
    r = responses(t.data)[1]
    assert r.body == b"/cc" and r.header(b"connection") == b"close"


def test_pipelined_requests_after_a_plain_miss_come_back_in_order(envs, spy):
    env = envs()
    p, t = env.warm()
    env.script.routes[b"/p1"] = ("gate", ok(b"first", b"Cache-Control: max-age=60"))
    p.data_received(get(b"/p1") + get(b"/warm") + get(b"/p2") + get(b"/p3", method=b"HEAD") + get(b"/warm"))
    env.run_until(lambda: len(env.script.heads_for(b"/p1")) == 1)
    assert spy["__init__"] == 1 and len(responses(t.data)) == 1  # nothing answered ahead of /p1
    env.script.gate.set()
    env.run_until(lambda: len(responses(t.data, head_only=(4,))) == 6)
    got = responses(t.data, head_only=(4,))[1:]
    assert [r.body for r in got] == [b"first", b"/warm", b"/p2", b"", b"/warm"]
    assert got[3].header(b"content-length") == b"3"
    assert [h.split(b" ")[1] for h in env.script.seen] == [b"/warm", b"/p1", b"/p2", b"/p3"]
    # more requests arriving while a plain miss is in flight wait their turn too
    env.script.gate.clear()
    env.script.routes[b"/q1"] = ("gate", ok(b"q1", b"Cache-Control: max-age=60"))
    p.data_received(get(b"/q1"))
    p.data_received(get(b"/p1"))
    p.data_received(get(b"/q2"))
    env.run_until(lambda: len(env.script.heads_for(b"/q1")) == 1)
    assert spy["__init__"] == 2
    env.script.gate.set()
    env.run_until(lambda: len(responses(t.data, head_only=(4,))) == 9)
    assert [r.body for r in responses(t.data, head_only=(4,))[6:]] == [b"q1", b"first", b"/q2"]


def test_forwarded_fields_seen_by_the_origin(envs, spy):
    env = envs()
    p, t = env.warm()
    p.data_received(
        get(
            b"/fwd",
            b"X-Forwarded-For: 10.0.0.1, 10.0.0.2",
            b"X-Forwarded-Host: evil.example",
            b"Forwarded: for=1.2.3.4;host=evil",
            b"X-Forwarded-Proto: https",
            b"Keep-Alive: 5",
            b"Accept: text/plain",
        )
    )
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_complete"] == 1
    head = env.script.heads_for(b"/fwd")[0]
    h = env.script.header
    assert h(head, b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 127.0.0.1"]
    assert h(head, b"x-forwarded-host") == [] and h(head, b"forwarded") == []
    assert h(head, b"x-forwarded-proto") == [b"http"]
    assert h(head, b"keep-alive") == [] and h(head, b"connection") == []
    assert h(head, b"via") == [VIA] and h(head, b"host") == [b"t.example"]
    assert h(head, b"accept") == [b"text/plain"]


def test_concurrent_waiters_get_the_stored_plain_miss(envs, spy):
    env = envs()
    env.warm()
    env.script.routes[b"/co"] = ("gate", ok(b"shared", b"Cache-Control: max-age=60"))
    (p1, t1), (p2, t2) = env.client(), env.client()
    p1.data_received(get(b"/co"))
    p2.data_received(get(b"/co"))
    env.run_until(lambda: env.counters.total(F_WAITING) == 1 and len(env.script.heads_for(b"/co")) == 1)
    assert spy["__init__"] == 1  # the second one waits on the first one's flight
    env.script.gate.set()
    env.run_until(lambda: len(responses(t1.data)) == 1 and len(responses(t2.data)) == 1)
    assert responses(t1.data)[0].body == responses(t2.data)[0].body == b"shared"
    assert b"collapsed" in _cs(responses(t2.data)[0])
    assert len(env.script.heads_for(b"/co")) == 1


# ---------------------------------------------------------------------- handed over to the general path

HANDOVER = {
    "chunked": b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "no-store": ok(b"secret", b"Cache-Control: no-store"),
    "private": ok(b"mine", b"Cache-Control: private, max-age=60"),
    "no-freshness": ok(b"plain but not storable", b"X-A: 1"),
    "vary": ok(b"varied", b"Cache-Control: max-age=60", b"Vary: Accept-Encoding"),
    "qualified-no-cache": ok(b"nc", b'Cache-Control: max-age=60, no-cache="set-cookie"', b"Set-Cookie: a=b"),
    "big": ok(b"z" * (70 << 10), b"Cache-Control: max-age=60"),
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
    + ok(b"after hints", b"Cache-Control: max-age=60"),
    "http10": b"HTTP/1.0 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\nold!",
    "connection-listed": ok(b"listed", b"Cache-Control: max-age=60", b"Connection: x-hop", b"X-Hop: 1"),
    "204": b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\n\r\n",
    "obs-fold": ok(b"folded", b"Cache-Control: max-age=60", b"X-F: a\r\n b"),
    "close-delimited": ("close", b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\r\nuntil close"),
}
STORED_AFTER = {
    "chunked",
    "vary",
    "qualified-no-cache",
    "big",
    "early-hints",
    "http10",
    "connection-listed",
    "204",
    "close-delimited",
}
INVALID = {"obs-fold"}  # httptools rejects it: 502


@pytest.mark.parametrize("case", sorted(HANDOVER))
def test_handed_over_responses_are_answered_as_the_general_path_does(envs, spy, case):
    outs = []
    for fast in (True, False):
        env = envs(fast=fast)
        env.script.routes[b"/ho"] = HANDOVER[case]
        p, t = env.warm()
        p.data_received(get(b"/ho", b"Accept-Encoding: gzip"))
        env.run_until(lambda t=t: len(responses(t.data)) == 2)
        p.data_received(get(b"/ho", b"Accept-Encoding: gzip"))
        env.run_until(lambda t=t: len(responses(t.data)) == 3)
        if fast:
            assert (spy["__init__"], spy["_hand_over"], spy["_complete"]) == (1, 1, 0)
        outs.append(([_no_age(r.raw) for r in responses(t.data)[1:]], env.script.seen, env.stored(b"/ho")))
    (fast_resps, fast_seen, fast_stored), (gen_resps, gen_seen, gen_stored) = outs
    assert fast_resps == gen_resps
    assert fast_stored == gen_stored == (case in STORED_AFTER)
    if case in INVALID:
        # both answer 502 twice; the general path also retries the invalid response once on a fresh
        # connection (its reused-connection retry), the handed-over exchange does not
        assert fast_resps[0].startswith(b"HTTP/1.1 502") and fast_resps[1].startswith(b"HTTP/1.1 502")
        assert len(fast_seen) <= len(gen_seen)
        return
    assert fast_seen == gen_seen
    assert len([h for h in fast_seen if b" /ho " in h]) == (1 if case in STORED_AFTER else 2)
    assert b"fwd=uri-miss" in fast_resps[0]


def test_handed_over_head_request(envs, spy):
    outs = []
    for fast in (True, False):
        env = envs(fast=fast)
        env.script.routes[b"/hh"] = HANDOVER["chunked"]
        p, t = env.warm()
        p.data_received(get(b"/hh", method=b"HEAD"))
        env.run_until(lambda t=t: len(responses(t.data, head_only=(1,))) == 2)
        p.data_received(get(b"/hh"))
        env.run_until(lambda t=t: len(responses(t.data, head_only=(1,))) == 3)
        outs.append([_no_age(r.raw) for r in responses(t.data, head_only=(1,))[1:]])
    assert spy["_hand_over"] == 1
    assert outs[0] == outs[1]
    assert outs[0][1].endswith(b"hello world")


def test_handed_over_head_in_two_reads(envs, spy):
    """The head is incomplete in the first read: the bytes kept so far go to httptools with the rest."""
    env = envs()
    env.script.routes[b"/two"] = ("gate", b"")
    p, t = env.warm()
    p.data_received(get(b"/two"))
    env.run_until(lambda: len(env.script.heads_for(b"/two")) == 1)
    tr = env.script.transports[0]
    tr.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-")
    env.run_until(lambda: spy["__init__"] == 1 and spy.made[0].buf.endswith(b"Transfer-"))
    tr.write(b"Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_hand_over"] == 1
    assert responses(t.data)[1].body == b"abc"
    assert env.stored(b"/two")


def test_uncacheable_response_releases_waiters_and_sets_hit_for_miss(envs, spy):
    outs = []
    for fast in (True, False):
        env = envs(fast=fast)
        env.script.routes[b"/u"] = ("gate", ok(b"nope", b"Cache-Control: no-store"))
        env.warm()
        (p1, t1), (p2, t2) = env.client(), env.client()
        p1.data_received(get(b"/u"))
        p2.data_received(get(b"/u"))
        env.run_until(
            lambda env=env: env.counters.total(F_WAITING) == 1 and len(env.script.heads_for(b"/u")) == 1
        )
        env.script.gate.set()
        env.run_until(lambda t1=t1, t2=t2: len(responses(t1.data)) == 1 and len(responses(t2.data)) == 1)
        r1, r2 = responses(t1.data)[0], responses(t2.data)[0]
        assert r1.body == r2.body == b"nope"
        assert b"collapsed-uncacheable" in _cs(r2)
        # now known uncacheable: no coalescing, no plain miss, straight through (hit-for-miss)
        before = spy["__init__"]
        p1.data_received(get(b"/u"))
        env.run_until(lambda t1=t1: len(responses(t1.data)) == 2)
        assert spy["__init__"] == before
        r3 = responses(t1.data)[1]
        assert b"hit-for-miss" in _cs(r3) and r3.body == b"nope"
        outs.append([_cs(r) for r in (r1, r2, r3)] + [len(env.script.heads_for(b"/u"))])
    assert spy["_hand_over"] == 1
    assert outs[0] == outs[1]
    assert outs[0][-1] == 3


# ---------------------------------------------------------------------- failures


def test_idle_connection_closed_by_the_origin_restarts_on_the_general_path(envs, spy):
    """The origin closes the idle keep-alive connection; the edge has not noticed yet when the next miss
    takes it: the request starts over on the general path (a new connection) and gets its 200."""
    env = envs()
    p, t = env.warm()
    env.script.transports[0].close()
    p.data_received(get(b"/again"))  # synchronously: before the loop reads the origin's close
    assert spy["__init__"] == 1
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["lost"] == 1 and spy["_fail"] == 0 and spy["_complete"] == 0
    r = responses(t.data)[1]
    assert r.status == 200 and r.body == b"/again"
    assert _cs(r).startswith(b"edgecore; fwd=uri-miss; fwd-status=200; stored")
    assert env.script.connections == 2 and env.stored(b"/again")
    assert not env.ctx.flights.busy(env.key(b"/again"))


@pytest.mark.parametrize(
    "action",
    [("drop",), ("close", b"HTTP/1.1 200 OK\r\nCache-Con"), ("close", b"HTTP/1.1 200 OK\r\n")],
    ids=["before-any-byte", "mid-head", "after-status-line"],
)
def test_reused_connection_closed_before_a_whole_head_restarts_as_the_general_path_retries(envs, spy, action):
    """Closed before a whole response head: the request starts over on the general path, which is what
    that path does on a reused connection (one retry on a fresh one); the origin closes that one too: 502
    and the connection goes on. Same bytes and the same origin requests as the general path."""
    outs = []
    for fast in (True, False):
        env = envs(fast=fast)
        p, t = env.warm()
        env.script.routes[b"/dropped"] = action
        p.data_received(get(b"/dropped") + get(b"/warm"))
        env.run_until(lambda t=t: len(responses(t.data)) == 3)
        if fast:
            assert spy["lost"] == 1 and spy["_fail"] == 0 and spy["_hand_over"] == 0
        got = responses(t.data)
        assert got[1].status == 502 and got[2].body == b"/warm" and not t.closed
        assert not env.stored(b"/dropped")
        assert not env.ctx.flights.busy(env.key(b"/dropped"))
        outs.append(([r.raw for r in got[1:]], env.script.seen))
    assert outs[0] == outs[1]
    assert len([h for h in outs[0][1] if b" /dropped " in h]) == 2


def test_origin_closing_mid_body_is_a_502_and_nothing_is_stored(envs, spy):
    env = envs()
    p, t = env.warm()
    env.script.routes[b"/cut"] = (
        "close",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
    )
    p.data_received(get(b"/cut") + get(b"/warm"))
    env.run_until(lambda: len(responses(t.data)) == 3)
    assert spy["__init__"] == 1 and spy["_fail"] == 1 and spy["_complete"] == 0
    got = responses(t.data)
    assert got[1].status == 502 and b"x" * 10 not in got[1].raw  # nothing of the body was sent
    assert got[2].body == b"/warm" and not t.closed  # the connection goes on
    assert not env.stored(b"/cut")
    assert not env.ctx.flights.busy(env.key(b"/cut"))
    del env.script.routes[b"/cut"]
    p.data_received(get(b"/cut"))
    env.run_until(lambda: len(responses(t.data)) == 4)
    assert responses(t.data)[3].body == b"/cut"
    assert len(env.script.heads_for(b"/cut")) == 2


def test_response_head_timeout_is_a_504(envs, spy):
    env = envs(response_timeout=0.3)
    p, t = env.warm()
    env.script.routes[b"/slow"] = ("hang",)
    t0 = time.monotonic()
    p.data_received(get(b"/slow") + get(b"/warm"))
    env.run_until(lambda: len(responses(t.data)) == 3)
    assert time.monotonic() - t0 >= 0.3
    assert spy["__init__"] == 1 and spy["_fail"] == 1
    got = responses(t.data)
    assert got[1].status == 504 and got[2].body == b"/warm"
    assert not env.ctx.flights.busy(env.key(b"/slow")) and not env.stored(b"/slow")


def test_body_idle_timeout_is_a_504(envs, spy):
    env = envs(idle_timeout=0.3)
    p, t = env.warm()
    env.script.routes[b"/stall"] = (
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 50\r\n\r\nabc"
    )
    p.data_received(get(b"/stall"))
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_fail"] == 1
    assert responses(t.data)[1].status == 504 and not env.stored(b"/stall")


def test_extra_bytes_after_the_body_are_served_and_the_connection_not_reused(envs, spy):
    env = envs()
    p, t = env.warm()
    env.script.routes[b"/extra"] = ok(b"exact", b"Cache-Control: max-age=60") + b"HTTP/1.1 200 OK\r\n\r\njunk"
    p.data_received(get(b"/extra"))
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_complete"] == 1
    r = responses(t.data)[1]
    assert r.body == b"exact" and b"junk" not in t.data
    env.run_until(lambda: env.script.lost == 1)  # the edge closed that connection
    p.data_received(get(b"/after"))
    env.run_until(lambda: len(responses(t.data)) == 3)
    assert responses(t.data)[2].body == b"/after"
    assert env.script.connections == 2
    assert spy["__init__"] == 1  # no idle connection was left for a plain miss


def test_response_in_many_small_reads(envs, spy):
    env = envs()
    p, t = env.warm()
    env.script.routes[b"/bits"] = ("gate", b"")
    p.data_received(get(b"/bits"))
    env.run_until(lambda: len(env.script.heads_for(b"/bits")) == 1)
    tr = env.script.transports[0]
    resp = ok(b"0123456789", b"Cache-Control: max-age=60", b"X-A: b")
    m = spy.made[0]
    for i in range(0, len(resp), 7):
        tr.write(resp[i : i + 7])  # each piece read before the next is sent: one data() per piece
        env.run_until(lambda i=i: len(m.buf) >= min(i + 7, len(resp)) or spy["_complete"] == 1)
    env.run_until(lambda: len(responses(t.data)) == 2)
    assert spy["_complete"] == 1
    assert responses(t.data)[1].body == b"0123456789" and env.stored(b"/bits")


# ---------------------------------------------------------------------- EDGECORE_NO_FASTPATH


class ServeSpy:
    """Stands in for a Context's HitPath: records how many bytes each HitPath.serve call answered."""

    def __init__(self, hp) -> None:
        object.__setattr__(self, "_hp", hp)
        object.__setattr__(self, "consumed", [])

    def serve(self, data, transport, fd=-1):
        consumed, close, miss = self._hp.serve(data, transport, fd)
        self.consumed.append(consumed)
        return consumed, close, miss

    def __getattr__(self, name: str):
        return getattr(self._hp, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._hp, name, value)


def test_no_fastpath_env_leaves_hits_and_plain_misses_to_the_general_path(monkeypatch, path):
    """EDGECORE_NO_FASTPATH=1 (Env(fast=False)): HitPath.serve answers nothing, so a fresh plain hit is
    answered by the general path, and a plain miss over an idle pooled connection is no PlainMiss."""
    fast = path == "fast"
    made = collections.Counter()
    orig = plainmiss.PlainMiss.__init__

    def counted(self, *a, **kw):
        made["plain"] += 1
        return orig(self, *a, **kw)

    monkeypatch.setattr(plainmiss.PlainMiss, "__init__", counted)
    env = Env(monkeypatch, fast)
    try:
        hp = ServeSpy(env.ctx.hitpath)
        env.ctx.hitpath = hp
        p, t = env.warm()
        p.data_received(get(b"/m"))  # a miss, with an idle pooled connection at hand
        env.run_until(lambda: len(responses(t.data)) == 2)
        p.data_received(get(b"/m"))  # a fresh plain hit
        env.run_until(lambda: len(responses(t.data)) == 3)
        miss, hit = responses(t.data)[1:]
        assert STORED_60.fullmatch(_cs(miss)), _cs(miss)
        assert hit.body == b"/m" and _cs(hit).startswith(b"edgecore; hit; ttl=")
        assert len(env.script.heads_for(b"/m")) == 1
        assert made["plain"] == (1 if fast else 0)
        assert sum(hp.consumed) == (len(get(b"/m")) if fast else 0), hp.consumed
    finally:
        env.close()


def test_no_fastpath_is_said_in_the_startup_log(origin, path):
    e = Edge(origin.url, path=path)
    try:
        assert get_e2e(e.port, "/log?body=up").body == b"up"
    finally:
        e.stop()
    said = any("fast paths: off (EDGECORE_NO_FASTPATH)" in line for line in e.lines)
    assert said == (path == "general"), e.lines


# ---------------------------------------------------------------------- a real edgecore process


def test_real_server_plain_miss(edge, origin, uniq):
    from client import Conn

    c = Conn(edge.port)
    try:
        c.request("GET", f"{uniq}/warm?cc=max-age=60")  # leaves an idle pooled connection
        assert c.read_response().status == 200
        target = f"{uniq}/m?cc=max-age=60&size=300"
        c.request("GET", target, headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Host": "evil"})
        r = c.read_response()
        assert r.status == 200 and len(r.body) == 300
        assert STORED_60.fullmatch(r.cache_status.encode()), r.cache_status
        assert r.header("age") is not None
        seen = origin.requests_for(f"{uniq}/m")[0]
        assert seen.method == "GET"
        assert seen.header("x-forwarded-for") == "10.1.2.3, 127.0.0.1"
        assert seen.header("x-forwarded-host") is None
        c.request("GET", target)
        r2 = c.read_response()
        assert r2.cache_status.startswith("edgecore; hit") and r2.body == r.body
        c.request("HEAD", f"{uniq}/h?cc=max-age=60&size=10")
        r3 = c.read_response(head_only=True)
        assert r3.status == 200 and r3.header("content-length") == "10"
    finally:
        c.close()
    assert origin.count(f"{uniq}/m") == 1


# ====================================================================== a real edgecore process, with a spy
#
# End to end against a real `edgecore serve`. The edge runs with a spy (SpyEdge): PlainMiss's entry points
# print one line each to stderr, so a test knows the plain path (not the general one) fetched a request,
# and `plain=False` runs it with EDGECORE_NO_FASTPATH=1, so the same scenario can be compared with what the
# general path does. The origin (RawOrigin) is a small scriptable HTTP/1.1 server on 127.0.0.1 that can hold
# a response behind a gate or close a kept-alive connection without answering.

# Runs `edgecore serve` with PlainMiss instrumented (inherited by the forked workers).
SPY_MAIN = r"""
import os, sys
from edgecore import plainmiss

def _spy(name):
    orig = getattr(plainmiss.PlainMiss, name)
    def wrapper(self, *a, **kw):
        raw = a[5] if name == "__init__" else self.raw
        target = raw.split(b" ", 2)[1].decode("latin-1")
        sys.stderr.write("SPY %s %d %s\n" % (name, os.getpid(), target))
        sys.stderr.flush()
        return orig(self, *a, **kw)
    setattr(plainmiss.PlainMiss, name, wrapper)

for _n in ("__init__", "_complete", "_hand_over", "lost", "_fail"):
    _spy(_n)

from edgecore.cli import main
sys.argv = ["edgecore", *sys.argv[1:]]
raise SystemExit(main())
"""

SPY_LINE = re.compile(r"SPY (\S+) (\d+) (\S+)")


# ---------------------------------------------------------------------- a scriptable origin


def raw_ok(body: bytes, cc: bytes = b"max-age=60", *fields: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncache-control: " + cc + b"\r\n" + b"".join(f + b"\r\n" for f in fields)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


@dataclass
class Seen:
    path: str
    conn: int  # which origin connection carried it (1, 2, ... in accept order)
    head: bytes


@dataclass
class RawOrigin:
    """routes: path -> list of actions, one per request to that path, in order (the last one repeats):
    bytes (write them), ("gate", name, bytes) (write them once the gate opens) or ("gate_drop", name)
    (close the connection without answering once the gate opens). Unknown paths get raw_ok(path)."""

    routes: dict[str, list] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.cond = threading.Condition()
        self.gates: dict[str, asyncio.Event] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        self.nconn = 0
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _gate(self, name: str) -> asyncio.Event:
        if name not in self.gates:
            self.gates[name] = asyncio.Event()
        return self.gates[name]

    def open_gate(self, name: str) -> None:
        self.loop.call_soon_threadsafe(lambda: self._gate(name).set())

    def count(self, path: str) -> int:
        with self.cond:
            return sum(1 for s in self.seen if s.path == path)

    def wait_count(self, path: str, n: int, timeout: float = 10.0) -> bool:
        return wait_for(lambda: self.count(path) >= n, timeout)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.nconn += 1
        cid = self.nconn
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                path = target.split("?")[0]
                with self.cond:
                    n = sum(1 for s in self.seen if s.path == path)
                    self.seen.append(Seen(path, cid, head))
                    self.cond.notify_all()
                plan = self.routes.get(path)
                action = plan[min(n, len(plan) - 1)] if plan else raw_ok(path.encode())
                if isinstance(action, bytes):
                    writer.write(action)
                elif action[0] == "gate":
                    await self._gate(action[1]).wait()
                    writer.write(action[2])
                elif action[0] == "gate_drop":
                    await self._gate(action[1]).wait()
                    return
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            return
        finally:
            self.writers.discard(writer)
            writer.close()


# ---------------------------------------------------------------------- a real edge, with a spy


class SpyEdge(Edge):
    """A real `edgecore serve` on 127.0.0.1 (ephemeral ports) with PlainMiss instrumented; `plain=False`
    turns the fast paths off (EDGECORE_NO_FASTPATH=1: the general path answers)."""

    def __init__(self, upstream: str, workers: int = 1, plain: bool = True, **env: str) -> None:
        super().__init__(
            upstream,
            workers=workers,
            env=env,
            path="fast" if plain else "general",
            main=[sys.executable, "-c", SPY_MAIN],
        )

    def spy(self, name: str | None = None, target: str | None = None) -> list[tuple[str, int, str]]:
        out = []
        for line in list(self.lines):
            m = SPY_LINE.match(line)
            if m and (name is None or m.group(1) == name) and (target is None or m.group(3) == target):
                out.append((m.group(1), int(m.group(2)), m.group(3)))
        return out


@pytest.fixture
def raw_origin():
    o = RawOrigin()
    yield o
    o.close()


@pytest.fixture
def edges():
    """The tests using it check that the plain-miss fast path ran (the spy): fast path only."""
    if fastpath_disabled():
        pytest.skip("asserts that the plain-miss fast path ran; EDGECORE_NO_FASTPATH is set for this run")
    made: list[SpyEdge] = []

    def make(upstream: str, **kw) -> SpyEdge:
        e = SpyEdge(upstream, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def req(target: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    return (
        f"{method} {target} HTTP/{version}\r\nHost: review.test\r\n"
        + "".join(f + "\r\n" for f in fields)
        + "\r\n"
    ).encode("latin-1")


def exchange(conn: Conn, target: str, *fields: str, method: str = "GET") -> Response:
    conn.send(req(target, *fields, method=method))
    return conn.read_response(head_only=method == "HEAD")


def conns_per_worker(edge: SpyEdge, workers: int, prefix: str) -> list[Conn]:
    """One kept-alive client connection per worker (found by which worker's served count moves), each of
    whose workers has fetched a miss, so that it holds an idle pooled upstream connection."""
    found: dict[int, Conn] = {}
    for i in range(64):
        before = edge.stats()["workers"]["requests"]
        c = Conn(edge.port)
        r = exchange(c, f"{prefix}/warm{i}")
        assert r.status == 200
        after = edge.stats()["workers"]["requests"]
        moved = [s for s in range(workers) if after[s] != before[s]]
        assert len(moved) == 1, (before, after)
        if moved[0] in found:
            c.close()
        else:
            found[moved[0]] = c
        if len(found) == workers:
            return [found[s] for s in range(workers)]
    raise AssertionError(f"could not reach {workers} workers: {sorted(found)}")


# ---------------------------------------------------------------------- same outcome as the general path


def test_reused_connection_dropped_keeps_waiters_coalesced(edges):
    """An idle pooled connection the origin closes (its keep-alive timeout) just as a miss is sent on it,
    with a second client already waiting for that key. The general path retries on a new connection
    within the same flight: the waiter is served the stored response (collapsed) and the origin sees the
    key twice (the dropped request and the retry). The plain path must do no worse."""
    results = {}
    for plain in (False, True):
        o = RawOrigin()
        try:
            path = "/co"
            o.routes[path] = [("gate_drop", "drop"), raw_ok(b"shared body")]
            e = edges(o.url, plain=plain)
            warm = Conn(e.port)
            assert exchange(warm, "/warm").status == 200  # leaves one idle pooled connection
            a, b = Conn(e.port), Conn(e.port)
            a.send(req(path))
            assert o.wait_count(path, 1)
            warm_conn = next(s.conn for s in o.seen if s.path == "/warm")
            assert o.seen[-1].conn == warm_conn  # sent on the reused connection
            b.send(req(path))
            assert wait_for(lambda e=e: e.stats()["coalescing"]["waiting"] == 1)
            o.open_gate("drop")  # the origin closes that connection without answering
            ra, rb = a.read_response(), b.read_response()
            assert ra.status == rb.status == 200
            assert ra.body == rb.body == b"shared body"
            st = e.stats()
            results[plain] = (rb.cache_status, o.count(path), st["cache"]["hits"], st["cache"]["misses"])
            if plain:
                assert len(e.spy("__init__", path)) == 1 and len(e.spy("lost", path)) == 1
            for c in (warm, a, b):
                c.close()
        finally:
            o.close()
    general = results[False]
    assert "collapsed;" in general[0] and general[1] == 2, general
    assert results[True] == general, results


# ---------------------------------------------------------------------- workers, signals, clients, pipelining


def test_two_workers_coalesce_plain_misses_into_one_upstream_request(raw_origin, edges):
    """Worker 0 fetches a key as a plain miss (holding the cross-worker lock); worker 1, with an idle
    pooled connection of its own, gets the same key meanwhile: it waits for the lock instead of fetching,
    then serves what worker 0 stored. One upstream request."""
    e = edges(raw_origin.url, workers=2)
    c0, c1 = conns_per_worker(e, 2, "/w")
    pids = e.stats()["workers"]["pids"]
    raw_origin.routes["/k"] = [("gate", "k", raw_ok(b"one fetch"))]
    c0.send(req("/k"))
    assert raw_origin.wait_count("/k", 1)
    assert [p for _, p, _ in e.spy("__init__", "/k")] == [pids[0]]  # worker 0: the plain path
    c1.send(req("/k"))
    assert wait_for(lambda: e.stats()["coalescing"]["waiting"] == 1)
    raw_origin.open_gate("k")
    r0, r1 = c0.read_response(), c1.read_response()
    assert r0.status == r1.status == 200 and r0.body == r1.body == b"one fetch"
    assert r0.cache_status.startswith("edgecore; fwd=uri-miss; fwd-status=200; stored")
    assert "collapsed" in r1.cache_status
    assert raw_origin.count("/k") == 1
    assert [p for _, p, _ in e.spy("_complete", "/k")] == [pids[0]]
    # the lock is gone: a third request in either worker is a plain hit
    for c in (c0, c1):
        assert exchange(c, "/k").cache_status.startswith("edgecore; hit")
    assert raw_origin.count("/k") == 1


def test_worker_killed_mid_plain_miss_does_not_wedge_the_key(raw_origin, edges):
    """Worker 0 dies holding the cross-worker lock of a plain miss: the supervisor releases the lock when
    it reaps the worker, so worker 1's request for the key fetches it itself within a second or two, not
    after the lock's lifetime (response_timeout, 30 s here)."""
    e = edges(raw_origin.url, workers=2, EDGECORE_RESPONSE_TIMEOUT="30")
    c0, c1 = conns_per_worker(e, 2, "/d")
    pids = e.stats()["workers"]["pids"]
    raw_origin.routes["/dead"] = [("gate", "never", b""), raw_ok(b"fetched again")]
    c0.send(req("/dead"))
    assert raw_origin.wait_count("/dead", 1)
    assert [p for _, p, _ in e.spy("__init__", "/dead")] == [pids[0]]
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    r = exchange(c1, "/dead")
    assert r.status == 200 and r.body == b"fetched again"
    assert time.monotonic() - t0 < 3
    assert raw_origin.count("/dead") == 2
    assert exchange(c1, "/dead").cache_status.startswith("edgecore; hit")
    raw_origin.open_gate("never")


def test_sigterm_during_a_plain_miss_finishes_it(raw_origin, edges):
    e = edges(raw_origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    raw_origin.routes["/term"] = [("gate", "term", raw_ok(b"finished"))]
    c.send(req("/term"))
    assert raw_origin.wait_count("/term", 1)
    assert len(e.spy("__init__", "/term")) == 1
    e.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: e.admin("/readyz").status == 503)
    raw_origin.open_gate("term")
    r = c.read_response()
    assert r.status == 200 and r.body == b"finished" and r.complete
    assert c.closed_by_peer()  # draining: the connection closes after the response
    assert e.stop() == 0
    assert len(e.spy("_complete", "/term")) == 1


def test_stats_and_metrics_count_plain_misses_as_the_general_path_does(edges):
    """Plain misses (stored, handed over, uncacheable, 502) count in /stats and /metrics exactly as the
    same requests do on the general path."""
    counts = {}
    for plain in (True, False):
        o = RawOrigin()
        try:
            o.routes["/chunked"] = [
                b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            ]
            o.routes["/nostore"] = [raw_ok(b"x", b"no-store")]
            o.routes["/bad"] = [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-f: a\r\n b\r\n\r\nx"]
            e = edges(o.url, plain=plain)
            c = Conn(e.port)
            assert exchange(c, "/warm").status == 200
            base = e.stats()
            got = []
            for t in ("/s1", "/s2", "/chunked", "/nostore", "/s1", "/chunked"):
                got.append(exchange(c, t).status)
            got.append(exchange(c, "/h", method="HEAD").status)
            assert got == [200] * 7
            st = e.stats()
            metrics = e.admin("/metrics").body.decode()
            # an invalid response: a 502 counted as an error (the general path retries it on a new
            # connection, the handed-over exchange does not: upstream requests are not compared)
            assert exchange(c, "/bad").status == 502
            after = e.stats()
            assert after["cache"]["misses"] == st["cache"]["misses"]
            assert sum(after["workers"]["requests"]) == sum(st["workers"]["requests"]) + 1
            err = re.search(
                r'edgecore_requests_total\{cache_status="error"\} (\S+)', e.admin("/metrics").body.decode()
            )
            assert err is not None and err.group(1) == "1.0"
            reqs = dict(re.findall(r'edgecore_requests_total\{cache_status="(\w+)"\} (\S+)', metrics))
            counts[plain] = (
                st["cache"]["hits"] - base["cache"]["hits"],
                st["cache"]["misses"] - base["cache"]["misses"],
                st["upstream"]["requests"] - base["upstream"]["requests"],
                sum(st["workers"]["requests"]) - sum(base["workers"]["requests"]),
                reqs,
            )
            if plain:
                assert {t for _, _, t in e.spy("__init__")} >= {"/s1", "/s2", "/chunked", "/nostore", "/h"}
            c.close()
        finally:
            o.close()
    assert counts[True] == counts[False], counts
    hits, misses, upstream, served, reqs = counts[True]
    assert (hits, misses, upstream, served) == (2, 5, 5, 7)
    # totals: the warm-up miss counts too; /nostore is uncacheable
    assert (reqs["miss"], reqs["uncacheable"], reqs["hit"]) == ("5.0", "1.0", "2.0")


def test_client_gone_mid_plain_miss_still_stores_and_frees_the_key(raw_origin, edges):
    e = edges(raw_origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    raw_origin.routes["/gone"] = [("gate", "gone", raw_ok(b"kept"))]
    c.send(req("/gone"))
    assert raw_origin.wait_count("/gone", 1)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # reset: the edge sees the client go before the response comes
    raw_origin.open_gate("gone")
    assert wait_for(lambda: len(e.spy("_complete", "/gone")) == 1)
    c2 = Conn(e.port)
    r = exchange(c2, "/gone")
    assert r.status == 200 and r.body == b"kept" and r.cache_status.startswith("edgecore; hit")
    assert raw_origin.count("/gone") == 1
    # the pooled connection went back idle: the next miss is plain again
    assert exchange(c2, "/next").status == 200
    assert wait_for(lambda: len(e.spy("_complete", "/next")) == 1)  # the spy line may trail the response
    c2.close()


def test_pipelined_plain_misses_hits_and_general_requests_in_order(raw_origin, edges):
    e = edges(raw_origin.url)
    c = Conn(e.port)
    assert exchange(c, "/warm").status == 200
    assert exchange(c, "/hit").status == 200
    raw_origin.routes["/post"] = [raw_ok(b"posted", b"no-store")]
    batch = (
        req("/hit")
        + req("/p1")
        + req("/hit")
        + req("/p2", method="HEAD")
        + b"POST /post HTTP/1.1\r\nHost: review.test\r\nContent-Length: 2\r\n\r\nhi"
        + req("/p1")
        + req("/p3", "Cache-Control: no-cache")
        + req("/p4", version="1.0")
    )
    c.send(batch)
    got = [c.read_response(head_only=i == 3) for i in range(8)]
    assert [r.status for r in got] == [200] * 8
    assert [r.body for r in got] == [b"/hit", b"/p1", b"/hit", b"", b"posted", b"/p1", b"/p3", b"/p4"]
    assert got[3].header("content-length") == "3"
    assert got[5].cache_status.startswith("edgecore; hit")
    assert got[7].header("connection") == "close"
    assert c.closed_by_peer()
    assert {t for _, _, t in e.spy("__init__")} >= {"/p1"}
    c.close()


def test_connection_paused_for_a_slow_client_is_not_reused_paused(raw_origin, edges):
    """A client that does not read: big pipelined hits fill its socket (the edge pauses writing to it, and
    since the output bound of issue 10 it answers nothing more until the client reads), then the miss
    pipelined after them is fetched on the general path; its upstream connection goes back to the pool
    unpaused. Another client's plain miss then takes that pooled connection."""
    e = edges(raw_origin.url, EDGECORE_RESPONSE_TIMEOUT="1.5")
    raw_origin.routes["/big"] = [raw_ok(b"b" * 1_000_000)]
    c = Conn(e.port)
    assert len(exchange(c, "/big").body) == 1_000_000  # stored
    assert exchange(c, "/big").cache_status.startswith("edgecore; hit")
    c.close()
    slow = Conn(e.port)
    before = e.stats()["cache"]["misses"]
    # more than the kernel buffers on loopback take; Pragma sends /small down the general path (a
    # StoreSink that couples its upstream connection to this client's flow control)
    slow.send(req("/big") * 10 + req("/small", "Pragma: x"))
    assert [len(slow.read_response().body) for _ in range(10)] == [1_000_000] * 10
    assert slow.read_response().body == b"/small"
    assert e.stats()["cache"]["misses"] == before + 1
    other = Conn(e.port)
    t0 = time.monotonic()
    r = exchange(other, "/next")
    took = time.monotonic() - t0
    # the plain path took the pooled connection (the spy line may trail the response: bounded wait)
    assert wait_for(lambda: len(e.spy("__init__", "/next")) == 1)
    assert (r.status, r.body) == (200, b"/next"), (r.status, r.cache_status)
    assert took < 1.0
    for x in (slow, other):
        x.close()
