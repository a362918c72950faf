"""The invalidation bus (edgecore/bus.py, edgecore/invalidation.py, docs/invalidation.md): a real redis-server
started here (free loopback port, --appendonly yes, a tmp dir, stopped after), three real `edgecore serve`
nodes on one stream in front of one real origin, on both paths.

- fan-out: url, prefix, tag, tenant and soft purges on one node reach every node (each misses afterwards);
  the answer carries the XADD entry's id, which is in the stream;
- lease: a node whose bus reader is paused (SIGSTOP of its admin process) stops serving hits within the
  lease (revalidated, `detail=unverified`) and hits again once resumed; a whole node paused while purges
  happen never serves a purged entry as a hit after it resumes, catches up, then hits again;
- malformed messages are skipped and counted; a message XADDed by an origin (a raw client) is applied;
- Redis stopped: a purge is answered 503 (within the 2 s bound) and still applied on its node; the other
  nodes revalidate after the lease; /readyz stays 200 and says the bus is behind; Redis restarted
  (appendonly): nothing lost, the nodes catch up and hit again;
- a stream trimmed past a paused node: on resume it flushes its whole cache (readiness 503 while it does);
- a restarted node goes on from the id saved in its state file (what was published while it was down is
  applied, nothing missed).
Plus the sans-IO parts: the message format (decode/encode/from_request) and the gap rule, as tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest
import redis
from client import Edge, closed_port, get, wait_for

from edgecore import config, invalidation
from edgecore.bus import Bus
from edgecore.invalidation import Invalidation, MalformedMessage
from edgecore.metrics import C_LEASE_UNTIL, SharedCounters

REDIS_SERVER = shutil.which("redis-server")
LEASE = 1.0


class RedisServer:
    """A redis-server of our own: loopback, a port found free, append-only file in `folder`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):  # a port found free can be taken before redis binds it: try another
            self.port = closed_port()
            if self.start():
                return
        raise RuntimeError("redis-server did not start on a free port in 5 tries")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> bool:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.folder,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                os.path.join(self.folder, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ok = wait_for(lambda: self.proc is not None and (self.proc.poll() is not None or self._pings()), 10)
        return ok and self.proc.poll() is None

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    if REDIS_SERVER is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is missing, and CI installs it (.ci/run): the bus tests must run")
        pytest.skip("redis-server is not installed here (apt-get install redis-server); CI installs it")
    r = RedisServer(str(tmp_path_factory.mktemp("redis")))
    yield r
    r.stop()


class Cluster:
    def __init__(self, redis_server: RedisServer, origin: Any, path: str, folder: str) -> None:
        self.redis = redis_server
        self.stream = f"edgecore:test:{path}:{os.getpid()}"
        self.nodes: list[Edge] = []
        for i in range(3):
            env = {
                "EDGECORE_NODE_ID": f"node{i}",
                "EDGECORE_INVALIDATION_URL": redis_server.url,
                "EDGECORE_INVALIDATION_STREAM": self.stream,
                "EDGECORE_INVALIDATION_LEASE": str(LEASE),
                "EDGECORE_INVALIDATION_RETENTION": "3600",
                "EDGECORE_INVALIDATION_STATE": os.path.join(folder, f"node{i}.state"),
            }
            self.nodes.append(Edge(origin.url, path=path, env=env))
        for n in self.nodes:
            assert wait_for(lambda n=n: bus_stats(n)["lag_seconds"] is not None, 20), n.lines[-20:]

    def stop(self) -> None:
        for n in self.nodes:
            for pid in node_pids(n):  # (a test that failed while one was stopped)
                with _suppress():
                    os.kill(pid, signal.SIGCONT)
            n.stop()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


@pytest.fixture(scope="module")
def cluster(redis_server, origin, path, tmp_path_factory):
    c = Cluster(redis_server, origin, path, str(tmp_path_factory.mktemp("nodes")))
    yield c
    c.stop()


def bus_stats(n: Edge) -> dict[str, Any]:
    return n.stats()["invalidation"]


def node_pids(n: Edge) -> list[int]:
    return [n.proc.pid, *n.worker_pids()] if n.proc.poll() is None else []


def admin_pid(n: Edge) -> int:
    workers = set(n.stats()["workers"]["pids"])
    others = [p for p in n.worker_pids() if p not in workers]
    assert len(others) == 1, (others, workers)
    return others[0]


def purge(n: Edge, **body: Any) -> tuple[int, dict[str, Any]]:
    r = n.admin("/purge", "POST", json.dumps(body).encode())
    return r.status, json.loads(r.body)


def hit(n: Edge, target: str) -> bool:
    return get(n.port, target).cache_status.startswith("edgecore; hit")


def warm(c: Cluster, *targets: str) -> None:
    """Every target stored and hit on every node (a hit needs the node's lease confirmed)."""
    for n in c.nodes:
        for t in targets:
            get(n.port, t)
            assert wait_for(lambda n=n, t=t: hit(n, t), 10), (t, n.lines[-10:])


def misses_soon(n: Edge, target: str, timeout: float = 10.0) -> bool:
    """The next answers for target on n become a non-hit within timeout (the purge arrived)."""
    return wait_for(lambda: not hit(n, target), timeout)


def in_stream(c: Cluster, eid: str) -> dict[bytes, bytes]:
    entries = c.redis.client().xrange(c.stream, eid, eid)
    assert len(entries) == 1, entries
    return entries[0][1]


# ------------------------------------------------------------------------------------------ fan-out


@pytest.mark.parametrize("kind", ["url", "prefix", "tag", "soft"])
def test_purge_fans_out_to_every_node(cluster, origin, uniq, kind):
    t = f"{uniq}/p/a?cc=max-age=600&hdr=Surrogate-Key:{uniq[1:]}-k"
    keep = f"{uniq}/q?cc=max-age=600"
    warm(cluster, t, keep)
    body: dict[str, Any] = {
        "url": {"url": f"http://test.local{t}"},
        "prefix": {"prefix": f"http://test.local{uniq}/p/"},
        "tag": {"tag": f"{uniq[1:]}-k"},
        "soft": {"url": f"http://test.local{t}", "soft": True},
    }[kind]
    before = origin.count(f"{uniq}/p/")
    status, ans = purge(cluster.nodes[0], **body)
    assert status == 200 and ans["published"] is True and ans["purged"] == 1, ans
    fields = in_stream(cluster, ans["id"])
    assert fields[b"v"] == b"1" and fields[b"node"] == b"node0"
    assert (fields.get(b"soft") == b"1") == (kind == "soft")
    assert not hit(cluster.nodes[0], t)  # applied on its node before the answer
    for n in cluster.nodes[1:]:
        assert misses_soon(n, t), n.lines[-10:]
    # every node went to the origin for it again; the entry that was not purged is still a hit everywhere
    assert origin.count(f"{uniq}/p/") >= before + 3
    for n in cluster.nodes:
        assert wait_for(lambda n=n: hit(n, keep), 10)


def test_tenant_purge_is_published_and_applied_by_every_node(cluster):
    applied = [bus_stats(n)["applied"] for n in cluster.nodes]
    status, ans = purge(cluster.nodes[1], tenant="acme")
    assert status == 200 and ans["published"] is True
    assert in_stream(cluster, ans["id"])[b"kind"] == b"tenant"
    for i, n in enumerate(cluster.nodes):
        if i != 1:
            assert wait_for(lambda n=n, i=i: bus_stats(n)["applied"] > applied[i], 10)
    assert wait_for(lambda: bus_stats(cluster.nodes[1])["own"] >= 1, 10)  # its own: skipped, counted


def test_message_published_by_an_origin_is_applied_and_malformed_ones_are_skipped(cluster, uniq):
    t = f"{uniq}?cc=max-age=600"
    warm(cluster, t)
    bad = [bus_stats(n)["malformed"] for n in cluster.nodes]
    r = cluster.redis.client()
    r.xadd(cluster.stream, {"kind": "url", "value": "http://test.local/x"})  # no version
    r.xadd(cluster.stream, {"v": "1", "kind": "explode", "value": "x"})  # unknown kind
    r.xadd(cluster.stream, {"v": "1", "kind": "url", "value": "not a url"})
    r.xadd(cluster.stream, {"v": "9", "kind": "url", "value": "http://test.local/x"})  # a later version
    # an origin's own message (no node field): applied by every node
    r.xadd(cluster.stream, {"v": "1", "kind": "url", "value": f"http://test.local{t}"})
    for i, n in enumerate(cluster.nodes):
        assert misses_soon(n, t)
        assert wait_for(lambda n=n, i=i: bus_stats(n)["malformed"] == bad[i] + 4, 10), bus_stats(n)
        assert bus_stats(n)["connected"]  # the reader lives on
    m = cluster.nodes[0].admin("/metrics").body.decode()
    assert 'edgecore_invalidation_messages_total{result="malformed"}' in m
    assert "edgecore_invalidation_lag_seconds" in m


# ------------------------------------------------------------------------------------------ lease


def test_a_node_whose_reader_is_paused_revalidates_after_the_lease(cluster, origin, uniq):
    n = cluster.nodes[2]
    t = f"{uniq}?cc=max-age=600"  # (no "%": a target the C hit path takes)
    origin.override(uniq, etag='"e1"')
    warm(cluster, t)
    pid = admin_pid(n)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        assert wait_for(lambda: time.time() > t0 + LEASE + 0.3, LEASE + 2)
        before = origin.count(uniq)
        r = get(n.port, t)
        # a conditional request to the origin, answered 304: served, but not as a hit
        assert r.status == 200 and "detail=unverified" in r.cache_status, r.cache_status
        assert "fwd=stale" in r.cache_status and "fwd-status=304" in r.cache_status
        assert origin.count(uniq) == before + 1
        assert origin.requests_for(uniq)[-1].header("if-none-match") == '"e1"'
        assert wait_for(lambda: hit(cluster.nodes[0], t), 10)  # the others still have their lease
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: hit(n, t), 10)  # caught up: hits again


