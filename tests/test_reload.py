"""Reload (SIGHUP and POST /reload): the config file re-read and validated whole, applied in every worker and
the admin process while the cache and the client connections stay; restart keys reported, not applied.

Real processes and sockets: each test starts edgecore with `--config FILE` only (the file owns every key, so
a reload can change it), rewrites the file and reloads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any

import pytest
from client import Conn, Edge, get, wait_for
from origin import Origin

from edgecore import config
from edgecore.config import RESTART_KEYS, build, reload_diff
from edgecore.metrics import MIN_UPSTREAM_BLOCKS, P_FAILURES, U_DOWN, SharedCounters


@pytest.fixture(scope="module")
def origin_b():
    o = Origin()
    yield o
    o.close()


def _toml(values: dict[str, Any]) -> str:
    out = []
    for k, v in values.items():
        out.append(f"{k} = {json.dumps(v)}")
    return "\n".join(out) + "\n"


class Reloadable:
    """An edgecore run from a config file alone, and that file."""

    def __init__(self, tmp_path: Any, path: str | None, **values: Any) -> None:
        self.file = os.path.join(str(tmp_path), "edgecore.toml")
        self.values = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "workers": 1,
            "cache_size": "32MiB",
            "grace_period": 5,
            "drain_delay": 0,
            **values,
        }
        self.write()
        self.edge = Edge("", base_args=["--config", self.file], path=path)

    def write(self, **changes: Any) -> None:
        self.values.update(changes)
        for k in [k for k, v in self.values.items() if v is None]:
            del self.values[k]
        with open(self.file, "w") as f:
            f.write(_toml(self.values))

    def write_text(self, text: str) -> None:
        with open(self.file, "w") as f:
            f.write(text)

    def post_reload(self, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return self.edge.admin("/reload", method="POST", body=b"", headers=headers)

    def reloads(self) -> dict[str, int]:
        return self.edge.stats()["reloads"]

    def sighup(self) -> int:
        """SIGHUP the supervisor; -> the reload count (ok + error) to wait for."""
        r = self.reloads()
        os.kill(self.edge.proc.pid, signal.SIGHUP)
        return r["ok"] + r["error"] + 1

    def wait_reloads(self, n: int) -> bool:
        return wait_for(lambda: sum(v for k, v in self.reloads().items() if k != "generation") >= n, 20)

    def logged(self, text: str) -> bool:
        """`text` in a line of the process log (read by a thread: polled, bounded)."""
        return wait_for(lambda: any(text in line for line in list(self.edge.lines)), 10)

    def stop(self) -> None:
        self.edge.stop()


@pytest.fixture
def make(tmp_path, request):
    made: list[Reloadable] = []

    def mk(path: str | None = None, **values: Any) -> Reloadable:
        r = Reloadable(tmp_path, path, **values)
        made.append(r)
        return r

    yield mk
    for r in made:
        r.stop()


def _up(o: Origin) -> list[str]:
    return [o.url]


# ----------------------------------------------------------------------------------------- upstreams, cache
def test_sighup_changes_upstream_and_keeps_cache(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin))
    port = rl.edge.port
    before = get(port, f"{uniq}/old?cc=max-age=300")
    assert before.status == 200 and origin.count(f"{uniq}/old") == 1
    rl.write(upstream=_up(origin_b))
    assert rl.wait_reloads(rl.sighup())
    assert rl.reloads()["ok"] == 1
    # a hit from before is still a hit: the cache is kept
    hit = get(port, f"{uniq}/old?cc=max-age=300")
    assert hit.cache_status.startswith("edgecore; hit"), hit.cache_status
    # the next miss goes to the new origin only
    r = get(port, f"{uniq}/new?cc=max-age=300")
    assert r.status == 200
    assert origin_b.count(f"{uniq}/new") == 1 and origin.count(f"{uniq}/new") == 0
    assert rl.logged("config reloaded (generation 1): changed upstream")


def test_post_reload_changes_upstream_at_once(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin))
    port = rl.edge.port
    assert get(port, f"{uniq}/a?cc=max-age=300").status == 200
    rl.write(upstream=_up(origin_b))
    r = rl.post_reload()
    assert r.status == 200, r.body
    answer = json.loads(r.body)
    assert answer["reloaded"] is True and answer["changed"] == ["upstream"]
    assert answer["restart_required"] == []
    # the answer comes once every worker has applied it: no waiting here
    assert get(port, f"{uniq}/b?cc=max-age=300").status == 200
    assert origin_b.count(f"{uniq}/b") == 1 and origin.count(f"{uniq}/b") == 0
    assert get(port, f"{uniq}/a?cc=max-age=300").cache_status.startswith("edgecore; hit")
    # the admin process's health checks run on the new list
    s = rl.edge.wait_stat(
        lambda s: [h["upstream"] for h in s["upstream"]["health"]] == [origin_b.url[len("http://") :]]
    )
    assert [h["upstream"] for h in s["upstream"]["health"]] == [origin_b.url[len("http://") :]]


def test_reload_applied_in_every_worker_before_the_answer(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin), workers=2)
    rl.write(upstream=_up(origin_b))
    assert rl.post_reload().status == 200
    # new connections spread over both workers (SO_REUSEPORT): every miss, whichever worker takes it, goes
    # to the new origin; keep going until both workers have answered (bounded)
    start = rl.edge.stats()["workers"]["requests"]
    for i in range(200):
        assert get(rl.edge.port, f"{uniq}/m{i}").status == 200
        served = rl.edge.stats()["workers"]["requests"]
        if i >= 3 and all(a > b for a, b in zip(served, start, strict=True)):
            break
    assert all(a > b for a, b in zip(served, start, strict=True)), (start, served)
    assert origin.count(f"{uniq}/m") == 0 and origin_b.count(f"{uniq}/m") == i + 1


def test_idle_keepalive_connection_survives_reload(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin))
    c = Conn(rl.edge.port)
    try:
        c.request("GET", f"{uniq}/1?cc=max-age=300")
        assert c.read_response().status == 200
        rl.write(upstream=_up(origin_b))
        assert rl.post_reload().status == 200
        # the same connection, idle across the reload: its next request uses the new config
        c.request("GET", f"{uniq}/2?cc=max-age=300")
        r = c.read_response()
        assert r.status == 200
        assert origin_b.count(f"{uniq}/2") == 1 and origin.count(f"{uniq}/2") == 0
        c.request("GET", f"{uniq}/1?cc=max-age=300")
        assert c.read_response().cache_status.startswith("edgecore; hit")
    finally:
        c.close()


def test_inflight_response_started_before_reload_completes(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin))
    gate = f"g{uniq.replace('/', '')}"
    c = Conn(rl.edge.port, timeout=30)
    try:
        # the head and half the body are sent, then the origin waits at the gate
        c.request("GET", f"{uniq}/slow?size=200000&bodygate={gate}")
        assert origin.wait_count(f"{uniq}/slow", 1)
        rl.write(upstream=_up(origin_b))
        assert rl.post_reload().status == 200
        origin.open_gate(gate)
        r = c.read_response()
        assert r.status == 200 and len(r.body) == 200000
        assert origin_b.count(f"{uniq}/slow") == 0
        # and the connection goes on, on the new config
        c.request("GET", f"{uniq}/after")
        assert c.read_response().status == 200
        assert origin_b.count(f"{uniq}/after") == 1
    finally:
        c.close()


def test_removed_upstream_pool_closed_kept_upstream_pool_reused(make, origin, origin_b, path, uniq):
    """Pooled connections: an upstream still configured keeps its keep-alive connection (no new connect), a
    removed one's idle connection is closed."""
    rl = make(path, upstream=[origin.url, origin_b.url], lb="round_robin", retries=0)
    port = rl.edge.port
    for i in range(4):  # both servers get requests, and both keep an idle connection
        assert get(port, f"{uniq}/w{i}").status == 200
    assert origin.count(f"{uniq}/w") >= 1 and origin_b.count(f"{uniq}/w") >= 1
    a_conns = {s.conn for s in origin.requests_for(uniq)}
    b_conns = {s.conn for s in origin_b.requests_for(uniq)}
    rl.write(upstream=[origin.url])
    assert rl.post_reload().status == 200
    assert get(port, f"{uniq}/x1").status == 200
    assert get(port, f"{uniq}/x2").status == 200
    assert origin_b.count(f"{uniq}/x") == 0
    # the kept upstream's requests still come over the connections it had before the reload
    assert {s.conn for s in origin.requests_for(f"{uniq}/x")} <= a_conns
    # the removed upstream's idle connections were closed by the reload
    assert b_conns and wait_for(lambda: not (b_conns & set(origin_b.open_conns)), 10)


