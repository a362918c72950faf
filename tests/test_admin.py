"""End to end: the admin listener (INTERFACE.md): healthz, readyz, metrics, stats, purge, drain."""

from __future__ import annotations

import json

from client import Edge, get


def test_healthz_and_readyz(edge):
    assert edge.admin("/healthz").status == 200
    r = edge.wait_stat(lambda s: all(h["up"] for h in s["upstream"]["health"]))
    assert r["upstream"]["health"][0]["up"]
    assert edge.admin("/readyz").status == 200
    assert edge.admin("/nope").status == 404


def test_admin_is_not_the_proxy(edge):
    # the proxy port proxies /healthz to the origin rather than answering it itself
    r = get(edge.port, "/healthz?body=from-origin")
    assert r.body == b"from-origin"


def test_metrics_has_the_contract_names(edge, uniq):
    get(edge.port, f"{uniq}?cc=max-age=60")
    get(edge.port, f"{uniq}?cc=max-age=60")
    text = edge.admin("/metrics").body.decode()
    for name in (
        "edgecore_requests_total",
        "edgecore_request_duration_seconds_bucket",
        "edgecore_cache_items",
        "edgecore_cache_bytes",
        "edgecore_cache_capacity_bytes",
        "edgecore_cache_evictions_total",
        "edgecore_upstream_requests_total",
    ):
        assert name in text, name
    hits = [
        line for line in text.splitlines() if line.startswith('edgecore_requests_total{cache_status="hit"}')
    ]
    assert hits and float(hits[0].split()[-1]) >= 1


def _decisions(edge) -> dict[str, float]:
    out = {}
    for line in edge.admin("/metrics").body.decode().splitlines():
        if line.startswith("edgecore_cache_decisions_total{"):
            out[line.split('reason="', 1)[1].split('"', 1)[0]] = float(line.split()[-1])
    return out


def test_metrics_count_every_cache_decision_by_its_cache_status_reason(edge, uniq):
    """Each named reason a response's Cache-Status gives (RFC 9211 detail) is counted under that spelling;
    every spelling is there from the start (a dashboard sees zeros, not gaps)."""
    from edgecore.cachestatus import ALL_DETAILS

    before = _decisions(edge)
    assert set(before) == {d.decode() for d in ALL_DETAILS} | {"other"}
    got = [
        get(edge.port, f"{uniq}/p?cc=private"),
        get(edge.port, f"{uniq}/n?cc=no-store"),
        get(edge.port, f"{uniq}/n2?cc=no-store"),
        get(edge.port, f"{uniq}/r", headers={"Cache-Control": "no-store"}),
    ]
    assert [r.cache_status.rsplit("detail=", 1)[1] for r in got] == [
        "private",
        "no-store",
        "no-store",
        "request-no-store",
    ]
    after = _decisions(edge)
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed == {"private": 1, "no-store": 2, "request-no-store": 1}


def test_stats_fields_and_counts(edge, origin, uniq):
    before = edge.stats()
    get(edge.port, f"{uniq}?cc=max-age=60")
    get(edge.port, f"{uniq}?cc=max-age=60")
    s = edge.stats()
    for k in ("items", "bytes_used", "capacity_bytes", "hits", "misses", "evictions"):
        assert k in s["cache"], k
    assert s["cache"]["capacity_bytes"] == 32 << 20
    assert s["cache"]["items"] >= 1
    assert s["cache"]["hits"] >= before["cache"]["hits"] + 1
    assert s["upstream"]["requests"] == before["upstream"]["requests"] + 1


def test_purge_by_url(edge, origin, uniq):
    t = f"{uniq}?cc=max-age=60"
    get(edge.port, t)
    assert get(edge.port, t).cache_status.startswith("edgecore; hit")
    r = edge.admin("/purge", "POST", json.dumps({"url": f"http://test.local{t}"}).encode())
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    assert not get(edge.port, t).cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2


def test_purge_rejects_bad_bodies(edge):
    assert edge.admin("/purge", "POST", b"not json").status == 400
    assert edge.admin("/purge", "POST", b'{"url": "a", "tag": "b"}').status == 400
    assert edge.admin("/purge", "GET").status == 405


def test_admin_token_and_drain(origin, path):
    e = Edge(origin.url, path=path, args=["--admin-token", "s3cret"])
    try:
        assert e.admin("/drain", "POST").status == 401
        assert e.admin("/drain", "POST", headers={"Authorization": "Bearer wrong"}).status == 401
        e.wait_stat(lambda s: all(h["up"] for h in s["upstream"]["health"]))
        assert e.admin("/readyz").status == 200
        assert e.admin("/drain", "POST", headers={"Authorization": "Bearer s3cret"}).status == 200
        r = e.admin("/readyz")
        assert r.status == 503 and b"draining" in r.body
        assert get(e.port, "/still?body=served").body == b"served"  # traffic is still served
        # DELETE /drain undoes it, token-protected like POST
        assert e.admin("/drain", "DELETE").status == 401
        assert e.admin("/readyz").status == 503
        r = e.admin("/drain", "DELETE", headers={"Authorization": "Bearer s3cret"})
        assert r.status == 200 and json.loads(r.body) == {"draining": False}
        assert e.admin("/readyz").status == 200
        assert e.stats()["draining"] is False
        assert e.admin("/drain", "PUT", headers={"Authorization": "Bearer s3cret"}).status == 405
    finally:
        e.stop()