def test_a_paused_node_never_serves_a_purged_entry_then_catches_up(cluster, origin, uniq):
    n = cluster.nodes[1]
    ts = [f"{uniq}/{i}?cc=max-age=600" for i in range(3)]
    warm(cluster, *ts)
    pids = node_pids(n)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        t0 = time.time()
        for t in ts:
            status, ans = purge(cluster.nodes[0], url=f"http://test.local{t}")
            assert status == 200 and ans["published"], ans
        assert wait_for(lambda: time.time() > t0 + LEASE + 0.3, LEASE + 5)
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    # at once after resuming (before or after its reader caught up): never a hit
    for t in ts:
        assert not hit(n, t)
    assert wait_for(
        lambda: bus_stats(n)["lag_seconds"] is not None and bus_stats(n)["lag_seconds"] < LEASE, 10
    )
    for t in ts:
        assert wait_for(lambda t=t: hit(n, t), 10)


# ------------------------------------------------------------------------------------------ outages


def test_redis_down_purges_503_applied_locally_then_restart_catches_up(cluster, origin, uniq):
    a, b = cluster.nodes[0], cluster.nodes[1]
    t = f"{uniq}/a?cc=max-age=600"
    u = f"{uniq}/b?cc=max-age=600"
    warm(cluster, t, u)
    status, ans = purge(a, url=f"http://test.local{u}")  # published before the outage
    assert status == 200
    kept_id = ans["id"]
    assert misses_soon(b, u)
    cluster.redis.stop()
    try:
        t0 = time.monotonic()
        status, ans = purge(a, url=f"http://test.local{t}")
        elapsed = time.monotonic() - t0
        assert status == 503 and ans["published"] is False and ans["purged"] == 1, ans
        assert elapsed < 2.0 + 3.0, elapsed  # bounded by the 2 s publish timeout (and a slow machine)
        assert not hit(a, t)  # applied on its own node
        # the other nodes cannot confirm the stream: after the lease, no hits, but still ready
        t1 = time.time()
        assert wait_for(lambda: time.time() > t1 + LEASE + 0.3, LEASE + 2)
        r = get(b.port, t)
        assert not r.cache_status.startswith("edgecore; hit") and "detail=unverified" in r.cache_status
        ready = b.admin("/readyz")
        assert ready.status == 200 and b"behind" in ready.body, ready.body
        assert not bus_stats(b)["connected"] and bus_stats(b)["behind"]
        m = b.admin("/metrics").body.decode()
        lag = next(x for x in m.splitlines() if x.startswith("edgecore_invalidation_lag_seconds "))
        assert float(lag.split()[1]) > LEASE
    finally:
        assert cluster.redis.start()
    # appendonly: what was in the stream is still there; every node reconnects and hits again
    assert in_stream(cluster, kept_id)[b"kind"] == b"url"
    for n in cluster.nodes:
        assert wait_for(lambda n=n: bus_stats(n)["connected"] and not bus_stats(n)["behind"], 15), bus_stats(
            n
        )
        get(n.port, t)
        assert wait_for(lambda n=n: hit(n, t), 10)
    assert bus_stats(b)["gaps"] == 0  # nothing was lost, so nothing to flush


