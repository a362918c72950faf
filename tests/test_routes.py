"""Tables for edgecore.routes ([[routes]]: config parsing, matching, and the key and policy options a route
gives). Each row cites the rule it checks: RFC 9110 4.2.3 (host equivalence), RFC 9112 3.2.2 (absolute-form),
RFC 3986 6.2.2 / 5.2.4 (path normalisation), RFC 9111 (policy), or README "Routes" for edgecore's own rules
(first match wins, prefix boundaries)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from client import ROOT

from edgecore import keys, policy
from edgecore.cache import Cache
from edgecore.config import build
from edgecore.context import make_hitpath
from edgecore.errors import ConfigErrors
from edgecore.metrics import SharedCounters
from edgecore.routes import NO_ROUTES, compile_routes

T = 1_700_000_000.0

ROUTES: list[dict[str, Any]] = [
    {"host": "api.example", "path_prefix": "/v1", "default_ttl": 30},  # 0
    {"host": "api.example", "path_prefix": "/static/", "max_ttl": 5},  # 1
    {"host": "*.cdn.example", "bypass": True},  # 2
    {"host": "API.Example", "ignore_client_no_cache": True},  # 3: any other path of api.example
    {"path_prefix": "/health"},  # 4: any host
    {"host": "[::1]", "key_sort_query": True},  # 5 (IPv6 literal)
]

# (Host, target, expected route index or None)
MATCH = [
    # host exact, case-insensitive, any port, trailing dot (RFC 9110 4.2.3)
    (b"api.example", b"/v1", 0),
    (b"API.EXAMPLE", b"/v1/items", 0),
    (b"api.example:8080", b"/v1/items", 0),
    (b"api.example.", b"/v1", 0),
    (b"api.example:", b"/v1", 0),
    (b"www.api.example", b"/v1", None),  # exact host: a subdomain is not it
    # path prefix on segment boundaries (README "Routes")
    (b"api.example", b"/v1?x=1", 0),
    (b"api.example", b"/v1/", 0),
    (b"api.example", b"/v10", 3),  # not /v1: falls to route 3 (same host, any path)
    (b"api.example", b"/v", 3),
    (b"api.example", b"/static/a.css", 1),
    (b"api.example", b"/static", 3),  # "/static/" is everything below /static/, not /static itself
    # normalised as the key is: percent-encoded unreserved decoded, dot segments (RFC 3986 6.2.2, 5.2.4)
    (b"api.example", b"/%76%31/x", 0),
    (b"api.example", b"/v1/../static/x", 1),
    (b"api.example", b"/static/../v1", 0),
    # absolute-form: its authority is the host (RFC 9112 3.2.2)
    (b"other.example", b"http://api.example/v1/x", 0),
    (b"api.example", b"http://other.example/v1/x", None),
    # suffix host: "*.cdn.example" is any name ending in ".cdn.example", not cdn.example itself
    (b"img.cdn.example", b"/a", 2),
    (b"a.b.cdn.example:81", b"/a", 2),
    (b"IMG.CDN.EXAMPLE", b"/a", 2),
    (b"cdn.example", b"/a", None),
    (b"xcdn.example", b"/a", None),
    # first match wins: /health on api.example is route 3 (listed before 4), elsewhere 4
    (b"api.example", b"/health", 3),
    (b"other.example", b"/health/live", 4),
    (b"other.example", b"/healthz", None),
    # IPv6 literal host, with and without port
    (b"[::1]:8080", b"/q", 5),
    (b"[::1]", b"/q", 5),
    # no match
    (b"other.example", b"/v1", None),
    (b"", b"/v1", None),
]


@pytest.fixture(scope="module")
def compiled():
    return compile_routes(build({"routes": ROUTES}, require_upstream=False))


@pytest.mark.parametrize(("host", "target", "expected"), MATCH)
def test_match(compiled, host, target, expected):
    route = compiled.match(host, target)
    assert (route.index if route is not None else None) == expected


def test_no_routes_matches_nothing():
    """No [[routes]]: nothing matches, and the C hit path's table is empty (README "Routes")."""
    assert not NO_ROUTES and NO_ROUTES.match(b"api.example", b"/v1") is None
    assert compile_routes(build({}, require_upstream=False)) is NO_ROUTES
    assert NO_ROUTES.c_table() == ()


