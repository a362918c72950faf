"""End to end, with real sockets: several upstreams, one of them dead (refusing, or accepting and resetting),
the choice among them (weighted round-robin, least_request, consistent_hash), passive ejection, active HTTP
health checks shared by the workers, retries within the retry budget, the max_upstream_requests circuit
breaker, and upstream health in /readyz and /metrics. Every test runs on both paths."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time

import pytest
from client import Conn, Edge, get, wait_for
from origin import Origin


class Resetter:
    """A server on 127.0.0.1 that accepts connections and resets each as soon as a request byte arrives
    (RST, no response byte), counting those requests (`accepted`; a TCP health check sends nothing and is
    not counted); or, before `listen()`, a bound port that refuses."""

    def __init__(self, listen: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.thread: threading.Thread | None = None
        if listen:
            self.listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listen(self) -> None:
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.settimeout(2)
            try:
                if c.recv(1):
                    self.accepted += 1
            except OSError:
                pass
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def close(self) -> None:
        self.stopping = True
        if self.thread is not None:
            self.thread.join(5)
        self.sock.close()


def refusing() -> Resetter:
    """A port that refuses connections (bound, never listening: no other process can take it)."""
    return Resetter(listen=False)


@pytest.fixture
def origins():
    made: list[Origin] = []

    def make(n: int) -> list[Origin]:
        out = [Origin() for _ in range(n)]
        made.extend(out)
        return out

    yield make
    for o in made:
        o.close()


@pytest.fixture
def edges():
    made: list[Edge] = []

    def make(
        *upstreams: str,
        env: dict[str, str] | None = None,
        path: str,
        config: str = "",
        tmp=None,
        workers: int = 1,
    ) -> Edge:
        args: list[str] = []
        for u in upstreams[1:]:
            args += ["--upstream", u]
        if config:
            f = tmp / f"edge{len(made)}.toml"
            f.write_text(config)
            args += ["--config", str(f)]
        e = Edge(upstreams[0], args=args, env=env or {}, path=path, workers=workers)
        made.append(e)
        return e

    yield make
    for e in made:
        assert e.stop() == 0


def metric(e: Edge, name: str, upstream: str) -> float:
    text = e.admin("/metrics").body.decode()
    m = re.search(rf'^{re.escape(name)}\{{upstream="{re.escape(upstream)}"\}} (\S+)$', text, re.M)
    assert m, f"{name}{{upstream={upstream}}} not in /metrics"
    return float(m.group(1))


def authority(o: Origin) -> str:
    return f"127.0.0.1:{o.port}"


def test_misses_spread_by_weight(origins, edges, path, tmp_path, uniq):
    a, b = origins(2)
    config = f'[[upstreams]]\nurl = "{b.url}"\nweight = 3\n'
    e = edges(a.url, path=path, config=config, tmp=tmp_path)
    for i in range(40):
        r = get(e.port, f"{uniq}/{i}?cc=max-age=60")
        assert r.status == 200
    # smooth weighted round-robin, one choice per request: exactly 1:3 (not every miss on one server)
    assert (a.count(uniq), b.count(uniq)) == (10, 30)
    for i in range(40):  # now hits: nothing more goes upstream
        assert get(e.port, f"{uniq}/{i}?cc=max-age=60").cache_status.startswith("edgecore; hit")
    assert a.count(uniq) + b.count(uniq) == 40


def test_a_refusing_upstream_of_three_fails_no_request(origins, edges, path, uniq):
    a, b = origins(2)
    dead = refusing()
    try:
        e = edges(a.url, dead.url, b.url, path=path)
        rs = [get(e.port, f"{uniq}/{i}") for i in range(30)]
        assert [r.status for r in rs] == [200] * 30
        assert a.count(uniq) + b.count(uniq) == 30
        assert a.count(uniq) >= 10 and b.count(uniq) >= 10
        assert wait_for(lambda: b"127.0.0.1:%d down" % dead.port in e.admin("/readyz").body)
    finally:
        dead.close()


def test_an_upstream_that_resets_is_retried_elsewhere_and_ejected(origins, edges, path, uniq):
    (a,) = origins(1)
    bad = Resetter()
    try:
        e = edges(a.url, bad.url, path=path)
        rs = [get(e.port, f"{uniq}/{i}") for i in range(20)]
        assert [r.status for r in rs] == [200] * 20
        assert a.count(uniq) == 20
        # max_fails = 1: the first reset ejects it for fail_timeout (10 s), so it saw one request only
        assert bad.accepted == 1
        assert metric(e, "edgecore_upstream_retries_total", bad.authority) == 1
        assert metric(e, "edgecore_upstream_ejections_total", bad.authority) == 1
        assert wait_for(lambda: any("ejected" in ln and bad.authority in ln for ln in e.lines))
    finally:
        bad.close()


def test_active_http_check_marks_down_and_back_up(origins, edges, path, uniq):
    a, b = origins(2)
    env = {
        "EDGECORE_HEALTH_CHECK_PATH": "/health",
        "EDGECORE_HEALTH_CHECK_INTERVAL": "0.1",
        "EDGECORE_HEALTHY_THRESHOLD": "2",
        "EDGECORE_UNHEALTHY_THRESHOLD": "2",
    }
    e = edges(a.url, b.url, env=env, path=path)
    assert wait_for(lambda: b.count("/health") >= 1)
    assert b.requests_for("/health")[0].method == "GET"  # an HTTP check, not a TCP connect
    b.override("/health", status="503")
    assert wait_for(lambda: metric(e, "edgecore_upstream_up", authority(b)) == 0)
    assert b"%s down: GET /health answered 503" % authority(b).encode() in e.admin("/readyz").body
    assert any("marked down" in ln and authority(b) in ln for ln in e.lines)
    rs = [get(e.port, f"{uniq}/down/{i}") for i in range(10)]
    assert all(r.status == 200 for r in rs)
    assert (a.count(f"{uniq}/down/"), b.count(f"{uniq}/down/")) == (10, 0)  # the workers skip it
    b.override("/health", status="200")
    assert wait_for(lambda: metric(e, "edgecore_upstream_up", authority(b)) == 1)
    assert wait_for(lambda: any("marked up" in ln and authority(b) in ln for ln in e.lines))
    for i in range(10):
        assert get(e.port, f"{uniq}/up/{i}").status == 200
    assert b.count(f"{uniq}/up/") == 5  # back in the rotation


def test_a_dead_upstream_is_skipped_by_every_worker_and_back_when_it_recovers(origins, edges, path, uniq):
    (a,) = origins(1)
    dead = refusing()
    env = {"EDGECORE_HEALTH_CHECK_INTERVAL": "0.1", "EDGECORE_HEALTHY_THRESHOLD": "2"}
    back: Origin | None = None
    try:
        e = edges(a.url, dead.url, env=env, path=path, workers=2)
        assert wait_for(lambda: metric(e, "edgecore_upstream_up", dead.authority) == 0)
        rs = [get(e.port, f"{uniq}/down/{i}") for i in range(20)]
        assert [r.status for r in rs] == [200] * 20
        assert metric(e, "edgecore_upstream_retries_total", dead.authority) == 0  # never even tried
        back = Origin(sock=dead.sock)  # the server comes up on the same port
        assert wait_for(lambda: metric(e, "edgecore_upstream_up", dead.authority) == 1)
        assert wait_for(lambda: any("marked up" in ln and dead.authority in ln for ln in e.lines))
        rs = [get(e.port, f"{uniq}/up/{i}") for i in range(20)]
        assert [r.status for r in rs] == [200] * 20
        assert back.count(f"{uniq}/up/") >= 6  # round-robin per worker: about half of them
    finally:
        if back is not None:
            back.close()
        else:
            dead.close()


def test_checks_run_once_for_all_workers(origins, path):
    (a,) = origins(1)
    env = {"EDGECORE_HEALTH_CHECK_PATH": "/hc", "EDGECORE_HEALTH_CHECK_INTERVAL": "0.5"}
    e = Edge(a.url, args=["--workers", "3"], env=env, path=path)
    try:
        assert wait_for(lambda: a.count("/hc") >= 1)
        t0, n0 = time.monotonic(), a.count("/hc")
        assert wait_for(lambda: a.count("/hc") >= n0 + 4)
        n, elapsed = a.count("/hc") - n0, time.monotonic() - t0
        # one checker (the admin process), not one per worker: at most one check per interval (three
        # checkers would make these 4 checks in about 2/3 of a second)
        assert n <= elapsed / 0.5 + 1
    finally:
        assert e.stop() == 0


def test_least_request_prefers_the_idle_server(origins, edges, path, uniq):
    a, b = origins(2)
    e = edges(a.url, b.url, env={"EDGECORE_LB": "least_request"}, path=path)
    g = f"{uniq}-g"
    held = []
    for i in range(4):
        t = threading.Thread(target=get, args=(e.port, f"{uniq}/held/{i}?gate={g}"))
        t.start()
        held.append(t)
        assert wait_for(lambda i=i: a.count(f"{uniq}/held/") + b.count(f"{uniq}/held/") == i + 1)
    assert a.count(f"{uniq}/held/") == b.count(f"{uniq}/held/") == 2  # each to the less busy one
    b.open_gate(g)  # b's two finish, a's two stay in flight
    assert wait_for(lambda: sum(t.is_alive() for t in held) == 2)
    for i in range(10):
        assert get(e.port, f"{uniq}/free/{i}").status == 200
    assert (a.count(f"{uniq}/free/"), b.count(f"{uniq}/free/")) == (0, 10)
    a.open_gate(g)
    for t in held:
        t.join(10)


def test_consistent_hash_keeps_keys_and_moves_only_the_dead_servers(origins, edges, path, uniq):
    os3 = origins(3)
    e = edges(*(o.url for o in os3), env={"EDGECORE_LB": "consistent_hash"}, path=path)
    paths = [f"{uniq}/{i}?cc=no-store" for i in range(45)]

    def owners() -> dict[str, int]:
        out = {}
        for p in paths:
            who = [i for i, o in enumerate(os3) if o.count(p) > 0]
            assert len(who) == 1, (p, who)  # one server per key
            out[p] = who[0]
        return out

    for _ in range(3):
        for p in paths:
            assert get(e.port, p).status == 200
    before = owners()
    assert sorted(set(before.values())) == [0, 1, 2]  # every server has some keys
    for p in paths:
        assert sum(o.count(p) for o in os3) == 3
    dead = 2
    os3[dead].kill()
    for o in os3[:2]:
        o.seen.clear()
    for p in paths:
        assert get(e.port, p).status == 200  # none fails: the dead server's keys are retried elsewhere
    for p, was in before.items():
        now = [i for i, o in enumerate(os3[:2]) if o.count(p) > 0]
        assert len(now) == 1
        if was != dead:
            assert now == [was]  # only the dead server's keys moved


def test_retry_budget_caps_retries(origins, edges, path, uniq):
    (a,) = origins(1)
    bad = Resetter()
    try:
        env = {"EDGECORE_MAX_FAILS": "0", "EDGECORE_RETRY_BUDGET": "0.1"}
        e = edges(a.url, bad.url, env=env, path=path)
        n = 60
        statuses = [get(e.port, f"{uniq}/{i}").status for i in range(n)]
        retries = metric(e, "edgecore_upstream_retries_total", bad.authority)
        # half the requests meet the resetting server first; the budget allows 3 + 10% of the requests
        assert bad.accepted == n // 2
        assert retries <= 3 + 0.1 * n
        assert statuses.count(502) == n // 2 - retries
        assert statuses.count(200) == n // 2 + retries
    finally:
        bad.close()


def test_retry_budget_of_one_retries_every_reset(origins, edges, path, uniq):
    (a,) = origins(1)
    bad = Resetter()
    try:
        e = edges(a.url, bad.url, env={"EDGECORE_MAX_FAILS": "0", "EDGECORE_RETRY_BUDGET": "1"}, path=path)
        statuses = [get(e.port, f"{uniq}/{i}").status for i in range(20)]
        assert statuses == [200] * 20 and bad.accepted == 10
        # no retry for a request with a body (it may have reached the upstream)
        posts = [get(e.port, f"{uniq}/p{i}", method="POST", body=b"x").status for i in range(2)]
        assert sorted(posts) == [200, 502]
    finally:
        bad.close()


def test_max_upstream_requests_gives_503_with_retry_after(origins, edges, path, uniq):
    (a,) = origins(1)
    e = edges(a.url, env={"EDGECORE_MAX_UPSTREAM_REQUESTS": "2"}, path=path)
    get(e.port, f"{uniq}/warm")  # an idle pooled connection: the plain-miss path may take the next ones
    g = f"{uniq}-g"
    out: list = []
    held = [
        threading.Thread(target=lambda i=i: out.append(get(e.port, f"{uniq}/{i}?gate={g}"))) for i in range(2)
    ]
    for t in held:
        t.start()
    assert a.wait_count(f"{uniq}/", 3)
    r = get(e.port, f"{uniq}/third")
    assert r.status == 503 and r.header("retry-after") == "1"
    assert "upstream-overloaded" in r.cache_status
    assert a.count(f"{uniq}/third") == 0
    a.open_gate(g)
    for t in held:
        t.join(10)
    assert [x.status for x in out] == [200, 200]
    assert get(e.port, f"{uniq}/fourth").status == 200  # below the limit again


def test_readyz_and_metrics_show_upstream_health(origins, edges, path, uniq):
    (a,) = origins(1)
    dead = refusing()
    try:
        e = edges(a.url, dead.url, path=path)
        for i in range(4):
            assert get(e.port, f"{uniq}/{i}").status == 200
        assert wait_for(lambda: metric(e, "edgecore_upstream_up", dead.authority) == 0)
        assert metric(e, "edgecore_upstream_up", authority(a)) == 1
        r = e.admin("/readyz")
        assert r.status == 200  # readiness does not depend on upstreams by default
        assert f"upstream {authority(a)} up".encode() in r.body
        assert f"upstream {dead.authority} down".encode() in r.body
        assert metric(e, "edgecore_upstream_duration_seconds_count", authority(a)) >= 4
        assert metric(e, "edgecore_upstream_duration_seconds_count", dead.authority) == 0
        health = {h["upstream"]: h["up"] for h in e.stats()["upstream"]["health"]}
        assert health == {authority(a): True, dead.authority: False}
    finally:
        dead.close()


def test_ready_requires_upstream(edges, path):
    dead = refusing()
    try:
        env = {"EDGECORE_READY_REQUIRES_UPSTREAM": "true", "EDGECORE_HEALTH_CHECK_INTERVAL": "0.2"}
        e = edges(dead.url, env=env, path=path)
        assert wait_for(lambda: e.admin("/readyz").status == 503)
        r = e.admin("/readyz")
        assert b"no upstream reachable" in r.body and b"down" in r.body
        dead.listen()  # it comes up: TCP checks (no health_check_path) see it, two in a row
        assert wait_for(lambda: e.admin("/readyz").status == 200, timeout=15)
    finally:
        dead.close()


# -- selection without sockets


def _pool(**kw):  # type: ignore[no-untyped-def]
    from edgecore.config import build
    from edgecore.upstream import Pool

    ups = kw.pop("ups")
    tables = [{"url": u, "weight": w} for u, w in ups]
    loop = asyncio.new_event_loop()
    return Pool(build({"upstreams": tables, **kw}), loop), loop


def test_smooth_weighted_round_robin_sequence():
    # nginx's smooth weighted round-robin (ngx_http_upstream_get_peer): weights 5, 1, 1 give a a b a c a a
    pool, loop = _pool(ups=[("http://a:1", 5), ("http://b:1", 1), ("http://c:1", 1)])
    try:
        seq = "".join(pool.choose().upstream.host for _ in range(14))  # type: ignore[union-attr]
        assert seq == "aabacaa" * 2
        # a look without commit does not move it; a commit does
        s = pool.choose(commit=False)
        assert s is pool.choose(commit=False) and s.upstream.host == "a"  # type: ignore[union-attr]
    finally:
        pool.close()
        loop.close()


def test_ejected_servers_are_skipped_but_never_all():
    pool, loop = _pool(ups=[("http://a:1", 1), ("http://b:1", 1)], max_fails=2, fail_timeout=30)
    try:
        a, b = pool.servers
        from edgecore.errors import UpstreamError

        pool.failed(b, UpstreamError("x"))
        assert b.ejected_until == 0  # one failure of max_fails = 2
        pool.failed(b, UpstreamError("x"))
        assert b.ejected_until > 0
        assert {pool.choose().upstream.host for _ in range(6)} == {"a"}  # type: ignore[union-attr]
        pool.failed(a, UpstreamError("x"))
        pool.failed(a, UpstreamError("x"))
        # every server ejected: all of them are used again (never eject the last)
        assert {pool.choose().upstream.host for _ in range(6)} == {"a", "b"}  # type: ignore[union-attr]
        assert pool.choose(exclude=[a, b]) is None
    finally:
        pool.close()
        loop.close()


def test_rendezvous_moves_only_the_removed_servers_keys():
    pool, loop = _pool(ups=[(f"http://s{i}:1", 1) for i in range(4)], lb="consistent_hash")
    try:
        keys = [b"key-%d" % i for i in range(400)]
        before = {k: pool.choose(k) for k in keys}
        counts = {s.upstream.host: list(before.values()).count(s) for s in pool.servers}
        assert all(60 < n < 140 for n in counts.values()), counts  # spread about evenly
        gone = pool.servers[1]
        after = {k: pool.choose(k, exclude=[gone]) for k in keys}
        moved = [k for k in keys if after[k] is not before[k]]
        assert moved and all(before[k] is gone for k in moved)
        assert all(after[k] is before[k] for k in keys if before[k] is not gone)
    finally:
        pool.close()
        loop.close()


# the retry budget: (ratio, requests, retries asked) -> retries allowed (RETRY_BUDGET_MIN = 3)
BUDGET_TABLE = [
    (0.2, 100, 100, 20),
    (0.2, 10, 10, 3),  # the minimum
    (0.0, 100, 100, 0),  # no budget, no retries
    (1.0, 50, 50, 50),
    (0.1, 60, 60, 6),
]


@pytest.mark.parametrize(("ratio", "requests", "asked", "allowed"), BUDGET_TABLE)
def test_retry_budget(ratio, requests, asked, allowed):
    from edgecore.upstream import RetryBudget

    b = RetryBudget(ratio)
    for _ in range(requests):
        b.request(100.0)
    assert sum(b.allow(100.0) for _ in range(asked)) == allowed
    # a window later the old retries still count against the old requests; two windows later all is new
    b.request(130.0)
    assert b.allow(130.0) == (ratio > 0)


def test_a_killed_origin_resets_every_connection_it_accepted(origins):
    """The harness's kill is a real death: connections accepted while it dies (some not yet handed to a
    handler) are all reset or closed, none left open and silent (which a retrying edge would wait on)."""
    silent = 0
    for o in origins(5):  # five deaths: the race needs connections arriving as the origin dies
        socks = [socket.create_connection(("127.0.0.1", o.port), timeout=5) for _ in range(20)]
        o.kill()
        for s in socks:
            s.settimeout(2)
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert s.recv(100) == b""
            except TimeoutError:
                silent += 1
            except ConnectionError:
                pass  # reset: dead
            finally:
                s.close()
    assert silent == 0


def test_an_upstream_killed_under_load_fails_no_request(origins, edges, path, uniq):
    """Four clients keep requesting (uncacheable: every request goes upstream) while one of three origins
    dies: the requests it held are retried on another server (connect error or reset before any response
    byte), then it is ejected; no client sees an error."""
    os3 = origins(3)
    e = edges(*(o.url for o in os3), path=path)
    statuses: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(60):  # bounded in count; each request has the client's own timeout
            try:
                r = get(e.port, f"{uniq}/{n}/{i}?cc=no-store")
            except OSError as ex:
                with lock:
                    failures.append(ex)
                continue
            with lock:
                statuses.append(r.status)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(statuses) >= 40)  # under load before the kill
    os3[1].kill()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not failures and len(statuses) == 240
    assert statuses.count(200) == 240, sorted(set(statuses))
    assert sum(o.count(uniq) for o in (os3[0], os3[2])) >= 240 - os3[1].count(uniq)


def _conn_on_worker(e: Edge, worker: int, prefix: str) -> Conn:
    """A kept-alive client connection that worker `worker` serves (found by whose served count moves)."""
    for i in range(64):  # bounded: SO_REUSEPORT spreads new connections over the workers
        before = e.stats()["workers"]["requests"]
        c = Conn(e.port)
        c.request("GET", f"{prefix}/find{i}?cc=no-store")
        assert c.read_response().status == 200
        after = e.stats()["workers"]["requests"]
        if after[worker] != before[worker]:
            return c
        c.close()
    raise AssertionError(f"no connection reached worker {worker}")


def test_max_upstream_requests_counts_all_workers_together(origins, edges, path, uniq):
    """Two workers, a limit of 2: one request held upstream by each worker fills it, so a third on either
    worker is 503 (a per-worker count would still let it through)."""
    (a,) = origins(1)
    e = edges(a.url, env={"EDGECORE_MAX_UPSTREAM_REQUESTS": "2"}, path=path, workers=2)
    c0, c1, c0b = (_conn_on_worker(e, w, uniq) for w in (0, 1, 0))
    g = f"{uniq}-g"
    try:
        c0.request("GET", f"{uniq}/held0?gate={g}")
        c1.request("GET", f"{uniq}/held1?gate={g}")
        assert a.wait_count(f"{uniq}/held", 2)
        c0b.request("GET", f"{uniq}/third?cc=no-store")
        r = c0b.read_response()
        assert r.status == 503 and "upstream-overloaded" in r.cache_status
        assert a.count(f"{uniq}/third") == 0
        a.open_gate(g)
        assert c0.read_response().status == 200 and c1.read_response().status == 200
        c0b.request("GET", f"{uniq}/fourth?cc=no-store")
        assert c0b.read_response().status == 200  # below the limit again
    finally:
        for c in (c0, c1, c0b):
            c.close()