def test_stream_trimmed_past_a_paused_node_flushes_it(cluster, origin, uniq):
    n = cluster.nodes[2]
    t = f"{uniq}/gone?cc=max-age=600"
    other = f"{uniq}/other?cc=max-age=600"  # never purged: dropped all the same, it cannot be proved fresh
    warm(cluster, t, other)
    gaps = [bus_stats(m)["gaps"] for m in cluster.nodes]
    pids = node_pids(n)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        # past its reader's XREAD BLOCK (a quarter of the lease): a read already blocked when it was paused
        # would get the purge delivered into its socket before the trim, and rightly see no gap
        t0 = time.time()
        assert wait_for(lambda: time.time() > t0 + LEASE, LEASE + 2)
        status, ans = purge(cluster.nodes[0], url=f"http://test.local{t}")
        assert status == 200, ans
        # node1 has read it (else it too would find it trimmed)
        assert wait_for(lambda: bus_stats(cluster.nodes[1])["last_id"] == ans["id"], 10)
        r = cluster.redis.client()
        # every entry up to and including that purge is trimmed (exact MINID trimming)
        ms, seq = (int(x) for x in ans["id"].split("-"))
        r.xtrim(cluster.stream, minid=f"{ms}-{seq + 1}", approximate=False)
        assert not r.xrange(cluster.stream, ans["id"], ans["id"])
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    assert not hit(n, t)
    assert wait_for(lambda: bus_stats(n)["gaps"] == gaps[2] + 1, 15), bus_stats(n)
    assert wait_for(lambda: n.admin("/readyz").status == 200, 10)
    before = origin.count(f"{uniq}/other")
    assert not hit(n, other)  # flushed: fetched again
    assert origin.count(f"{uniq}/other") == before + 1
    assert any("invalidation gap" in line for line in n.lines)
    for i, m in enumerate(cluster.nodes[:2]):
        assert wait_for(lambda m=m: hit(m, other), 10)  # the others read everything: nothing flushed
        assert bus_stats(m)["gaps"] == gaps[i]