# requests no route matches that the C hit path must keep (they stay on the fast path)
STAYS_FAST = [
    (b"other.example", b"/v1"),
    (b"www.api.example", b"/v1"),
    (b"cdn.example", b"/a"),
    (b"xcdn.example", b"/a"),
    (b"test.local", b"/x?cc=max-age=60"),
]


@pytest.fixture(scope="module")
def hitpath(compiled):
    cfg = build({"routes": ROUTES}, require_upstream=False)
    cache = Cache(8 << 20, 1 << 20)
    hp = make_hitpath(cfg, cache, SharedCounters(1).slot_view(0), keys.KeyOptions(), compiled)
    yield hp
    cache.close()


def test_c_path_is_handed_the_compiled_routes(compiled, hitpath):
    """One source: the C path's table is the compiled Route list's (Routes.c_table)."""
    assert hitpath.facts["routes"] == compiled.c_table()
    assert len(compiled.c_table()) == len(ROUTES)


@pytest.mark.parametrize(("host", "target", "expected"), [m for m in MATCH if m[2] is not None])
def test_c_path_leaves_every_routed_request_to_the_general_path(hitpath, host, target, expected):
    """Every request `match` routes is handed over by the C hit path (its table fits a superset), so the
    C path never answers a request a route changes."""
    head = b"GET %s HTTP/1.1\r\nHost: %s" % (target, host)
    assert hitpath.key_for(head) is None


@pytest.mark.parametrize(("host", "target"), STAYS_FAST)
def test_c_path_keeps_requests_no_route_matches(compiled, hitpath, host, target):
    assert compiled.match(host, target) is None
    head = b"GET %s HTTP/1.1\r\nHost: %s" % (target, host)
    assert hitpath.key_for(head) == keys.primary_key(b"GET", host, target)


# --- the options a route gives ---------------------------------------------------------------------------


def test_route_options_inherit_and_override():
    cfg = build(
        {
            "key_drop_params": ["fbclid"],
            "stale_if_error": 60,
            "routes": [
                {"host": "a.example", "key_sort_query": True, "key_headers": ["X-Country", "accept"]},
                {"host": "b.example", "key_drop_params": ["utm_source"], "stale_if_error": 0},
                {"host": "c.example", "stale_while_revalidate": 30, "bypass": True},
            ],
        },
        require_upstream=False,
    )
    a, b, c = compile_routes(cfg).routes
    # key options: a key the table does not give keeps the global setting
    assert a.key_opts == keys.KeyOptions(True, (b"fbclid",), (b"80",), (b"accept", b"x-country"))
    assert b.key_opts == keys.KeyOptions(False, (b"utm_source",))
    # policy options: the route's stale defaults replace the global ones; the rest are the global ones
    assert a.policy_opts.stale_if_error_default == 60 and b.policy_opts.stale_if_error_default == 0
    assert c.policy_opts.stale_while_revalidate_default == 30 and c.policy_opts.bypass
    assert (
        not a.policy_opts.bypass and a.policy_opts.targeted_fields == policy.options_for(cfg).targeted_fields
    )


# (route keys, response fields, expected (lifetime, heuristic) or the Reason it is not stored)
FRESHNESS = [
    # RFC 9111 4.2.2: no explicit freshness and no Last-Modified: nothing to store...
    ({}, [], policy.Reason.NO_FRESHNESS),
    # ... unless the route gives default_ttl, in place of the heuristic
    ({"default_ttl": 30}, [], (30.0, False)),
    # 4.2.2 heuristic (10% of Date - Last-Modified) is replaced by default_ttl
    ({}, [("last-modified", -1000)], (100.0, True)),
    ({"default_ttl": 30}, [("last-modified", -1000)], (30.0, False)),
    # 4.2.1: explicit freshness wins over default_ttl
    ({"default_ttl": 30}, [("cache-control", "max-age=600")], (600.0, False)),
    ({"default_ttl": 30}, [("expires", 90)], (90.0, False)),
    # 3: default_ttl does not make a response storable that nothing else allows (no-store, private)
    ({"default_ttl": 30}, [("cache-control", "no-store")], policy.Reason.NO_STORE),
    ({"default_ttl": 30}, [("cache-control", "private")], policy.Reason.PRIVATE),
    # max_ttl caps how long it stays fresh here, explicit or not (4.2.1 lifetime, minus Age 4.2.3)
    ({"max_ttl": 5}, [("cache-control", "max-age=600")], (5.0, False)),
    ({"max_ttl": 5}, [("cache-control", "max-age=3")], (3.0, False)),
    ({"max_ttl": 5}, [("cache-control", "max-age=600"), ("age", "100")], (105.0, False)),
    ({"max_ttl": 5, "default_ttl": 60}, [], (5.0, False)),
    ({"max_ttl": 5}, [("last-modified", -1000)], (5.0, True)),
]


