"""Micro-benchmarks of the pure-Python work done once per cache miss (pytest-benchmark).

Owns: decide_store, storable_headers, parse_request (edgecore.policy); encode and render_head
(edgecore.entry); primary_key and parse_vary (edgecore.keys), each on the inputs a miss of a plain cacheable
GET hands them: an nginx-like origin response (~9 fields, names lower-cased, values stripped), the same with
Expires + Date and no max-age, and one with Vary: accept-encoding.
Invariants: every benchmark calls the public function directly, once per round, with the arguments the
protocol passes; the memos inside policy/keys are warm (as they are in a running proxy).
Must never: run in the normal test run (this lives in bench/; run it with
`python -m pytest bench/test_policy_speed.py --benchmark-only -q`).
"""

from __future__ import annotations

from email.utils import formatdate

import pytest

pytest.importorskip("pytest_benchmark")

from edgecore import entry, keys, policy  # noqa: E402

T = 1_700_000_000.0
DATE = formatdate(T, usegmt=True).encode()
LAST_MODIFIED = formatdate(T - 86400 * 30, usegmt=True).encode()
EXPIRES = formatdate(T + 3600, usegmt=True).encode()

Headers = list[tuple[bytes, bytes]]

REQUEST: Headers = [
    (b"host", b"www.example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"x-forwarded-for", b"203.0.113.7"),
]
REQUEST_CC: Headers = [*REQUEST, (b"cache-control", b"max-age=0")]

NGINX: Headers = [
    (b"server", b"nginx/1.25.4"),
    (b"date", DATE),
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", b"16384"),
    (b"last-modified", LAST_MODIFIED),
    (b"connection", b"keep-alive"),
    (b"etag", b'"65a1b2c3-4000"'),
    (b"cache-control", b"public, max-age=3600"),
    (b"accept-ranges", b"bytes"),
]
EXPIRES_ONLY: Headers = [
    (b"server", b"nginx/1.25.4"),
    (b"date", DATE),
    (b"content-type", b"application/javascript"),
    (b"content-length", b"16384"),
    (b"last-modified", LAST_MODIFIED),
    (b"connection", b"keep-alive"),
    (b"expires", EXPIRES),
    (b"etag", b'"65a1b2c3-4000"'),
    (b"accept-ranges", b"bytes"),
]
VARY: Headers = [
    (b"server", b"nginx/1.25.4"),
    (b"date", DATE),
    (b"content-type", b"text/css"),
    (b"content-length", b"16384"),
    (b"last-modified", LAST_MODIFIED),
    (b"connection", b"keep-alive"),
    (b"vary", b"accept-encoding"),
    (b"etag", b'"65a1b2c3-4000"'),
    (b"cache-control", b"public, max-age=3600"),
    (b"accept-ranges", b"bytes"),
]
RESPONSES = {"nginx": NGINX, "expires": EXPIRES_ONLY, "vary": VARY}
OPTS = policy.Options()  # what protocol.py builds from the default configuration (an equal, distinct object)
BODY = b"x" * 16384


@pytest.mark.parametrize("resp", list(RESPONSES))
def test_decide_store(benchmark, resp: str) -> None:
    headers = RESPONSES[resp]
    kw = {"request_time": T - 0.05, "response_time": T + 0.01, "opts": OPTS}
    fresh, why = benchmark(policy.decide_store, b"GET", 200, REQUEST, headers, **kw)
    assert fresh is not None and why is None


@pytest.mark.parametrize("resp", list(RESPONSES))
def test_storable_headers(benchmark, resp: str) -> None:
    headers = RESPONSES[resp]
    out = benchmark(policy.storable_headers, headers)
    assert len(out) == len(headers) - 1  # the Connection field


def _stored(resp: str) -> tuple[Headers, policy.Freshness]:
    headers = RESPONSES[resp]
    fresh, _ = policy.decide_store(
        b"GET", 200, REQUEST, headers, request_time=T - 0.05, response_time=T + 0.01, opts=OPTS
    )
    assert fresh is not None
    stored = policy.storable_headers(headers)
    stored.append((b"via", b"1.1 edgecore"))  # as protocol.py's _store adds
    return stored, fresh


@pytest.mark.parametrize("resp", list(RESPONSES))
def test_entry_encode(benchmark, resp: str) -> None:
    stored, fresh = _stored(resp)
    value, _, _, flags = benchmark(entry.encode, 200, b"OK", stored, BODY, fresh)
    assert flags == entry.FLAG_PLAIN and value.endswith(BODY)


def test_render_head(benchmark) -> None:
    stored, _ = _stored("nginx")
    head, sl = benchmark(entry.render_head, 200, b"OK", stored, len(BODY))
    assert head.endswith(b"\r\n\r\n") and sl == len(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "target",
    [b"/assets/app.3f9a1c.js", b"/v1/catalogue/items/1234567?fields=all&page=2"],
    ids=["path", "query"],
)
def test_primary_key(benchmark, target: bytes) -> None:
    key = benchmark(keys.primary_key, b"GET", b"www.example.com", target, keys.KeyOptions())
    assert key.endswith(target)


def test_primary_key_default_opts(benchmark) -> None:
    key = benchmark(keys.primary_key, b"GET", b"www.example.com", b"/assets/app.3f9a1c.js")
    assert key.endswith(b".js")


def test_parse_vary(benchmark) -> None:
    lines = [v for n, v in VARY if n == b"vary"]  # as protocol.py collects them
    assert benchmark(keys.parse_vary, lines) == (b"accept-encoding",)


@pytest.mark.parametrize("req", ["plain", "max-age=0"])
def test_parse_request(benchmark, req: str) -> None:
    headers = REQUEST if req == "plain" else REQUEST_CC
    rc = benchmark(policy.parse_request, headers)
    assert isinstance(rc, policy.RequestControl)