def test_routes_added_by_reload_apply_at_once_on_both_paths(make, origin, path, uniq):
    """[[routes]] are rebuilt in every worker (the C hit path's table too): a URL hit before the reload is
    bypassed after it, without a restart."""
    rl = make(path, upstream=_up(origin))
    t = f"{uniq}/r?cc=max-age=300"
    get(rl.edge.port, t)
    assert get(rl.edge.port, t).cache_status.startswith("edgecore; hit")
    rl.write_text(_toml(rl.values) + f'[[routes]]\npath_prefix = "{uniq}"\nbypass = true\n')
    r = rl.post_reload()
    assert r.status == 200 and json.loads(r.body)["changed"] == ["routes"], r.body
    after = get(rl.edge.port, t)
    assert after.cache_status.startswith("edgecore; fwd=bypass"), after.cache_status
    assert origin.count(f"{uniq}/r") == 2


def test_tenant_tables_changed_by_reload_apply_at_once(make, origin, path, uniq):
    """A reload that takes this node's region out of a tenant's regions: its stored entries are purged at once
    (tenants.apply_change) and its traffic passes through uncached (Cache-Status detail residency) in every
    worker; another tenant's entries stay."""
    rl = make(path, upstream=_up(origin), tenant_header="X-Tenant", region="eu")
    tables = '[tenants.acme]\nregions = ["eu"]\n'
    rl.write_text(_toml(rl.values) + tables)
    assert rl.post_reload().status == 200
    t = f"{uniq}/t?cc=max-age=300"
    for who in ("acme", "other"):
        get(rl.edge.port, t, {"X-Tenant": who})
        assert get(rl.edge.port, t, {"X-Tenant": who}).cache_status.startswith("edgecore; hit"), who
    items = rl.edge.stats()["cache"]["items"]
    rl.write_text(_toml(rl.values) + tables.replace('["eu"]', '["us"]'))
    r = rl.post_reload()
    assert r.status == 200 and "tenants" in json.loads(r.body)["changed"], r.body
    assert rl.edge.stats()["cache"]["items"] == items - 1  # acme's entry purged by the reload itself
    after = get(rl.edge.port, t, {"X-Tenant": "acme"})
    assert "detail=residency" in after.cache_status, after.cache_status
    assert get(rl.edge.port, t, {"X-Tenant": "other"}).cache_status.startswith("edgecore; hit")