def _date(offset: float) -> bytes:
    from email.utils import formatdate

    return formatdate(T + offset, usegmt=True).encode()


@pytest.mark.parametrize(("route", "resp", "expected"), FRESHNESS)
def test_route_freshness(route, resp, expected):
    cfg = build({"routes": [{"host": "a.example", **route}]}, require_upstream=False)
    opts = compile_routes(cfg).routes[0].policy_opts
    headers = [(b"date", _date(0))] + [
        (n.encode(), _date(v) if isinstance(v, int) else v.encode()) for n, v in resp
    ]
    fresh, reason = policy.decide_store(b"GET", 200, [], headers, request_time=T, response_time=T, opts=opts)
    if isinstance(expected, policy.Reason):
        assert fresh is None and reason is expected
    else:
        assert fresh is not None and (fresh.lifetime, fresh.heuristic) == expected


# (request fields, ignore_client_no_cache, expected decide_use on a fresh stored response)
CLIENT_NO_CACHE = [
    ([("cache-control", "no-cache")], False, policy.Use.VALIDATE),  # RFC 9111 5.2.1.4
    ([("cache-control", "no-cache")], True, policy.Use.FRESH),  # 5.2.1: a cache may be configured so
    ([("cache-control", "max-age=0")], False, policy.Use.VALIDATE),  # 5.2.1.1
    ([("cache-control", "max-age=0")], True, policy.Use.FRESH),
    ([("pragma", "no-cache")], False, policy.Use.VALIDATE),  # 5.4
    ([("pragma", "no-cache")], True, policy.Use.FRESH),
    ([("cache-control", "max-age=5")], True, policy.Use.VALIDATE),  # max-age > 0 still counts (age 10)
    ([("cache-control", "no-cache, only-if-cached")], True, policy.Use.FRESH),
]


@pytest.mark.parametrize(("req", "ignore", "expected"), CLIENT_NO_CACHE)
def test_ignore_client_no_cache(req, ignore, expected):
    cfg = build({"routes": [{"host": "a.example", "ignore_client_no_cache": ignore}]}, require_upstream=False)
    opts = compile_routes(cfg).routes[0].policy_opts
    f = policy.Freshness(lifetime=60.0, initial_age=0.0, response_time=T)
    rc = policy.parse_request([(n.encode(), v.encode()) for n, v in req], opts)
    assert policy.decide_use(f, rc, T + 10)[0] is expected


def test_ignore_client_no_cache_keeps_no_store():
    """RFC 9111 5.2.1.5: request no-store is not a fetch-forcing directive; the route leaves it."""
    opts = policy.Options(ignore_client_no_cache=True)
    assert policy.parse_request([(b"cache-control", b"no-store, no-cache")], opts).no_store


# (route keys, request target pairs that share one key (True) or not (False))
KEYS = [
    ({"key_sort_query": True}, b"/p?a=1&b=2", b"/p?b=2&a=1", True),
    ({}, b"/p?a=1&b=2", b"/p?b=2&a=1", False),
    ({"key_drop_params": ["utm_source"]}, b"/p?a=1&utm_source=x", b"/p?utm_source=y&a=1", True),
    ({"key_drop_params": ["utm_source"]}, b"/p?a=1&utm_source=x", b"/p?a=2", False),
    ({"key_drop_params": ["utm_source"]}, b"/p?a=1;utm_source=x", b"/p?a=1", True),
]


@pytest.mark.parametrize(("route", "t1", "t2", "same"), KEYS)
def test_route_key_options(route, t1, t2, same):
    cfg = build({"routes": [{"host": "a.example", **route}]}, require_upstream=False)
    opts = compile_routes(cfg).routes[0].key_opts
    k1 = keys.primary_key(b"GET", b"a.example", t1, opts)
    k2 = keys.primary_key(b"GET", b"a.example", t2, opts)
    assert (k1 == k2) is same