def test_delete_drain_cannot_undo_a_stopping_edgecore():
    from edgecore.admin import Admin
    from edgecore.config import build
    from edgecore.metrics import C_DRAINING, C_STOPPING, SharedCounters

    class NoCache:
        def stats(self):
            return {}

    counters = SharedCounters(2)
    a = Admin(build({"upstream": ["http://127.0.0.1:1"]}), NoCache(), counters, 1)
    assert a.handle(b"POST", b"/drain", {}, b"")[0] == 200 and counters.get_flag(C_DRAINING)
    assert a.handle(b"DELETE", b"/drain", {}, b"")[0] == 200 and not counters.get_flag(C_DRAINING)
    assert a.handle(b"DELETE", b"/purge", {}, b"")[0] == 405
    counters.set_flag(C_DRAINING, 1)
    counters.set_flag(C_STOPPING, 1)  # SIGTERM: readiness stays off until the process is gone
    status, _, body = a.handle(b"DELETE", b"/drain", {}, b"")
    assert status == 409 and b"stopping" in body and counters.get_flag(C_DRAINING)


def test_post_endpoints_need_a_token_off_loopback():
    from edgecore.admin import Admin, _is_loopback
    from edgecore.config import build

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")

    class NoCache:
        def stats(self):
            return {}

    from edgecore.metrics import SharedCounters

    open_admin = Admin(
        build({"upstream": ["http://127.0.0.1:1"], "admin": "0.0.0.0:0"}), NoCache(), SharedCounters(2), 1
    )
    status, _, body = open_admin.handle(b"POST", b"/drain", {}, b"")
    assert status == 403 and b"admin_token" in body
    assert open_admin.handle(b"GET", b"/healthz", {}, b"")[0] == 200  # probes still answer
    tok = Admin(
        build({"upstream": ["http://127.0.0.1:1"], "admin": "0.0.0.0:0", "admin_token": "t"}),
        NoCache(),
        SharedCounters(2),
        1,
    )
    assert tok.handle(b"POST", b"/drain", {b"authorization": b"Bearer t"}, b"")[0] == 200


def test_purge_by_tag_from_surrogate_key_and_cache_tag(edge, origin, uniq):
    a = f"{uniq}/a?cc=max-age=60&hdr=Surrogate-Key:{uniq[1:]}-x%20shared"
    b = f"{uniq}/b?cc=max-age=60&hdr=Cache-Tag:other,%20{uniq[1:]}-x"
    c = f"{uniq}/c?cc=max-age=60&hdr=Cache-Tag:{uniq[1:]}-y"
    for t in (a, b, c):
        get(edge.port, t)
        assert get(edge.port, t).cache_status.startswith("edgecore; hit")
    r = edge.admin("/purge", "POST", json.dumps({"tag": f"{uniq[1:]}-x"}).encode())
    assert r.status == 200 and json.loads(r.body) == {"purged": 2}
    assert not get(edge.port, a).cache_status.startswith("edgecore; hit")
    assert not get(edge.port, b).cache_status.startswith("edgecore; hit")
    assert get(edge.port, c).cache_status.startswith("edgecore; hit")


def test_purge_by_prefix(edge, origin, uniq):
    for i in range(3):
        get(edge.port, f"{uniq}/p/{i}?cc=max-age=60")
    get(edge.port, f"{uniq}/q?cc=max-age=60")
    r = edge.admin("/purge", "POST", json.dumps({"prefix": f"http://test.local{uniq}/p/"}).encode())
    assert r.status == 200 and json.loads(r.body) == {"purged": 3}
    assert not get(edge.port, f"{uniq}/p/1?cc=max-age=60").cache_status.startswith("edgecore; hit")
    assert get(edge.port, f"{uniq}/q?cc=max-age=60").cache_status.startswith("edgecore; hit")


def test_purge_command_calls_the_admin_endpoint(edge, origin, uniq):
    import subprocess
    import sys

    t = f"{uniq}?cc=max-age=60"
    get(edge.port, t)
    cmd = [sys.executable, "-m", "edgecore", "purge", "--admin", f"127.0.0.1:{edge.admin_port}"]
    r = subprocess.run([*cmd, "--url", f"http://test.local{t}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout) == {"purged": 1}
    assert not get(edge.port, t).cache_status.startswith("edgecore; hit")
    bad = subprocess.run([*cmd, "--url", "x", "--tag", "y"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2


def test_stats_hits_and_misses_count_client_requests(origin, uniq, path):
    """/stats cache.hits and cache.misses count client requests, however many lookups are behind them."""
    e = Edge(origin.url, path=path)
    try:
        t = f"{uniq}?cc=max-age=60"
        get(e.port, t)  # miss
        for _ in range(3):
            get(e.port, t)  # hits (the C path, on "fast")
        get(e.port, t, headers={"Cache-Control": "max-stale=5"})  # a hit through the Python path
        get(e.port, f"{uniq}/u?cc=private")  # a miss that is not stored
        get(e.port, t, method="POST", body=b"x")  # neither: not the cache path
        s = e.stats()["cache"]
        assert (s["hits"], s["misses"]) == (4, 2)
        assert s["lookup_misses"] >= 2 and s["lookup_hits"] >= 4
    finally:
        e.stop()