def test_upstream_timeout_reloaded(make, origin, path, uniq):
    rl = make(path, upstream=_up(origin), response_timeout=30, retries=0)
    port = rl.edge.port
    assert get(port, f"{uniq}/a?delay=1.5").status == 200  # (within 30 s)
    rl.write(response_timeout=0.5)
    assert json.loads(rl.post_reload().body)["changed"] == ["response_timeout"]
    assert get(port, f"{uniq}/b?delay=1.5").status == 504


# ----------------------------------------------------------------------------------------- refused
def test_invalid_config_refused_whole(make, origin, origin_b, uniq):
    rl = make("general", upstream=_up(origin), retries=1)
    port = rl.edge.port
    rl.write_text(_toml({**rl.values, "upstream": _up(origin_b), "retries": "many", "bogus_key": 1}))
    r = rl.post_reload()
    assert r.status == 422
    errors = json.loads(r.body)["errors"]
    assert any(e.startswith("retries: ") for e in errors), errors
    assert any(e.startswith("bogus_key: unknown key") for e in errors), errors
    # nothing applied: not even the valid upstream change
    assert get(port, f"{uniq}/x").status == 200
    assert origin.count(f"{uniq}/x") == 1 and origin_b.count(f"{uniq}/x") == 0
    assert rl.reloads() == {"generation": 0, "ok": 0, "error": 1}
    metrics = rl.edge.admin("/metrics").body.decode()
    assert 'edgecore_config_reloads_total{result="error"} 1.0' in metrics
    assert 'edgecore_config_reloads_total{result="ok"} 0.0' in metrics
    assert rl.logged("config reload refused: retries:") and rl.logged("config reload refused: bogus_key")
    refused = [line for line in rl.edge.lines if "config reload refused" in line]
    assert (
        len(refused) == 2 and any("retries:" in x for x in refused) and any("bogus_key" in x for x in refused)
    )
    # by SIGHUP: refused the same way, counted
    rl.write_text("this is = = not toml\n")
    assert rl.wait_reloads(rl.sighup())
    assert rl.reloads()["error"] == 2
    assert rl.logged("config reload refused: config:")
    assert get(port, f"{uniq}/y").status == 200 and origin.count(f"{uniq}/y") == 1