def test_a_restarted_node_goes_on_from_its_saved_id(cluster, origin, path):
    old = cluster.nodes[2]
    env = dict(old.env)
    last = bus_stats(old)["last_id"]
    old.stop()
    with open(env["EDGECORE_INVALIDATION_STATE"]) as f:
        saved = json.load(f)
    assert saved["stream"] == cluster.stream and saved["id"] == last
    ids = []
    for i in range(3):  # published while it is down
        status, ans = purge(cluster.nodes[0], tag=f"while-down-{i}")
        assert status == 200
        ids.append(ans["id"])
    new = Edge(origin.url, path=path, env=env)
    cluster.nodes[2] = new
    assert wait_for(lambda: bus_stats(new)["last_id"] == ids[-1], 15), bus_stats(new)
    assert bus_stats(new)["applied"] == 3 and bus_stats(new)["gaps"] == 0  # read from its id: none missed


# ------------------------------------------------------------------------------------------ without a bus


def test_without_a_bus_there_is_no_lag_metric_and_purge_answers_as_before(edge, uniq):
    m = edge.admin("/metrics").body.decode()
    assert "edgecore_invalidation_lag_seconds" not in m
    assert "invalidation" not in edge.stats()
    status, ans = purge(edge, url=f"http://test.local{uniq}")
    assert status == 200 and ans == {"purged": 0}


