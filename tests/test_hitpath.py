"""The C fast path for fresh plain hits (ext/hitpath.pyx): it builds keys exactly as keys.primary_key does,
answers only what it is sure of, never disagrees with httptools about a request, and writes the same bytes
the Python path would."""

from __future__ import annotations

import struct
import time

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecore import cachestatus, context, entry, keys, metrics, policy, upstream
from edgecore._hitpath import HitPath
from edgecore.cache import Cache
from edgecore.config import build
from edgecore.context import make_hitpath
from edgecore.metrics import F_SERVED, Outcome, SharedCounters


class Transport:
    def __init__(self, buffered: int = 0) -> None:
        self.out: list[bytes] = []
        self.buffered = buffered  # what get_write_buffer_size reports: a client that reads nothing

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered


@pytest.fixture(scope="module")
def setup():
    cfg = build({"upstream": ["http://127.0.0.1:1"]})
    cache = Cache(8 << 20, 1 << 20)
    counters = SharedCounters(1)
    slot = counters.slot_view(0)
    hp = make_hitpath(cfg, cache, slot, keys.KeyOptions())
    yield cfg, cache, counters, slot, hp
    cache.close()


def _store(
    cache: Cache, host: bytes, target: bytes, body: bytes, lifetime: float = 60.0, no_cache: bool = False
) -> bytes:
    now = time.time()
    f = policy.Freshness(lifetime=lifetime, initial_age=0.0, response_time=now, no_cache=no_cache)
    value, birth, fresh_until, flags = entry.encode(
        200, b"OK", [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60")], body, f
    )
    cache.store(keys.primary_key(b"GET", host, target), value, birth, fresh_until + 60, flags)
    return value


def test_c_path_is_told_every_shared_fact_by_its_python_source(setup):
    """The C path restates nothing: layout, field lists, thresholds and histogram bounds are what the Python
    sources say, and the entry offsets it reads really are where entry.encode puts those fields."""
    hp = setup[4]
    facts = hp.facts
    assert facts["layout"] == context.ENTRY_LAYOUT
    assert facts["bounds"] == metrics.DURATION_BUCKETS
    assert facts["bail_fields"] == context.HIT_PATH_BAIL_FIELDS
    assert set(context.POLICY_REQUEST_FIELDS) <= set(facts["bail_fields"])
    assert facts["fetch_drop"] == upstream.FETCH_DROP_FIELDS
    assert facts["large_body"] == context.LARGE_BODY
    assert facts["write_high"] == context.WRITE_HIGH_WATER
    assert facts["flag_plain"] == entry.FLAG_PLAIN
    assert facts["hit_status"] + b"42" == cachestatus.render(hit=True, ttl=42)
    assert facts["max_line"] == setup[0].max_request_line  # the general path's 414 limit (protocol.on_url)
    assert facts["underscores"] is setup[0].underscores_in_headers  # protocol.on_header drops the same
    value = _store(setup[1], b"facts.example", b"/f", b"x" * 7)
    m = entry.meta(value)
    assert facts["implied"] == entry.IMPLIED
    size, off_sl, off_hl, off_fu, off_birth, off_status, off_ef = facts["layout"]
    assert size == entry.META.size
    assert struct.unpack_from("<H", value, off_sl)[0] == m.statusline_len
    assert struct.unpack_from("<I", value, off_hl)[0] == m.head_len
    assert struct.unpack_from("<d", value, off_fu)[0] == m.fresh_until
    assert struct.unpack_from("<d", value, off_birth)[0] == m.birth
    assert struct.unpack_from("<H", value, off_status)[0] == m.status == 200
    assert struct.unpack_from("<B", value, off_ef)[0] == m.eflags == entry.E_STATUS_200


def test_c_path_refuses_a_layout_outside_meta(setup):
    cfg, cache, _, slot, _ = setup
    with pytest.raises(ValueError, match="outside META"):
        HitPath(
            cache,
            words=slot.words,
            counter_index=(0, 1, 2, 3, 4),
            bounds=metrics.DURATION_BUCKETS,
            max_head=cfg.max_header_size,
            layout=(8, 4, 6, 10, 18, 2, 1),
            flag_plain=entry.FLAG_PLAIN,
            key_prefix=b"",
            bail_fields=(),
            fetch_drop=(),
            large_body=1,
            hit_status=b"",
            max_line=8192,
            underscores=False,
            write_high=0,
            implied=entry.IMPLIED,
        )


hosts = st.sampled_from(
    [
        b"example.com",
        b"EXAMPLE.com",
        b"example.com:80",
        b"example.com:8080",
        b"example.com.",
        b"a",
        b"127.0.0.1:9005",
        b"x.y:",
        b"h:80:80",
    ]
)
targets = st.from_regex(rb"\A/[A-Za-z0-9._~!$&'()*+,;=:@/?-]{0,40}\Z")


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from([b"GET", b"HEAD"]), host=hosts, target=targets)
def test_key_is_byte_identical_to_keys_primary_key(setup, method, host, target):
    hp = setup[4]
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nAccept: */*" % (method, target, host)
    k = hp.key_for(head)
    if k is not None:
        assert k == keys.primary_key(method, host, target)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: a",  # not GET/HEAD
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0",  # framing: Python path
        b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
        b"GET /x HTTP/1.1\r\nHost: a\r\nCache-Control: no-cache",  # request directives need policy
        b"GET /x HTTP/1.1\r\nHost: a\r\nPragma: no-cache",
        b'GET /x HTTP/1.1\r\nHost: a\r\nIf-None-Match: "x"',
        b"GET /x HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1",
        b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t",
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-private",  # Connection-listed fields
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b",  # RFC 9112 3.2
        b"GET /x HTTP/1.1\r\nAccept: */*",  # no Host
        b"GET /x HTTP/1.1\r\nHost: a\r\n folded",  # obs-fold
        b"GET /x HTTP/1.1\nHost: a",  # bare LF
        b"GET /x HTTP/1.1\r\nHost : a",  # space before colon
        b"GET /%41 HTTP/1.1\r\nHost: a",  # needs normalisation
        b"GET http://a/x HTTP/1.1\r\nHost: a",  # absolute form
        b"GET /x HTTP/2.0\r\nHost: a",
        b"GET /x HTTP/1.1\r\nHost: [::1]:80",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX: \x80",  # obs-text
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket",
    ],
)
def test_bails_on_what_it_is_not_sure_of(setup, head):
    assert setup[4].key_for(head) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([b"GET ", b"HEAD ", b""]))