def test_restart_keys_reported_not_applied(make, origin, uniq):
    rl = make("general", upstream=_up(origin))
    pids = rl.edge.worker_pids()
    rl.write(workers=2, cache_size="48MiB", retries=3)
    r = rl.post_reload()
    assert r.status == 200
    answer = json.loads(r.body)
    assert sorted(answer["changed"]) == ["cache_size", "retries", "workers"]
    assert sorted(answer["restart_required"]) == ["cache_size", "workers"]
    s = rl.edge.stats()
    assert s["workers"]["configured"] == 1
    assert s["cache"]["capacity_bytes"] == 32 << 20
    assert sorted(rl.edge.worker_pids()) == sorted(pids)  # no worker added, none restarted
    assert rl.logged("workers changed; it needs a restart")
    # the same again: still reported (the running value is still the old one)
    again = json.loads(rl.post_reload().body)
    assert sorted(again["restart_required"]) == ["cache_size", "workers"]
    assert "retries" not in again["changed"]


def test_reload_needs_the_admin_token(make, origin):
    rl = make("general", upstream=_up(origin), admin_token="first-secret")
    assert rl.post_reload().status == 401
    assert rl.post_reload("wrong").status == 401
    assert rl.reloads()["ok"] == 0
    rl.write(admin_token="second-secret")
    r = rl.post_reload("first-secret")
    assert r.status == 200 and json.loads(r.body)["changed"] == ["admin_token"]
    # the new token is in force in the admin process at once
    assert rl.post_reload("first-secret").status == 401
    assert rl.post_reload("second-secret").status == 200
    assert rl.edge.admin("/reload").status == 405  # (GET)