# ------------------------------------------------------------------------------------------ sans-IO tables

# the message format, v=1 (README "Invalidation bus", docs/invalidation.md "Message format")
DECODE_ROWS = [
    ({b"v": b"1", b"kind": b"url", b"value": b"http://a/x"}, Invalidation("url", "http://a/x")),
    (
        {b"v": b"1", b"kind": b"prefix", b"value": b"https://a/p/", b"node": b"n1", b"soft": b"1"},
        Invalidation("prefix", "https://a/p/", None, True, "n1"),
    ),
    ({b"v": b"1", b"kind": b"tag", b"value": b"t", b"tenant": b"acme"}, Invalidation("tag", "t", "acme")),
    ({b"v": b"1", b"kind": b"tenant", b"value": b"acme"}, Invalidation("tenant", "acme")),
    (
        {b"v": b"1", b"kind": b"revoke", b"value": b"acme", b"node": b"n2"},
        Invalidation("revoke", "acme", None, False, "n2"),
    ),
    ({b"v": b"1", b"kind": b"restore", b"value": b"acme"}, Invalidation("restore", "acme")),
    ({b"kind": b"url", b"value": b"http://a/x"}, MalformedMessage),  # no version
    ({b"v": b"2", b"kind": b"url", b"value": b"http://a/x"}, MalformedMessage),  # unknown version
    ({b"v": b"1", b"kind": b"ban", b"value": b"x"}, MalformedMessage),
    ({b"v": b"1", b"kind": b"url", b"value": b""}, MalformedMessage),
    ({b"v": b"1", b"kind": b"url", b"value": b"/relative"}, MalformedMessage),
    ({b"v": b"1", b"kind": b"tag", b"value": b"\xff"}, MalformedMessage),
    ({b"v": b"1", b"kind": b"tag", b"value": b"t", b"soft": b"maybe"}, MalformedMessage),
]


@pytest.mark.parametrize(("fields", "want"), DECODE_ROWS)
def test_decode(fields, want):
    if want is MalformedMessage:
        with pytest.raises(MalformedMessage):
            invalidation.decode(fields)
    else:
        got = invalidation.decode(fields)
        assert got == want
        # and what we write reads back the same
        enc = {k.encode(): v.encode() for k, v in invalidation.encode(got).items()}
        assert invalidation.decode(enc) == got


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"url": "http://a/x"}, Invalidation("url", "http://a/x", None, False, "me")),
        ({"tag": "t", "soft": True}, Invalidation("tag", "t", None, True, "me")),
        (
            {"prefix": "http://a/p", "tenant": "acme"},
            Invalidation("prefix", "http://a/p", "acme", False, "me"),
        ),
        ({"tenant": "acme"}, Invalidation("tenant", "acme", None, False, "me")),
        ({"url": "a", "tag": "b"}, ValueError),
        ({}, ValueError),
        ({"tag": ""}, ValueError),
        ({"tag": "t", "soft": "yes"}, ValueError),
        ({"url": "ftp://a/x"}, ValueError),
        ([1], ValueError),
    ],
)
def test_from_request(body, want):
    if want is ValueError:
        with pytest.raises(ValueError):
            invalidation.from_request(body, "me")
    else:
        assert invalidation.from_request(body, "me") == want


def _bus(tmp_path: Any, cache: Any = None) -> Bus:
    cfg = config.build(
        {
            "invalidation_url": "redis://127.0.0.1:1/0",
            "node_id": "me",
            "invalidation_state": str(tmp_path / "s"),
        },
        require_upstream=False,
    )
    return Bus(cfg, cache, SharedCounters(1), None)  # type: ignore[arg-type]


