"""[[routes]] end to end, on both paths (the `path` fixture: the C fast paths on, and off): each route key
against a real edgecore and the recording origin (README "Routes")."""

from __future__ import annotations

import re

import pytest
from client import Edge, get, wait_for

ROUTES_TOML = """
[[routes]]
host = "ttl.test"
path_prefix = "/dt"
default_ttl = 30

[[routes]]
host = "ttl.test"
path_prefix = "/mx"
max_ttl = 5

[[routes]]
host = "*.bypass.test"
bypass = true

[[routes]]
host = "nc.test"
ignore_client_no_cache = true

[[routes]]
host = "keys.test"
path_prefix = "/sort"
key_sort_query = true

[[routes]]
host = "keys.test"
path_prefix = "/drop"
key_drop_params = ["utm_source"]

[[routes]]
host = "keys.test"
path_prefix = "/hdr"
key_headers = ["X-Country"]

[[routes]]
host = "first.test"
path_prefix = "/a"
bypass = true

[[routes]]
host = "first.test"
default_ttl = 30

[[routes]]
host = "sie.test"
stale_if_error = 0
"""


@pytest.fixture(scope="module")
def edge(origin, path, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("routes") / "edgecore.toml"
    cfg.write_text(ROUTES_TOML)
    e = Edge(origin.url, path=path, args=["--config", str(cfg)])
    yield e
    e.stop()


def _hit(r) -> bool:  # type: ignore[no-untyped-def]
    return r.cache_status.startswith("edgecore; hit")


def _ttl(cs: str) -> int:
    m = re.search(r"ttl=(-?\d+)", cs)
    assert m, cs
    return int(m.group(1))


def test_default_ttl_stores_a_response_without_freshness(edge, origin, uniq):
    """A 200 with no Cache-Control, Expires or Last-Modified is not stored (no heuristic applies, RFC 9111
    4.2.2); on a default_ttl route it is, for default_ttl seconds, and the next request is a hit."""
    t = f"/dt{uniq}/x?size=64"
    first = get(edge.port, t, {"Host": "ttl.test"})
    assert first.status == 200 and "stored" in first.cache_status, first.cache_status
    assert 28 <= _ttl(first.cache_status) <= 30
    second = get(edge.port, t, {"Host": "ttl.test"})
    assert _hit(second) and second.body == first.body
    assert origin.count(f"/dt{uniq}/") == 1
    # the same response elsewhere (no route): not stored, fetched each time
    other = f"/nodt{uniq}/x?size=64"
    for _ in range(2):
        r = get(edge.port, other, {"Host": "ttl.test"})
        assert "stored" not in r.cache_status and not _hit(r), r.cache_status
    assert origin.count(f"/nodt{uniq}/") == 2


def test_max_ttl_caps_freshness(edge, origin, uniq):
    t = f"/mx{uniq}?cc=max-age=600"
    first = get(edge.port, t, {"Host": "ttl.test"})
    assert "stored" in first.cache_status and 0 <= _ttl(first.cache_status) <= 5, first.cache_status
    second = get(edge.port, t, {"Host": "ttl.test"})
    assert _hit(second) and 0 <= _ttl(second.cache_status) <= 5, second.cache_status
    # without the route the response's own max-age counts
    r = get(edge.port, f"/nomx{uniq}?cc=max-age=600", {"Host": "ttl.test"})
    assert _ttl(r.cache_status) > 500, r.cache_status


def test_bypass_always_reaches_the_origin_and_is_never_stored(edge, origin, uniq):
    t = f"{uniq}/b?cc=max-age=60"
    for i in range(3):
        r = get(edge.port, t, {"Host": "img.bypass.test"})
        assert r.status == 200
        assert r.cache_status.startswith("edgecore; fwd=bypass"), r.cache_status
        assert "stored" not in r.cache_status and not _hit(r)
        assert origin.count(uniq) == i + 1
    assert r.header("age") is None
    # counted by its reason (edgecore_cache_decisions_total, the detail's one spelling)
    m = re.search(
        r'edgecore_cache_decisions_total\{reason="route-bypass"\} (\d+)', edge.admin("/metrics").body.decode()
    )
    assert m and int(m.group(1)) >= 3, m
    # the same URL on a host no route names is cached as usual
    get(edge.port, t, {"Host": "bypass.test"})
    assert _hit(get(edge.port, t, {"Host": "bypass.test"}))
    assert origin.count(uniq) == 4


def test_bypass_is_not_coalesced(edge, origin, uniq):
    """Concurrent bypassed requests each go upstream (no single-flight, no hit-for-miss)."""
    import threading

    t = f"{uniq}/c?cc=max-age=60&gate={uniq}"
    out: list[str] = []

    def one() -> None:
        out.append(get(edge.port, t, {"Host": "x.bypass.test"}).cache_status)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for th in threads:
        th.start()
    assert wait_for(lambda: origin.count(uniq) == 3), origin.count(uniq)
    origin.open_gate(uniq)
    for th in threads:
        th.join(20)
    assert len(out) == 3 and all(cs.startswith("edgecore; fwd=bypass") for cs in out), out


@pytest.mark.parametrize(
    "req", [{"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"}]
)
def test_ignore_client_no_cache_serves_a_hit(edge, origin, uniq, req):
    t = f"{uniq}/n?cc=max-age=60"
    assert "stored" in get(edge.port, t, {"Host": "nc.test"}).cache_status
    r = get(edge.port, t, {"Host": "nc.test", **req})
    assert _hit(r), r.cache_status
    assert origin.count(uniq) == 1
    # without the route the client's directive forces a fetch (RFC 9111 5.2.1.4, 5.2.1.1, 5.4)
    u = f"{uniq}/other?cc=max-age=60"
    get(edge.port, u, {"Host": "other.test"})
    r = get(edge.port, u, {"Host": "other.test", **req})
    assert not _hit(r), r.cache_status
    assert origin.count(f"{uniq}/other") == 2


def test_key_sort_query_makes_one_entry(edge, origin, uniq):
    a = get(edge.port, f"/sort{uniq}?a=1&b=2&cc=max-age=60", {"Host": "keys.test"})
    b = get(edge.port, f"/sort{uniq}?b=2&cc=max-age=60&a=1", {"Host": "keys.test"})
    assert "stored" in a.cache_status and _hit(b), (a.cache_status, b.cache_status)
    assert b.body == a.body
    # the origin got the query as it was keyed (sorted), as with the global key_sort_query
    assert [s.target for s in origin.requests_for(f"/sort{uniq}")] == [f"/sort{uniq}?a=1&b=2&cc=max-age=60"]
    # another host: two entries
    get(edge.port, f"/sort{uniq}?a=1&b=2&cc=max-age=60", {"Host": "plain.test"})
    c = get(edge.port, f"/sort{uniq}?b=2&cc=max-age=60&a=1", {"Host": "plain.test"})
    assert not _hit(c)
    assert origin.count(f"/sort{uniq}") == 3
    # a query sent unsorted reaches the origin sorted
    get(edge.port, f"/sort{uniq}/2?b=2&a=1&cc=max-age=60", {"Host": "keys.test"})
    sent = [s.target for s in origin.requests_for(f"/sort{uniq}/2")]
    assert sent == [f"/sort{uniq}/2?a=1&b=2&cc=max-age=60"]


def test_key_drop_params_ignores_them_in_the_key_and_never_forwards_them(edge, origin, uniq):
    """What goes upstream is what was keyed: a parameter left out of the key is left out of the fetch too, so
    a response can never depend on a value other clients' requests did not share (cache poisoning)."""
    a = get(edge.port, f"/drop{uniq}?cc=max-age=60&utm_source=news", {"Host": "keys.test"})
    b = get(edge.port, f"/drop{uniq}?cc=max-age=60&utm_source=ads", {"Host": "keys.test"})
    c = get(edge.port, f"/drop{uniq}?cc=max-age=60", {"Host": "keys.test"})
    assert "stored" in a.cache_status and _hit(b) and _hit(c)
    seen = origin.requests_for(f"/drop{uniq}")
    assert [s.target for s in seen] == [f"/drop{uniq}?cc=max-age=60"]
    # a parameter that is not dropped still splits the entry
    d = get(edge.port, f"/drop{uniq}?cc=max-age=60&page=2", {"Host": "keys.test"})
    assert not _hit(d)
    assert origin.count(f"/drop{uniq}") == 2


def test_key_headers_split_the_entry(edge, origin, uniq):
    t = f"/hdr{uniq}?cc=max-age=60&echo=1"
    de = get(edge.port, t, {"Host": "keys.test", "X-Country": "de"})
    fr = get(edge.port, t, {"Host": "keys.test", "X-Country": "fr"})
    de2 = get(edge.port, t, {"Host": "keys.test", "X-Country": "de"})
    none = get(edge.port, t, {"Host": "keys.test"})
    assert "stored" in de.cache_status and "stored" in fr.cache_status, (de.cache_status, fr.cache_status)
    assert _hit(de2) and de2.body == de.body
    assert b'"de"' in de.body and b'"fr"' in fr.body
    assert not _hit(none)
    assert origin.count(f"/hdr{uniq}") == 3
    # the client's response has no Vary of ours: the key, not the response, changed
    assert de.header("vary") is None


def test_purge_by_url_uses_the_route_key(edge, origin, uniq):
    """POST /purge {"url"} builds the key with the URL's route: a key_sort_query entry is found in any
    order, a key_headers entry (its variants) with the URL alone."""
    import json

    t = f"/sort{uniq}?b=2&a=1&cc=max-age=60"
    get(edge.port, t, {"Host": "keys.test"})
    h = f"/hdr{uniq}?cc=max-age=60"
    get(edge.port, h, {"Host": "keys.test", "X-Country": "de"})
    for url in (f"http://keys.test/sort{uniq}?a=1&b=2&cc=max-age=60", f"http://keys.test{h}"):
        r = edge.admin("/purge", "POST", json.dumps({"url": url}).encode())
        assert r.status == 200 and json.loads(r.body)["purged"] == 1, (url, r.body)
    assert not _hit(get(edge.port, t, {"Host": "keys.test"}))
    assert not _hit(get(edge.port, h, {"Host": "keys.test", "X-Country": "de"}))


def test_first_match_wins(edge, origin, uniq):
    """first.test /a is the bypass route (listed first); the rest of first.test the default_ttl one."""
    for _ in range(2):
        r = get(edge.port, f"/a{uniq}", {"Host": "first.test"})
        assert r.cache_status.startswith("edgecore; fwd=bypass"), r.cache_status
    assert origin.count(f"/a{uniq}") == 2
    get(edge.port, f"/b{uniq}", {"Host": "first.test"})
    assert _hit(get(edge.port, f"/b{uniq}", {"Host": "first.test"}))
    # "/a" is a segment prefix: /ab is not under it
    get(edge.port, f"/ab{uniq}", {"Host": "first.test"})
    assert _hit(get(edge.port, f"/ab{uniq}", {"Host": "first.test"}))


def test_requests_no_route_matches_are_unchanged(edge, origin, uniq):
    """A request no route names: the usual miss and hit (on the fast path, the C path answers the hit)."""
    t = f"{uniq}/plain?cc=max-age=60&size=1024"
    first = get(edge.port, t)
    second = get(edge.port, t)
    assert "fwd=uri-miss" in first.cache_status and "stored" in first.cache_status
    assert second.cache_status.startswith("edgecore; hit; ttl=")
    third = get(edge.port, t, {"Cache-Control": "no-cache"})
    assert not _hit(third)
    assert origin.count(uniq) == 2


def test_route_stale_if_error_overrides_the_default(edge, origin, uniq):
    """The global stale_if_error (60 s) would serve a stale copy when the upstream answers 500; the route's
    stale_if_error = 0 does not (the 500 is relayed), while elsewhere the stale copy is served."""
    results = {}
    for host in ("sie.test", "plain.test"):
        p = f"/{host[:3]}{uniq}"
        assert "stored" in get(edge.port, p + "?cc=max-age=1", {"Host": host}).cache_status
        origin.override(p, status="500", cc="no-store")
        # poll (bounded) until the stored copy is stale: then the 500 (or the stale copy) answers
        assert wait_for(
            lambda p=p, host=host: not _hit(get(edge.port, p + "?cc=max-age=1", {"Host": host})),
            timeout=15,
        )
        results[host] = get(edge.port, p + "?cc=max-age=1", {"Host": host})
    assert results["sie.test"].status == 500, results["sie.test"].cache_status
    assert results["plain.test"].status == 200
    assert "detail=stale-if-error" in results["plain.test"].cache_status