def test_requests_pipelined_behind_a_reload_are_answered_after_it(make, origin):
    rl = make("general", upstream=_up(origin))
    c = Conn(rl.edge.admin_port)
    try:
        host = f"127.0.0.1:{rl.edge.admin_port}"
        c.send(
            f"POST /reload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
            f"GET /stats HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        first, second = c.read_response(), c.read_response()
        assert first.status == 200 and json.loads(first.body)["reloaded"] is True
        assert second.status == 200 and json.loads(second.body)["reloads"]["generation"] == 1
    finally:
        c.close()


# ----------------------------------------------------------------------------------------- processes
def test_worker_receiving_sighup_survives(make, origin, uniq):
    rl = make("general", upstream=_up(origin), workers=2)
    pids = sorted(rl.edge.worker_pids())
    assert len(pids) == 3  # two workers and the admin process
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    # a reload is acknowledged by every child: each has run since its SIGHUP was sent
    assert rl.post_reload().status == 200
    assert sorted(rl.edge.worker_pids()) == pids
    assert not any("exited with status" in line for line in rl.edge.lines)
    assert get(rl.edge.port, f"{uniq}/x").status == 200


def test_worker_restarted_after_reload_runs_new_config(make, origin, origin_b, path, uniq):
    rl = make(path, upstream=_up(origin))
    rl.write(upstream=_up(origin_b))
    assert rl.post_reload().status == 200
    old = rl.edge.stats()["workers"]["pids"][0]
    os.kill(old, signal.SIGKILL)
    assert wait_for(
        lambda: (s := rl.edge.stats())["workers"]["ready"] == 1 and s["workers"]["pids"][0] not in (0, old),
        20,
    )
    assert get(rl.edge.port, f"{uniq}/after-restart").status == 200
    assert origin_b.count(f"{uniq}/after-restart") == 1
    assert origin.count(f"{uniq}/after-restart") == 0


def test_access_log_turned_on_by_reload(make, origin, path, uniq, tmp_path):
    """access_log is reloadable in every worker (and with it the C hit path is off, so hits are logged)."""
    rl = make(path, upstream=_up(origin))
    port = rl.edge.port
    assert get(port, f"{uniq}/h?cc=max-age=300").status == 200
    log_file = os.path.join(str(tmp_path), "access.log")
    rl.write(access_log=log_file)
    assert json.loads(rl.post_reload().body)["changed"] == ["access_log"]
    assert get(port, f"{uniq}/h?cc=max-age=300").cache_status.startswith("edgecore; hit")

    def logged() -> list[dict[str, Any]]:
        if not os.path.exists(log_file):
            return []
        with open(log_file) as f:
            return [json.loads(x) for x in f if x.strip()]

    assert wait_for(lambda: any(e["target"] == f"{uniq}/h?cc=max-age=300" for e in logged()), 10)


def test_reload_bound_to_one_implementation_counts_both(make, origin):
    """SIGHUP and POST /reload count in the same counters and generation."""
    rl = make("general", upstream=_up(origin))
    assert rl.post_reload().status == 200
    assert rl.wait_reloads(rl.sighup())
    s = rl.reloads()
    assert s == {"generation": 2, "ok": 2, "error": 0}
    assert 'edgecore_config_reloads_total{result="ok"} 2.0' in rl.edge.admin("/metrics").body.decode()
    # a clean stop after reloads (the health prober they replaced included) logs no ERROR
    assert rl.edge.stop() == 0
    assert not [x for x in rl.edge.lines if " ERROR " in x or "Task was destroyed" in x], rl.edge.lines


# ----------------------------------------------------------------------------------------- units
def _cfg(**kw: Any) -> config.Config:
    return build({"upstream": ["http://127.0.0.1:1"], **kw})


@pytest.mark.parametrize(
    "old, new, changed, restart",
    [
        ({}, {}, (), ()),
        ({}, {"retries": 3}, ("retries",), ()),
        ({}, {"upstream": ["http://127.0.0.1:2"]}, ("upstream",), ()),
        ({}, {"workers": 4}, ("workers",), ("workers",)),
        ({}, {"listen": "127.0.0.1:81", "admin": "127.0.0.1:82"}, ("listen", "admin"), ("listen", "admin")),
        ({}, {"cache_size": "64MiB", "stale_if_error": 5}, ("cache_size", "stale_if_error"), ("cache_size",)),
        ({"admin_token": "a"}, {"admin_token": "b"}, ("admin_token",), ()),
        ({}, {"max_object_size": "2MiB"}, ("max_object_size",), ("max_object_size",)),
        (
            {},
            {"upstreams": [{"url": "http://127.0.0.1:3", "weight": 2}]},
            ("upstream", "upstreams"),
            (),
        ),
    ],
)
def test_reload_diff(old, new, changed, restart):
    running, loaded = _cfg(**old), _cfg(**new)
    d = reload_diff(running, loaded)
    assert d.changed == changed
    assert d.restart_required == restart
    for k in RESTART_KEYS:  # kept at the running value
        assert getattr(d.applied, k) == getattr(running, k)
    for k in set(changed) - set(RESTART_KEYS):  # the rest applied
        assert getattr(d.applied, k) == getattr(loaded, k)


def test_config_pickles_for_the_control_channel():
    import pickle

    c = _cfg(upstreams=[{"url": "http://127.0.0.1:3", "weight": 2}], key_drop_params=["utm"])
    assert pickle.loads(pickle.dumps(c)) == c
    assert dataclasses.replace(c, workers=3).workers == 3


def test_upstream_blocks_follow_the_upstream_across_reloads():
    c = SharedCounters(slots=2, upstreams=3)
    c.assign_blocks(["a:1", "b:1"])
    a, b = c.block_of("a:1", 9), c.block_of("b:1", 9)
    assert {a, b} == {0, 1}
    c.words[c.upstream_word(b, U_DOWN)] = 1
    c.words[c.per_upstream_base(1, b) + P_FAILURES] = 5
    c.assign_blocks(["b:1", "c:1"])  # a removed, c added: b keeps its block and its state
    assert c.block_of("b:1", 0) == b and c.words[c.upstream_word(b, U_DOWN)] == 1
    assert c.block_of("c:1", 0) == 2
    c.assign_blocks(["b:1", "c:1", "d:1"])  # no free block: d takes a's (no longer listed), zeroed
    assert c.block_of("d:1", 0) == a and c.block_of("a:1", 0) is None
    with pytest.raises(ValueError):
        c.assign_blocks(["w:1", "x:1", "y:1", "z:1"])
    # counters never assigned (a test's context): by position
    fresh = SharedCounters(slots=1, upstreams=2)
    assert fresh.block_of("q:1", 1) == 1 and fresh.block_of("q:1", 2) is None
    assert MIN_UPSTREAM_BLOCKS >= 16


def test_pool_takes_over_kept_servers_and_retires_removed():
    import asyncio

    from edgecore.upstream import Pool

    class FakeConn:
        def __init__(self) -> None:
            self.closed = False

        def close(self) -> None:
            self.closed = True

    loop = asyncio.new_event_loop()
    try:
        counters = SharedCounters(slots=1, upstreams=4)
        counters.assign_blocks(["127.0.0.1:1", "127.0.0.1:2"])
        slot = counters.slot_view(0)
        old = Pool(build({"upstream": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}), loop, counters=slot)
        kept_conn, gone_conn = FakeConn(), FakeConn()
        old.servers[0].idle.append(kept_conn)  # type: ignore[arg-type]
        old.servers[1].idle.append(gone_conn)  # type: ignore[arg-type]
        old.servers[0].inflight = 1
        cfg = build({"upstream": ["http://127.0.0.1:3", "http://127.0.0.1:1"], "retry_budget": 0.5})
        counters.assign_blocks([u.authority for u in cfg.upstream])
        new = Pool(cfg, loop, counters=slot, previous=old)
        kept = new.servers[1]
        assert kept is old.servers[0] and kept.index == 1 and kept.idle == [kept_conn]
        assert kept.inflight == 1 and not kept_conn.closed
        assert gone_conn.closed and old.servers[1].retired and not old.servers[1].idle
        assert new.active is old.active and new.budget is old.budget and new.budget.ratio == 0.5
        # the kept server's words are its block's, wherever it sits in the new list
        assert kept.pbase == counters.per_upstream_base(0, counters.block_of("127.0.0.1:1", 0) or 0)
        new.close()
        old.close()
    finally:
        loop.close()