# (read position: last id, entries-added at it) x XINFO STREAM -> gap? (docs/invalidation.md "Trimmed stream")
GAP_ROWS = [
    ((b"5-0", 5), {"added": 5, "last": b"5-0", "first": b"1-0", "length": 5}, False),  # at the end
    ((b"5-0", 5), {"added": 8, "last": b"8-0", "first": b"1-0", "length": 8}, False),  # behind, all there
    ((b"5-0", 5), {"added": 8, "last": b"8-0", "first": b"5-0", "length": 4}, False),  # trimmed up to us
    (
        (b"5-0", 5),
        {"added": 8, "last": b"8-0", "first": b"6-0", "length": 3},
        False,
    ),  # trimmed before us only
    ((b"5-0", 5), {"added": 8, "last": b"8-0", "first": b"7-0", "length": 2}, True),  # 6-0 was trimmed
    ((b"5-0", 5), {"added": 8, "last": b"8-0", "first": None, "length": 0}, True),  # all trimmed
    ((b"5-0", 5), {"added": 0, "last": b"0-0", "first": None, "length": 0}, True),  # the stream was reset
]


@pytest.mark.parametrize(("pos", "info", "gap"), GAP_ROWS)
def test_gap_rule(tmp_path, pos, info, gap):
    b = _bus(tmp_path)
    b.last_id, b.read_count = pos
    assert bool(b._gap(info)) is gap


def test_not_ready_while_a_gap_flush_runs_and_the_lease_word(tmp_path):
    seen = []

    class Cache:
        def purge_prefix(self, prefix: bytes) -> int:
            seen.append((prefix, b.readiness()))
            return 7

    b = _bus(tmp_path, Cache())
    b.last_id, b.read_count = b"5-0", 5
    info = {"added": 8, "last": b"8-0", "first": None, "length": 0}
    asyncio.run(b._flush(b._gap(info), info))
    assert seen[0][0] == b"" and seen[0][1][0] is False and "catching up" in seen[0][1][1]
    assert b.readiness()[0] is True and (b.last_id, b.read_count) == (b"8-0", 8)
    assert json.loads((tmp_path / "s").read_text()) == {"stream": b.stream, "id": "8-0", "count": 8}
    # the lease: the shared word holds (confirmation + lease) in microseconds, and never moves back
    b._confirm(1000.0)
    assert b.counters.words[C_LEASE_UNTIL] == int((1000.0 + b.lease) * 1e6)
    b._confirm(900.0)
    assert b.counters.words[C_LEASE_UNTIL] == int((1000.0 + b.lease) * 1e6)
    # a restarted node starts from the saved id
    assert (_bus(tmp_path).last_id, _bus(tmp_path).read_count) == (b"8-0", 8)


def test_revocation_sets_the_revoked_hash_and_a_reconnect_hands_it_to_the_hook(redis_server, tmp_path):
    cfg = config.build(
        {
            "invalidation_url": redis_server.url,
            "node_id": "me",
            "invalidation_stream": f"edgecore:test:revoked:{os.getpid()}",
        },
        require_upstream=False,
    )

    class Cache:
        def purge_prefix(self, prefix: bytes) -> int:
            return 0

    got: list[set[str]] = []

    async def run() -> None:
        b = Bus(cfg, Cache(), SharedCounters(1), None)  # type: ignore[arg-type]
        try:
            eid = await b.publish(Invalidation("revoke", "acme", origin_node="me"))
            await b.publish(Invalidation("revoke", "beta", origin_node="me"))
            await b.publish(Invalidation("restore", "beta", origin_node="me"))
            assert await b.read_revoked() == {"acme"}
            raw = redis_server.client().xrange(cfg.invalidation_stream, eid, eid)
            assert raw[0][1] == {b"v": b"1", b"kind": b"revoke", b"value": b"acme", b"node": b"me"}
            await b.set_revoked("gamma")
            await b.clear_revoked("acme")
            invalidation.on_revoked_set = got.append
            b.start(asyncio.get_running_loop())
            for _ in range(200):  # the reader connects and hands the set over (bounded)
                if got and b.confirmed:
                    break
                await asyncio.sleep(0.02)
        finally:
            invalidation.on_revoked_set = None
            await b.stop()

    asyncio.run(run())
    assert got == [{"gamma"}]