def test_key_headers_are_variant_names():
    """key_headers key like Vary names (RFC 9111 4.1): merged with the response's, sorted, each once."""
    opts = keys.KeyOptions(headers=(b"x-country",))
    assert keys.variant_names((), opts) == (b"x-country",)
    assert keys.variant_names((b"accept", b"x-country"), opts) == (b"accept", b"x-country")
    assert keys.variant_names((b"accept",), keys.KeyOptions()) == (b"accept",)
    k = b"0:3:GET1:a/p#1"
    de = keys.secondary_key(k, (b"x-country",), [(b"x-country", b"de")])
    fr = keys.secondary_key(k, (b"x-country",), [(b"x-country", b"fr")])
    assert de != fr


# --- config: each problem names routes[i].key -----------------------------------------------------------

BAD = [
    ({"host": "bad host"}, "routes[0].host"),
    ({"host": "api.example:8080"}, "routes[0].host"),  # routes match any port: no port in host
    ({"host": "*"}, "routes[0].host"),
    ({"path_prefix": "api"}, "routes[0].path_prefix"),
    ({"path_prefix": "/a?b"}, "routes[0].path_prefix"),
    ({"path_prefix": "/a/../b"}, "routes[0].path_prefix"),
    ({"default_ttl": -1}, "routes[0].default_ttl"),
    ({"max_ttl": "soon"}, "routes[0].max_ttl"),
    ({"stale_if_error": True}, "routes[0].stale_if_error"),
    ({"stale_while_revalidate": -5}, "routes[0].stale_while_revalidate"),
    ({"bypass": "yes"}, "routes[0].bypass"),
    ({"ignore_client_no_cache": 1}, "routes[0].ignore_client_no_cache"),
    ({"key_sort_query": "true"}, "routes[0].key_sort_query"),
    ({"key_drop_params": "utm_source"}, "routes[0].key_drop_params"),
    ({"key_drop_params": ["a=b"]}, "routes[0].key_drop_params"),
    ({"key_headers": ["x country"]}, "routes[0].key_headers"),
    ({"key_headers": [1]}, "routes[0].key_headers"),
    ({"ttl": 5}, "routes[0].ttl"),
]


@pytest.mark.parametrize(("table", "key"), BAD)
def test_bad_route_names_the_key(table, key):
    with pytest.raises(ConfigErrors) as e:
        build({"routes": [table]}, require_upstream=False)
    assert [p.key for p in e.value.problems] == [key]


def test_every_bad_route_key_is_reported_with_its_index():
    with pytest.raises(ConfigErrors) as e:
        build(
            {"routes": [{"host": "ok.example"}, {"host": "x y", "max_tll": 5}, "not a table"]},
            require_upstream=False,
        )
    problems = {p.key: p.why for p in e.value.problems}
    assert set(problems) == {"routes[1].host", "routes[1].max_tll", "routes[2]"}
    assert "did you mean 'max_ttl'" in problems["routes[1].max_tll"]


def test_routes_have_no_environment_form():
    with pytest.raises(ConfigErrors) as e:
        build({}, {"routes": "host=a"}, require_upstream=False)
    assert e.value.problems[0].key == "routes" and "config file" in e.value.problems[0].why


def test_route_keys_accept_dashes_and_good_values():
    cfg = build(
        {"routes": [{"host": "*.Example.COM.", "path-prefix": "/a", "max-ttl": 5, "key-headers": ["X-A"]}]},
        require_upstream=False,
    )
    rc = cfg.routes[0]
    assert (rc.host, rc.path_prefix, rc.max_ttl, rc.key_headers) == ("*.example.com", "/a", 5.0, ("x-a",))


def test_check_config_and_config_show_routes(tmp_path):
    """`edgecore check-config` names routes[i].key (exit 2); `edgecore config` prints the tables."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'upstream = "http://127.0.0.1:9"\n[[routes]]\nhost = "a.example"\n[[routes]]\nmax_ttl = -1\n'
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT}
    p = subprocess.run(
        [sys.executable, "-m", "edgecore", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2 and p.stdout.startswith("routes[1].max_ttl: "), p.stdout + p.stderr
    good = tmp_path / "good.toml"
    good.write_text(
        'upstream = "http://127.0.0.1:9"\n[[routes]]\nhost = "a.example"\n'
        'path_prefix = "/v1"\nbypass = true\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "edgecore", "config", "--config", str(good)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'routes = [{host = "a.example", path_prefix = "/v1", bypass = true}]  # file' in p.stdout