def test_never_accepts_what_httptools_reads_differently(setup, noise, start):
    """Parser differential (request smuggling): whatever the fast path accepts, httptools parses as one
    complete body-less request with the same method, target and Host."""
    hp = setup[4]
    head = start + noise
    key = hp.key_for(head)
    if key is None:
        return
    seen: dict = {"url": b"", "headers": [], "complete": 0}

    class P:
        def on_url(self, u):
            seen["url"] += u

        def on_header(self, n, v):
            seen["headers"].append((n.lower(), v))

        def on_message_complete(self):
            seen["complete"] += 1

    parser = httptools.HttpRequestParser(P())
    parser.feed_data(head + b"\r\n\r\n")
    assert seen["complete"] == 1
    host = [v for n, v in seen["headers"] if n == b"host"]
    assert len(host) == 1
    assert key == keys.primary_key(parser.get_method(), host[0].strip(), seen["url"])


def test_serves_a_fresh_plain_hit_with_age_and_counts_it(setup):
    cfg, cache, counters, slot, hp = setup
    value = _store(cache, b"h.example", b"/hit", b"hello")
    t = Transport()
    before = counters.total(F_SERVED), counters.total(Outcome.HIT)
    data = b"GET /hit HTTP/1.1\r\nHost: h.example\r\n\r\n"
    assert hp.serve(data, t) == (len(data), False, None)
    m = entry.meta(value)
    out = t.out[0]
    status_line = entry.status_line(value, m)
    assert out.startswith(status_line + b"age: 0\r\ncache-status: edgecore; hit; ttl=")
    assert out.endswith(value[entry.M + m.statusline_len :])
    assert (counters.total(F_SERVED), counters.total(Outcome.HIT)) == (before[0] + 1, before[1] + 1)