def test_admin_answers_pipelined_requests_in_order_behind_a_published_purge(cluster):
    from client import Conn

    n = cluster.nodes[0]
    c = Conn(n.admin_port)
    try:
        body = json.dumps({"tag": "pipelined"}).encode()
        c.send(
            b"POST /purge HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first, second = c.read_response(), c.read_response()
    finally:
        c.close()
    assert first.status == 200 and json.loads(first.body)["published"] is True
    assert second.status == 200 and second.body == b"ok\n"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"invalidation_url": "http://x:1"}, "invalidation_url"),
        ({"invalidation_url": "redis://x:1/zero"}, "invalidation_url"),
        ({"invalidation_url": "redis://x:99999/0"}, "invalidation_url"),
        ({"invalidation_lease": 0}, "invalidation_lease"),
        ({"invalidation_lease": 60, "invalidation_retention": 30}, "invalidation_lease"),
        ({"invalidation_retention": 0.5}, "invalidation_retention"),
        ({"invalidation_stream": ""}, "invalidation_stream"),
        ({"node_id": "a b"}, "node_id"),
        ({"invalidation_state": "/nonexistent-folder/x"}, "invalidation_state"),
    ],
)
def test_config_errors_name_the_key(values, key):
    with pytest.raises(config.ConfigErrors) as e:
        config.build(values, require_upstream=False)
    assert [p.key for p in e.value.problems] == [key], e.value


def test_reader_counts_applied_own_malformed_and_failed_apart(tmp_path):
    class Cache:
        def delete(self, key: bytes) -> bool:
            if b"boom" in key:
                raise ValueError("the cache refused")
            return True

    b = _bus(tmp_path, Cache())
    b.scope = invalidation.Scope(config_key_opts())
    b.last_id, b.read_count = b"1-0", 1
    url = {b"v": b"1", b"kind": b"url"}
    b._apply_batch(
        [
            (b"2-0", {**url, b"value": b"http://a/x", b"node": b"other"}),  # applied
            (b"3-0", {**url, b"value": b"http://a/x", b"node": b"me"}),  # its own: skipped
            (b"4-0", {**url, b"value": b"nope"}),  # malformed
            (b"5-0", {**url, b"value": b"http://a/boom"}),  # apply() raised: failed, never "applied"
        ]
    )
    s = b.stats
    assert (s["applied"], s["own"], s["malformed"], s["failed"]) == (1, 1, 1, 1)
    assert (b.last_id, b.read_count) == (b"5-0", 5)  # each read once, none read again


def config_key_opts() -> Any:
    from edgecore import keys

    return keys.options_for(config.build({}, require_upstream=False))


def test_revoke_and_restore_messages_apply_through_the_tenant_table(tmp_path):
    """A revoke read from the bus is applied as POST /tenants/NAME/revoke is here: the tenant flagged in the
    shared table (nothing stored for it), its entries purged, the state file written; restore undoes it."""
    from edgecore import tenants
    from edgecore.cache import Cache

    cache = Cache(8 << 20, 1 << 20)
    tid = tenants.tenant_id("acme")
    now = time.time()
    assert cache.store(b"k-acme", b"v" * 100, now, now + 60, 1, tid)
    assert cache.store(b"k-other", b"v" * 100, now, now + 60, 1, tenants.tenant_id("other"))
    state = tenants.State(str(tmp_path / "revoked.json"))
    scope = invalidation.Scope(config_key_opts(), state=state)
    assert invalidation.apply(cache, Invalidation("revoke", "acme", origin_node="n2"), scope) == 1
    assert cache.tenant_revoked(tid) and state.revoked == {"acme"}
    assert cache.lookup(b"k-acme", now) is None and cache.lookup(b"k-other", now) is not None
    assert tenants.State(str(tmp_path / "revoked.json")).revoked == {"acme"}  # survives a restart
    assert invalidation.apply(cache, Invalidation("restore", "acme"), scope) == 0
    assert not cache.tenant_revoked(tid) and state.revoked == set()
    cache.close()


