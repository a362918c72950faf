"""Tenants, residency, quotas and revocation (issue 14 points 2-4; tenants.py, ext/slabcache/tenants.pxi).

End-to-end tests run a real edgecore (per path: the C fast paths on and off; with tenancy on every request
takes the general path on both, which these tests hold to the same answers) in front of the scriptable origin;
the slab cache's side is tested in process on the debug module (its arena read back to check that revoked
bytes are overwritten). The sans-IO decision (policy.tenant_refusal) is a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import hypothesis.strategies as st
import pytest
from client import ROOT, Conn, Edge, get, wait_for
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edgecore import cachestatus, entry, policy, tenants
from edgecore.cache import debug_cache_class
from edgecore.config import ConfigErrors, TenantPolicy, build
from edgecore.errors import ConfigError

FAR = time.time() + 1e6

CONFIG = """
tenant_header = "x-tenant"
default_tenant = "public"
region = "eu"
tenant_state_file = "{state}"

[tenants.euonly]
regions = ["eu", "ch"]

[tenants.usonly]
regions = ["us"]

[tenants.small]
quota = "16KiB"

[tenants.gone]
revoked = true
"""


def write_config(folder: str, state: str) -> str:
    path = os.path.join(folder, "edgecore.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(state=state))
    return path


@pytest.fixture(scope="module")
def tenant_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tenants"))


@pytest.fixture(scope="module")
def tedge(origin, path, tenant_dir):  # type: ignore[no-untyped-def]
    """An edgecore with tenancy on (region eu), its state file in a temporary folder."""
    folder = os.path.join(tenant_dir, path)
    os.makedirs(folder, exist_ok=True)
    state = os.path.join(folder, "state.json")
    e = Edge(origin.url, path=path, args=["--config", write_config(folder, state)])
    e.state = state  # type: ignore[attr-defined]
    e.folder = folder  # type: ignore[attr-defined]
    yield e
    e.stop()


def tget(edge: Edge, target: str, tenant: str | None, extra: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    h = {} if tenant is None else {"X-Tenant": tenant}
    h.update(extra or {})
    return get(edge.port, target, h)


def tenants_doc(edge: Edge) -> dict:  # type: ignore[type-arg]
    r = edge.admin("/tenants")
    assert r.status == 200
    return json.loads(r.body)["tenants"]


def post(edge: Edge, path: str, body: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    return edge.admin(path, "POST", json.dumps(body).encode() if body is not None else b"")


# ------------------------------------------------------------------ isolation


def test_same_url_two_tenants_separate_entries_never_cross_served(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=60&echo=1"
    a1 = tget(tedge, t, "AcMe")
    b1 = tget(tedge, t, "beta")
    assert "fwd=uri-miss" in a1.cache_status and "fwd=uri-miss" in b1.cache_status
    a2 = tget(tedge, t, "AcMe")
    b2 = tget(tedge, t, "beta")
    assert a2.cache_status.startswith("edgecore; hit") and b2.cache_status.startswith("edgecore; hit")
    # each tenant gets its own stored answer (the origin echoes the tenant field it was sent, unchanged)
    assert a2.body == a1.body and b2.body == b1.body and a1.body != b1.body
    assert [s.header("x-tenant") for s in origin.requests_for(uniq)] == ["AcMe", "beta"]
    # names are case-sensitive: "acme" is another tenant, with its own miss
    assert "fwd=uri-miss" in tget(tedge, t, "acme").cache_status
    assert origin.count(uniq) == 3


def test_no_header_is_the_default_tenant_and_unknown_tenants_get_the_default_policy(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=60"
    tget(tedge, t, None)
    assert tget(tedge, t, None).cache_status.startswith("edgecore; hit")
    assert tget(tedge, t, "public").cache_status.startswith("edgecore; hit")  # the default tenant's entry
    # a tenant without a table: stored anywhere, no quota
    tget(tedge, t, "nobody-configured-me")
    assert tget(tedge, t, "nobody-configured-me").cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 2
    doc = tenants_doc(tedge)
    assert doc["public"]["items"] >= 1 and doc["public"]["quota_bytes"] is None


def test_forced_collision_is_a_miss_on_the_stored_tenant_field():
    """Two requests whose key bytes are identical (constructed: the key no longer tells the tenants apart)
    but whose tenants differ: the lookup checks the tenant stored in the slot, so it misses."""
    c = debug_cache_class()(8 << 20)
    try:
        key = b"0:3:GET11:test.local/same"
        a, b = tenants.tenant_id("a"), tenants.tenant_id("b")
        assert c.store(key, b"A's private answer", 0.0, FAR, tenant=a)
        assert c.lookup(key, 1.0, b) is None  # same key bytes, other tenant: a miss
        found = c.lookup(key, 1.0, a)
        assert found is not None and found[0] == b"A's private answer"
        assert c.lookup(key, 1.0, 0) is None  # no tenant is a tenant too
        assert c.lookup(key, 1.0) is not None  # without a tenant to check (tenancy off): as before
    finally:
        c.close()


def test_forced_collision_through_the_caching_flow(monkeypatch, on_path):  # type: ignore[no-untyped-def]
    """The same through cachepath.lookup with a Context of either path: keys.primary_key made to ignore the
    tenant (a forced collision), the entry stored for tenant a by sinks.store is not found for tenant b."""
    import asyncio

    from edgecore import cachepath, keys, sinks
    from edgecore.context import Context, Request
    from edgecore.metrics import SharedCounters

    cfg = build({"tenant_header": "x-tenant", "upstream": ["http://127.0.0.1:1"]})
    cache = debug_cache_class()(8 << 20)
    loop = asyncio.new_event_loop()
    try:
        ctx = Context(cfg, cache, SharedCounters(slots=1).slot_view(0), loop)
        assert not ctx.hitpath.enabled  # with tenants the C hit path hands everything to the general path
        real = keys.primary_key
        monkeypatch.setattr(keys, "primary_key", lambda m, h, t, o, tenant=b"": real(m, h, t, o))
        reqs = []
        for name in ("a", "b"):
            r = Request()
            r.method, r.host, r.target = b"GET", b"test.local", b"/same"
            r.tenant, r.tenant_key, r.tenant_id = name, name.encode(), tenants.tenant_id(name)
            reqs.append(r)
        fresh = policy.Freshness(lifetime=60.0, initial_age=0.0, response_time=time.time())
        key = keys.primary_key(b"GET", b"test.local", b"/same", ctx.key_opts, tenant=b"a")
        assert sinks.store(ctx, reqs[0], key, 200, b"OK", [], b"secret-a", fresh, ())
        assert cachepath.lookup(ctx, reqs[0], time.time())[1] is not None
        k_b, found, _ = cachepath.lookup(ctx, reqs[1], time.time())
        assert k_b == key and found is None  # identical key bytes, tenant b: a miss
        ctx.stop()
    finally:
        loop.close()
        cache.close()


# ------------------------------------------------------------------ residency


def test_residency_passes_through_uncached_with_detail(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=60"
    for _ in range(3):
        r = tget(tedge, t, "usonly")
        assert r.status == 200
        assert r.cache_status == "edgecore; fwd=bypass; fwd-status=200; detail=residency"
    assert origin.count(uniq) == 3
    # a tenant whose regions include this node's region is cached as usual
    tget(tedge, t, "euonly")
    assert tget(tedge, t, "euonly").cache_status.startswith("edgecore; hit")
    assert tenants_doc(tedge)["usonly"] == {
        "items": 0,
        "bytes": 0,
        "quota_bytes": None,
        "regions": ["us"],
        "revoked": False,
    }


def test_residency_is_not_coalesced(tedge, origin, uniq):
    """Concurrent requests of a tenant outside its regions share nothing: each goes upstream itself."""
    gate = uniq[1:]
    t = f"{uniq}?cc=max-age=60&gate={gate}"
    out: list[str] = []

    def one() -> None:
        out.append(tget(tedge, t, "usonly").cache_status)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for th in threads:
        th.start()
    assert origin.wait_count(uniq, 4)  # all four reached the origin while it held them
    origin.open_gate(gate)
    for th in threads:
        th.join(10)
    assert out == ["edgecore; fwd=bypass; fwd-status=200; detail=residency"] * 4


def test_residency_no_stale_while_revalidate_refresh(tedge, origin, uniq):
    """A response with stale-while-revalidate is never stored for such a tenant, so it is never served stale
    nor refreshed in the background: every request is one upstream request."""
    t = f"{uniq}?cc=max-age=0,stale-while-revalidate=60&etag=x"
    for _ in range(3):
        assert "detail=residency" in tget(tedge, t, "usonly").cache_status
    assert origin.count(uniq) == 3


# ------------------------------------------------------------------ purges by tenant


def test_purge_by_tenant_and_narrowing(tedge, origin, uniq):
    t1, t2 = f"{uniq}/1?cc=max-age=60", f"{uniq}/2?cc=max-age=60"
    for name in ("pa", "pb"):
        for t in (t1, t2):
            tget(tedge, t, name)
    # a url purge naming a tenant covers only that tenant's copy
    r = post(tedge, "/purge", {"url": f"http://test.local{t1}", "tenant": "pa"})
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    assert not tget(tedge, t1, "pa").cache_status.startswith("edgecore; hit")
    assert tget(tedge, t1, "pb").cache_status.startswith("edgecore; hit")
    # without a tenant it covers every tenant's copy
    r = post(tedge, "/purge", {"url": f"http://test.local{t2}"})
    assert r.status == 200 and json.loads(r.body) == {"purged": 2}
    assert not tget(tedge, t2, "pb").cache_status.startswith("edgecore; hit")
    # a tenant purge removes that tenant's entries only
    for t in (t1, t2):
        tget(tedge, t, "pa")
        tget(tedge, t, "pb")
    r = post(tedge, "/purge", {"tenant": "pa"})
    assert r.status == 200 and json.loads(r.body) == {"purged": 2}
    assert not tget(tedge, t1, "pa").cache_status.startswith("edgecore; hit")
    assert tget(tedge, t1, "pb").cache_status.startswith("edgecore; hit")
    # a prefix purge with a tenant narrows too
    r = post(tedge, "/purge", {"prefix": f"http://test.local{uniq}/", "tenant": "pb"})
    assert r.status == 200 and json.loads(r.body)["purged"] == 2
    assert tget(tedge, t1, "pa").cache_status.startswith("edgecore; hit")


def test_tag_purge_narrowed_by_tenant(tedge, origin, uniq):
    tag = f"{uniq[1:]}-tag"
    t = f"{uniq}?cc=max-age=60&hdr=Surrogate-Key:{tag}"
    for name in ("ta", "tb"):
        tget(tedge, t, name)
    r = post(tedge, "/purge", {"tag": tag, "tenant": "ta"})
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    assert tget(tedge, t, "tb").cache_status.startswith("edgecore; hit")
    assert not tget(tedge, t, "ta").cache_status.startswith("edgecore; hit")


def test_soft_purge_serves_stale_while_revalidating(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=600,stale-while-revalidate=60&etag=%22v1%22"
    tget(tedge, t, "soft")
    assert tget(tedge, t, "soft").cache_status.startswith("edgecore; hit")
    r = post(tedge, "/purge", {"url": f"http://test.local{t}", "soft": True})
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    r = tget(tedge, t, "soft")
    assert r.status == 200 and "detail=stale-while-revalidate" in r.cache_status
    # the background refresh revalidates (If-None-Match), it does not refetch cold
    assert origin.wait_count(uniq, 2)
    assert origin.requests_for(uniq)[1].header("if-none-match") == '"v1"'


def test_soft_purge_without_swr_revalidates_before_use(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=600&etag=%22v1%22"
    tget(tedge, t, "soft2")
    r = post(tedge, "/purge", {"tag": "none-such", "soft": True})
    assert json.loads(r.body) == {"purged": 0}
    r = post(tedge, "/purge", {"tenant": "soft2", "soft": True})
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}
    r = tget(tedge, t, "soft2")
    assert r.status == 200 and "fwd=stale" in r.cache_status and "fwd-status=304" in r.cache_status
    assert origin.requests_for(uniq)[1].header("if-none-match") == '"v1"'


# ------------------------------------------------------------------ quotas


def test_quota_evicts_only_the_tenants_own_entries(tedge, origin, uniq):
    others = [f"{uniq}/b/{i}?cc=max-age=600&size=1024" for i in range(10)]
    for t in others:
        tget(tedge, t, "bigneighbour")
    for i in range(60):
        tget(tedge, f"{uniq}/a/{i}?cc=max-age=600&size=1024", "small")
    doc = tenants_doc(tedge)["small"]
    assert doc["quota_bytes"] == 16 << 10
    assert 0 < doc["bytes"] <= 16 << 10  # never past its quota
    # its new entries made room from its own, in whichever shard they were: it keeps about a quota's worth
    assert doc["bytes"] >= 10 << 10 and doc["items"] >= 8
    # and the newest entry was stored (making room from its own older ones, never refused for the quota)
    assert tget(tedge, f"{uniq}/a/59?cc=max-age=600&size=1024", "small").cache_status.startswith(
        "edgecore; hit"
    )
    # the other tenant's entries all stayed
    for t in others:
        assert tget(tedge, t, "bigneighbour").cache_status.startswith("edgecore; hit")


# ------------------------------------------------------------------ revocation


def test_revoke_purges_stops_storing_and_restore(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=60"
    for i in range(3):
        tget(tedge, f"{t}&i={i}", "rv")
    assert tenants_doc(tedge)["rv"]["items"] == 3
    r = post(tedge, "/tenants/rv/revoke")
    assert r.status == 200 and json.loads(r.body) == {"revoked": True, "purged": 3}
    for _ in range(2):
        r = tget(tedge, f"{t}&i=0", "rv")
        assert r.status == 200 and r.cache_status == "edgecore; fwd=bypass; fwd-status=200; detail=revoked"
    doc = tenants_doc(tedge)["rv"]
    assert doc["revoked"] is True and doc["items"] == 0 and doc["bytes"] == 0
    with open(tedge.state) as f:
        assert "rv" in json.load(f)["revoked"]
    # other tenants are unaffected
    tget(tedge, t, "notrv")
    assert tget(tedge, t, "notrv").cache_status.startswith("edgecore; hit")
    r = post(tedge, "/tenants/rv/restore")
    assert r.status == 200 and json.loads(r.body) == {"revoked": False, "purged": 0}
    tget(tedge, f"{t}&i=0", "rv")
    assert tget(tedge, f"{t}&i=0", "rv").cache_status.startswith("edgecore; hit")
    assert post(tedge, "/tenants/rv/nonsense").status == 404
    assert tedge.admin("/tenants/rv/revoke").status == 405


def test_config_revoked_true_revokes(tedge, origin, uniq):
    r = tget(tedge, f"{uniq}?cc=max-age=60", "gone")
    assert r.cache_status == "edgecore; fwd=bypass; fwd-status=200; detail=revoked"
    assert tenants_doc(tedge)["gone"]["revoked"] is True


def test_revocation_survives_a_restart(origin, tmp_path, uniq):
    state = str(tmp_path / "state.json")
    cfg = write_config(str(tmp_path), state)
    e = Edge(origin.url, args=["--config", cfg])
    try:
        assert post(e, "/tenants/later/revoke").status == 200
    finally:
        e.stop()
    e = Edge(origin.url, args=["--config", cfg])
    try:
        r = tget(e, f"{uniq}?cc=max-age=60", "later")
        assert r.cache_status == "edgecore; fwd=bypass; fwd-status=200; detail=revoked"
        assert tenants_doc(e)["later"]["revoked"] is True
    finally:
        e.stop()


def test_revocation_is_seen_by_every_worker_at_once(origin, tmp_path, uniq):
    """Two workers share the tenant table: right after the revoke answer, no worker serves or stores the
    tenant (each request on a new connection, spread over both workers' SO_REUSEPORT listeners)."""
    cfg = write_config(str(tmp_path), str(tmp_path / "state.json"))
    e = Edge(origin.url, workers=2, args=["--config", cfg])
    try:
        t = f"{uniq}?cc=max-age=60"
        tget(e, t, "shared")
        assert wait_for(lambda: tget(e, t, "shared").cache_status.startswith("edgecore; hit"))
        assert json.loads(post(e, "/tenants/shared/revoke").body)["revoked"] is True
        seen = {tget(e, t, "shared").cache_status for _ in range(20)}
        assert seen == {"edgecore; fwd=bypass; fwd-status=200; detail=revoked"}
        assert tenants_doc(e)["shared"]["items"] == 0
    finally:
        e.stop()


def test_revoke_and_restore_need_the_admin_token(origin, tmp_path):
    e = Edge(origin.url, args=["--config", write_config(str(tmp_path), ""), "--admin-token", "s3cret"])
    try:
        for op in ("revoke", "restore"):
            assert post(e, f"/tenants/tok/{op}").status == 401
            r = e.admin(f"/tenants/tok/{op}", "POST", b"", headers={"Authorization": "Bearer s3cret"})
            assert r.status == 200 and json.loads(r.body)["revoked"] is (op == "revoke")
        assert e.admin("/tenants").status == 200  # reading needs no token, like /stats
    finally:
        e.stop()


def test_state_file_folder_must_exist(tmp_path):
    with pytest.raises(ConfigErrors) as ei:
        build({"tenant_state_file": str(tmp_path / "no" / "such" / "s.json")}, require_upstream=False)
    assert ei.value.problems[0].key == "tenant_state_file" and "does not exist" in ei.value.problems[0].why


def test_revoke_overwrites_the_bytes_in_the_arena(tmp_path):
    c = debug_cache_class()(8 << 20)
    try:
        tid = tenants.tenant_id("secretive")
        for i in range(20):
            c.store(b"k%d" % i, b"SECRET-PAYLOAD-%04d" % i, 0.0, FAR, tenant=tid)
        c.store(b"other", b"OTHER-PAYLOAD", 0.0, FAR, tenant=tenants.tenant_id("x"))
        assert c._test_contains(b"SECRET-PAYLOAD-0007")
        state = tenants.State(str(tmp_path / "s.json"))
        assert tenants.revoke(c, state, "secretive") == 20
        assert not c._test_contains(b"SECRET-PAYLOAD")  # zeroed in the arena, not only unlinked
        assert c._test_contains(b"OTHER-PAYLOAD")
        assert not c.store(b"k1", b"SECRET-PAYLOAD-again", 0.0, FAR, tenant=tid)  # never stored
        assert tenants.read_state(state.path) == {"secretive"}
        tenants.restore(c, state, "secretive")
        assert c.store(b"k1", b"v", 0.0, FAR, tenant=tid)
        assert tenants.read_state(state.path) == set()
    finally:
        c.close()


def test_apply_change_purges_what_the_new_policy_forbids():
    c = debug_cache_class()(8 << 20)
    try:
        old = build(
            {"region": "eu", "tenants": {"mover": {"regions": ["eu"]}, "big": {}, "quit": {}}},
            require_upstream=False,
        )
        new = build(
            {
                "region": "eu",
                "tenants": {
                    "mover": {"regions": ["us"]},
                    "big": {"quota": "2KiB"},
                    "quit": {"revoked": True},
                },
            },
            require_upstream=False,
        )
        for name in ("mover", "big", "quit", "stays"):
            for i in range(10):
                c.store(
                    b"%s-%d" % (name.encode(), i),
                    b"%s-BYTES-" % name.encode() + b"x" * 500,
                    0.0,
                    FAR,
                    tenant=tenants.tenant_id(name),
                )
        assert tenants.start(c, old, None) == 0
        assert tenants.apply_change(c, old, new) == 30
        for name in ("mover", "big", "quit"):
            assert not c._test_contains(b"%s-BYTES-" % name.encode())
        assert c._test_contains(b"stays-BYTES-")
        assert c.tenant_revoked(tenants.tenant_id("quit"))
    finally:
        c.close()


def test_tenant_table_accounting_and_quota_in_process():
    c = debug_cache_class()(8 << 20)
    try:
        a, b = tenants.tenant_id("a"), tenants.tenant_id("b")
        c.tenant_set(a, quota=4000)
        for i in range(50):
            c.store(b"b%d" % i, b"y" * 300, 0.0, FAR, tenant=b)
        for i in range(200):
            c.store(b"a%d" % i, b"x" * 300, 0.0, FAR, tenant=a)
        rows = {r["id"]: r for r in c.tenant_rows()}
        live_a = [i for i in range(200) if c.lookup(b"a%d" % i, 1.0, a) is not None]
        assert rows[a]["bytes"] == sum(len(b"a%d" % i) + 300 for i in live_a) <= 4000
        assert rows[a]["items"] == len(live_a) > 0
        assert all(c.lookup(b"b%d" % i, 1.0, b) is not None for i in range(50))
        assert rows[b]["items"] == 50
        c.delete(b"b0")
        assert {r["id"]: r for r in c.tenant_rows()}[b]["items"] == 49
    finally:
        c.close()


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "tables, key, why",
    [
        ({"acme": {"quota": "lots"}}, "tenants.acme.quota", "size"),
        ({"acme": {"quota": 10}}, "tenants.acme.quota", "minimum"),
        ({"acme": {"regoins": ["eu"]}}, "tenants.acme.regoins", "did you mean 'regions'"),
        ({"acme": {"regions": "eu"}}, "tenants.acme.regions", "list of region names"),
        ({"acme": {"revoked": "yes"}}, "tenants.acme.revoked", "true or false"),
        ({"acme": 3}, "tenants.acme", "table"),
        ({"bad name": {}}, "tenants.bad name", "visible ASCII"),
    ],
)
def test_config_errors_name_the_tenant_key(tables, key, why):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigErrors) as ei:
        build({"tenants": tables}, require_upstream=False)
    (p,) = ei.value.problems
    assert isinstance(p, ConfigError) and p.key == key and why in p.why