def test_pipelined_hits_then_a_miss_stops_at_the_miss(setup):
    cache, hp = setup[1], setup[4]
    _store(cache, b"p.example", b"/a", b"A")
    _store(cache, b"p.example", b"/b", b"BB")
    reqs = [
        b"GET /a HTTP/1.1\r\nHost: p.example\r\n\r\n",
        b"HEAD /b HTTP/1.1\r\nHost: p.example\r\n\r\n",
        b"GET /missing HTTP/1.1\r\nHost: p.example\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: p.example\r\n\r\n",
    ]
    t = Transport()
    data = b"".join(reqs)
    consumed, close, miss = hp.serve(data, t)
    assert consumed == len(reqs[0]) + len(reqs[1]) and not close
    # nothing stored for /missing: serve says where its head is, as one typed PlainRequest
    assert miss is not None and miss.key == keys.primary_key(b"GET", b"p.example", b"/missing")
    assert data[miss.start : miss.end] == reqs[2]
    assert (miss.keep, miss.head_only, miss.http10) == (1, False, False)
    assert t.out[0].endswith(b"\r\n\r\nA")
    assert t.out[1].endswith(b"\r\n\r\n") and b"\r\ncontent-length: 2\r\n" in t.out[1]  # HEAD: no body


def test_pipelined_hits_stop_while_the_write_buffer_is_above_the_high_water_mark(setup):
    """Flow control: with the client's write buffer above WRITE_HIGH_WATER, serve answers the hit at hand
    and no further pipelined one (the protocol answers the rest once the buffer drains)."""
    cache, hp = setup[1], setup[4]
    _store(cache, b"w.example", b"/a", b"A")
    one = b"GET /a HTTP/1.1\r\nHost: w.example\r\n\r\n"
    full = Transport(buffered=context.WRITE_HIGH_WATER + 1)
    assert hp.serve(one * 3, full) == (len(one), False, None) and len(full.out) == 1
    below = Transport(buffered=context.WRITE_HIGH_WATER)
    assert hp.serve(one * 3, below) == (3 * len(one), False, None) and len(below.out) == 3


def test_connection_close_and_http10(setup):
    cache, hp = setup[1], setup[4]
    _store(cache, b"c.example", b"/c", b"C")
    t = Transport()
    data = (
        b"GET /c HTTP/1.1\r\nHost: c.example\r\nConnection: close\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: c.example\r\n\r\n"
    )
    consumed, close, _ = hp.serve(data, t)
    assert close and len(t.out) == 1 and b"connection: close\r\n" in t.out[0]
    t = Transport()
    data = b"GET /c HTTP/1.0\r\nHost: c.example\r\nConnection: keep-alive\r\n\r\n"
    assert hp.serve(data, t) == (len(data), False, None)
    assert b"connection: keep-alive\r\n" in t.out[0]
    t = Transport()
    assert hp.serve(b"GET /c HTTP/1.0\r\nHost: c.example\r\n\r\n", t)[1] is True


def test_leaves_stale_and_no_cache_entries_to_python(setup):
    cache, hp = setup[1], setup[4]
    _store(cache, b"s.example", b"/stale", b"S", lifetime=-1.0)
    _store(cache, b"s.example", b"/nc", b"N", no_cache=True)
    t = Transport()
    assert hp.serve(b"GET /stale HTTP/1.1\r\nHost: s.example\r\n\r\n", t) == (0, False, None)
    assert hp.serve(b"GET /nc HTTP/1.1\r\nHost: s.example\r\n\r\n", t) == (0, False, None)
    assert t.out == []


_names = st.sampled_from(
    [
        b"Host",
        b"host",
        b"HOST",
        b"X-A",
        b"Accept",
        b"Connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Ho st",
        b"Host\x00",
        b"",
    ]
)
_values = st.binary(max_size=12).map(lambda b: b.replace(b"\r\n\r\n", b"")) | st.sampled_from(
    [b"a", b" a ", b"\ta", b"close", b"keep-alive", b"a:80", b"a\r\n b", b"a\nb", b"0", b"chunked"]
)
_lines = st.tuples(_names, st.sampled_from([b":", b": ", b" : ", b":\t"]), _values).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"get", b"GET\t"]),
    target=st.sampled_from([b"/", b"/a b", b"/x?y=1", b"/\x7f", b"*", b"/a\r"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 ", b"http/1.1"]),
    lines=st.lists(_lines, max_size=4),
    sep=st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_structured_heads_agree_with_httptools(setup, method, target, version, lines, sep):
    head = method + b" " + target + b" " + version + b"".join(sep + ln for ln in lines)
    test_never_accepts_what_httptools_reads_differently.hypothesis.inner_test(setup, head, b"")