# ------------------------------------------------------------------ tenants and regions across nodes
class TenantCluster:
    """Three nodes on one stream in two regions (eu, eu, us), tenant "acme" stored only in eu, tenancy from
    X-Tenant; each node's revocation state in its own file."""

    def __init__(self, redis_server: RedisServer, origin: Any, path: str, folder: str) -> None:
        self.redis = redis_server
        self.stream = f"edgecore:tenants:{path}:{os.getpid()}"
        self.folder = folder
        self.origin, self.path = origin, path
        self.nodes: list[Edge] = [self.start(i) for i in range(3)]

    def start(self, i: int) -> Edge:
        cfg = os.path.join(self.folder, f"node{i}.toml")
        with open(cfg, "w") as f:
            f.write(
                f'region = "{"us" if i == 2 else "eu"}"\ntenant_header = "X-Tenant"\n'
                f'tenant_state_file = "{os.path.join(self.folder, f"node{i}.revoked")}"\n'
                '[tenants.acme]\nregions = ["eu"]\n'
            )
        env = {
            "EDGECORE_NODE_ID": f"tnode{i}",
            "EDGECORE_INVALIDATION_URL": self.redis.url,
            "EDGECORE_INVALIDATION_STREAM": self.stream,
            "EDGECORE_INVALIDATION_LEASE": str(LEASE),
            "EDGECORE_INVALIDATION_RETENTION": "3600",
            "EDGECORE_INVALIDATION_STATE": os.path.join(self.folder, f"node{i}.state"),
        }
        n = Edge(self.origin.url, path=self.path, env=env, args=["--config", cfg])
        assert wait_for(lambda: bus_stats(n)["lag_seconds"] is not None, 20), n.lines[-20:]
        return n

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _as(n: Edge, target: str, tenant: str) -> str:
    return get(n.port, target, {"X-Tenant": tenant}).cache_status


def test_tenants_residency_and_revocation_across_nodes_and_restarts(
    redis_server, origin, path, uniq, tmp_path
):
    c = TenantCluster(redis_server, origin, path, str(tmp_path))
    try:
        eu0, eu1, us = c.nodes
        t = f"{uniq}/t?cc=max-age=600"
        # residency: acme is stored in eu only; in us it passes through, uncached
        for n in (eu0, eu1):
            _as(n, t, "acme")
            assert wait_for(lambda n=n: _as(n, t, "acme").startswith("edgecore; hit"), 10)
        assert "detail=residency" in _as(us, t, "acme")
        assert "detail=residency" in _as(us, t, "acme")
        _as(us, t, "other")
        assert _as(us, t, "other").startswith("edgecore; hit")  # another tenant is stored in us
        # revoked on one node: on every node at once, through the bus (and the hash beside the stream)
        r = eu0.admin("/tenants/acme/revoke", "POST")
        ans = json.loads(r.body)
        assert r.status == 200 and ans["revoked"] is True and ans["published"] is True and ans["purged"] == 1
        assert in_stream(c, ans["id"])[b"kind"] == b"revoke"
        assert c.redis.client().hexists(c.stream + ":revoked", "acme")
        assert wait_for(lambda: "detail=revoked" in _as(eu1, t, "acme"), 10)
        assert "detail=revoked" in _as(eu0, t, "acme")
        assert json.loads(eu1.admin("/tenants").body)["tenants"]["acme"]["revoked"] is True
        # a restart keeps it (its state file), and a node that was not there learns it from the hash
        eu1.stop()
        c.nodes[1] = eu1 = c.start(1)
        assert "detail=revoked" in _as(eu1, t, "acme")
        state2 = os.path.join(c.folder, "node2.revoked")
        us.stop()
        if os.path.exists(state2):  # (it was told over the bus; now it must learn it from the hash alone)
            os.unlink(state2)
        c.nodes[2] = us = c.start(2)
        assert wait_for(lambda: json.loads(us.admin("/tenants").body)["tenants"]["acme"]["revoked"], 10)
        # restored on one node: every node stores it again
        r = eu1.admin("/tenants/acme/restore", "POST")
        assert r.status == 200 and json.loads(r.body)["published"] is True
        assert wait_for(lambda: not json.loads(eu0.admin("/tenants").body)["tenants"]["acme"]["revoked"], 10)
        _as(eu0, t, "acme")
        assert wait_for(lambda: _as(eu0, t, "acme").startswith("edgecore; hit"), 10)
        assert not c.redis.client().hexists(c.stream + ":revoked", "acme")
    finally:
        c.stop()