def test_config_tenant_keys_parse_and_tables_are_file_only():
    tables = {"Acme": {"regions": ["eu"], "quota": "1MiB"}}
    cfg = build({"tenant_header": "X-Tenant", "region": "eu", "tenants": tables}, require_upstream=False)
    assert cfg.tenant_header == "x-tenant" and cfg.region == "eu"
    assert dict(cfg.tenants) == {"Acme": TenantPolicy(("eu",), 1 << 20, False)}
    from edgecore.config import from_env

    assert "tenants" not in from_env({"EDGECORE_TENANTS": "anything", "EDGECORE_REGION": "us"})
    assert from_env({"EDGECORE_REGION": "us"}) == {"region": "us"}
    with pytest.raises(ConfigErrors) as ei:
        build({"tenant_header": "x tenant"}, require_upstream=False)
    assert ei.value.problems[0].key == "tenant_header"


def test_check_config_names_tenants_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('upstream = "http://127.0.0.1:9"\n[tenants.acme]\nquota = "a lot"\n')
    out = subprocess.run(
        [sys.executable, "-m", "edgecore", "check-config", "--config", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 2
    assert "tenants.acme.quota:" in out.stdout + out.stderr


# ------------------------------------------------------------------ sans-IO


@pytest.mark.parametrize(
    "regions, region, revoked, want",
    [
        # no table (or no regions): stored anywhere (INTERFACE "a tenant without a table has no region limit")
        (None, "eu", False, None),
        (None, "", False, None),
        # RFC 9111 3: storing is the cache's choice; outside the tenant's regions it passes through
        (("eu",), "eu", False, None),
        (("eu", "ch"), "ch", False, None),
        (("us",), "eu", False, policy.Reason.RESIDENCY),
        (("us",), "", False, policy.Reason.RESIDENCY),
        (("EU",), "eu", False, policy.Reason.RESIDENCY),  # region names are compared exactly
        # a revoked tenant is never stored, wherever it may be (the stronger statement wins)
        (None, "eu", True, policy.Reason.REVOKED),
        (("us",), "eu", True, policy.Reason.REVOKED),
    ],
)
def test_tenant_refusal_table(regions, region, revoked, want):  # type: ignore[no-untyped-def]
    assert policy.tenant_refusal(regions, region, revoked) is want


@pytest.mark.parametrize(
    "why, value",
    [
        # RFC 9211 2.2 fwd=bypass, 2.8 detail
        (policy.Reason.RESIDENCY, b"edgecore; fwd=bypass; detail=residency"),
        (policy.Reason.REVOKED, b"edgecore; fwd=bypass; detail=revoked"),
    ],
)
def test_cache_status_details(why, value):  # type: ignore[no-untyped-def]
    assert cachestatus.render(fwd=b"bypass", detail=cachestatus.detail(why)) == value


def test_tenant_id_is_never_zero_and_the_name_is_case_sensitive():
    assert tenants.tenant_id("") != 0
    assert tenants.tenant_id("Acme") != tenants.tenant_id("acme")
    # a request field's bytes and the admin API's (UTF-8) name of the same tenant are the same tenant
    assert tenants.tenant_id("café".encode()) == tenants.tenant_id("café")


def test_non_ascii_tenant_revoked_through_the_admin_api(tedge, origin, uniq):
    t = f"{uniq}?cc=max-age=60"
    raw = "café".encode()
    c = Conn(tedge.port)
    try:
        c.send(b"GET " + t.encode() + b" HTTP/1.1\r\nHost: test.local\r\nX-Tenant: " + raw + b"\r\n\r\n")
        assert c.read_response().status == 200
    finally:
        c.close()
    r = post(tedge, "/tenants/caf%C3%A9/revoke")
    assert r.status == 200 and json.loads(r.body)["purged"] == 1  # the entry stored for the field's bytes
    assert tenants_doc(tedge)["café"]["revoked"] is True


def test_entry_fresh_offset_is_what_soft_purge_rewrites():
    fresh = policy.Freshness(lifetime=60.0, initial_age=0.0, response_time=1e9)
    value, _birth, fresh_until, flags = entry.encode(200, b"OK", [], b"x", fresh)
    c = debug_cache_class()(8 << 20)
    try:
        c.store(b"k", value, 1e9, FAR, flags)
        c.store(b"k#marker", b"not a response: never rewritten", 1e9, FAR, entry.FLAG_VARY)
        layout, mask = entry.SOFT_PURGE_LAYOUT, entry.SOFT_PURGE_FLAGS
        assert c.soft_purge("url", 0, b"k", layout, mask, 1e9 + 5) == 1
        found = c.lookup(b"k", 1e9 + 6)
        assert found is not None
        m = entry.meta(found[0])
        # stale from now on: the lifetime (fresh_until - birth) is its age at 1e9 + 5
        assert m.fresh_until == 1e9 + 5 and entry.freshness(m).lifetime == 5.0
        u = policy.decide_use(entry.freshness(m), policy.parse_request([]), 1e9 + 6)[0]
        assert u is policy.Use.VALIDATE
    finally:
        c.close()


def test_access_log_has_the_tenant(origin, tmp_path, uniq):
    log = tmp_path / "access.log"
    cfg = tmp_path / "e.toml"
    cfg.write_text('tenant_header = "x-tenant"\n')
    e = Edge(origin.url, args=["--config", str(cfg)], env={"EDGECORE_ACCESS_LOG": str(log)})
    try:
        tget(e, f"{uniq}?cc=max-age=60", "logged")
        assert wait_for(lambda: log.exists() and b"logged" in log.read_bytes())
        line = json.loads(log.read_text().splitlines()[-1])
        assert line["tenant"] == "logged"
    finally:
        e.stop()


# ------------------------------------------------------------------ the tenant table against a model

TENANT_IDS = [tenants.tenant_id(n) for n in ("qa", "qb", "qc")]
QKEYS = [b"/q/%d" % i for i in range(24)]


class TenantQuotaMachine(RuleBasedStateMachine):
    """Random stores, deletes, quota changes, revocations and restores of three tenants on the debug cache
    (large enough that nothing is evicted for room), against a model of what each tenant holds: a tenant with
    a quota may lose its own entries (evicted to make room for its own), never another tenant's; the table's
    bytes and items equal the model's sums after every step, and never exceed a quota right after a store it
    accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = debug_cache_class()(8 << 20)
        self.model: dict[bytes, tuple[int, bytes]] = {}  # key -> (tenant, value)
        self.quota: dict[int, int] = {}
        self.revoked: set[int] = set()

    def teardown(self) -> None:
        self.cache.close()

    @rule(key=st.sampled_from(QKEYS), tenant=st.sampled_from(TENANT_IDS), n=st.integers(0, 1500))
    def store(self, key: bytes, tenant: int, n: int) -> None:
        value = bytes([n % 251]) * n
        ok = self.cache.store(key, value, 0.0, FAR, tenant=tenant)
        if tenant in self.revoked:
            assert not ok  # a revoked tenant is never stored (and nothing else changes)
            return
        if not ok:
            assert tenant in self.quota  # only a quota refuses a store in this roomy cache
            self.model.pop(key, None)  # (the old entry under that key was replaced before the refusal)
            return
        self.model[key] = (tenant, value)
        row = self._row(tenant)
        if tenant in self.quota:
            assert row["bytes"] <= self.quota[tenant]

    @rule(key=st.sampled_from(QKEYS))
    def delete(self, key: bytes) -> None:
        present = key in self._reconciled()
        assert self.cache.delete(key) == present
        self.model.pop(key, None)

    @rule(tenant=st.sampled_from(TENANT_IDS), quota=st.sampled_from([0, 1500, 4000, 9000]))
    def set_quota(self, tenant: int, quota: int) -> None:
        self.cache.tenant_set(tenant, quota=quota)
        if quota:
            self.quota[tenant] = quota
        else:
            self.quota.pop(tenant, None)

    @rule(tenant=st.sampled_from(TENANT_IDS))
    def revoke(self, tenant: int) -> None:
        self.cache.tenant_set(tenant, revoked=True)
        held = [k for k, (t, _) in self._reconciled().items() if t == tenant]
        assert self.cache.purge_tenant(tenant) == len(held)
        for k in held:
            del self.model[k]
        self.revoked.add(tenant)

    @rule(tenant=st.sampled_from(TENANT_IDS))
    def restore(self, tenant: int) -> None:
        self.cache.tenant_set(tenant, revoked=False)
        self.revoked.discard(tenant)

    @rule(key=st.sampled_from(QKEYS), tenant=st.sampled_from(TENANT_IDS))
    def lookup(self, key: bytes, tenant: int) -> None:
        got = self.cache.lookup(key, 1.0, tenant)
        held = self._reconciled().get(key)
        if held is None or held[0] != tenant:
            assert got is None  # never another tenant's entry
        else:
            assert got is not None and got[0] == held[1]

    def _row(self, tenant: int) -> dict:  # type: ignore[type-arg]
        return {r["id"]: r for r in self.cache.tenant_rows()}.get(tenant, {"bytes": 0, "items": 0})

    def _reconciled(self) -> dict[bytes, tuple[int, bytes]]:
        """The model after dropping what quota evictions took (observed after every step, so while the quota
        that caused them is still set): only entries of a tenant with a quota may be gone; every other
        tenant's entry must still be there, byte for byte."""
        for k, (t, v) in list(self.model.items()):
            got = self.cache.lookup(k, 1.0, t)
            if got is None:
                assert t in self.quota, f"{k!r} of a tenant without a quota was lost"
                del self.model[k]
            else:
                assert got[0] == v
        return self.model

    @invariant()
    def table_matches_model(self) -> None:
        held = self._reconciled()
        for t in TENANT_IDS:
            mine = [(k, v) for k, (tt, v) in held.items() if tt == t]
            row = self._row(t)
            assert row["items"] == len(mine)
            assert row["bytes"] == sum(len(k) + len(v) for k, v in mine)

    @invariant()
    def structure_is_sound(self) -> None:
        assert self.cache._test_check() == []


TenantQuotaMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_tenant_table_state_machine = TenantQuotaMachine.TestCase
