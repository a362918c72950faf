"""End to end: several worker processes on one port sharing one cache; a killed worker is replaced;
SIGTERM finishes in-flight requests and exits 0."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from client import Edge, get


@pytest.fixture(scope="module")
def two(origin, path):
    e = Edge(origin.url, workers=2, path=path)
    yield e
    e.stop()


def test_two_workers_share_one_cache(two, origin, uniq):
    t = f"{uniq}?cc=max-age=60&size=1000"
    get(two.port, t)
    rs = [get(two.port, t) for _ in range(24)]  # new connection each: spread over both workers
    assert all(r.cache_status.startswith("edgecore; hit") for r in rs)
    assert origin.count(uniq) == 1
    served = two.stats()["workers"]["requests"]
    assert len(served) == 2 and all(n > 0 for n in served), served


def test_killed_worker_is_replaced(two, uniq):
    pids = two.stats()["workers"]["pids"]
    assert len(pids) == 2 and all(pids)
    os.kill(pids[0], signal.SIGKILL)
    s = two.wait_stat(lambda s: s["workers"]["ready"] == 2 and pids[0] not in s["workers"]["pids"])
    assert s["workers"]["ready"] == 2
    assert pids[0] not in s["workers"]["pids"]
    for i in range(10):
        assert get(two.port, f"{uniq}/{i}?body=up").body == b"up"


def test_sigterm_finishes_in_flight_requests_and_exits_0(origin, uniq, path):
    e = Edge(origin.url, path=path)
    out = {}

    def slow() -> None:
        out["r"] = get(e.port, f"{uniq}?gate={uniq}-term&body=finished")

    th = threading.Thread(target=slow)
    th.start()
    assert origin.wait_count(uniq, 1)
    e.proc.send_signal(signal.SIGTERM)
    ready = None
    for _ in range(200):
        ready = e.admin("/readyz")
        if ready.status == 503:
            break
        time.sleep(0.01)
    assert ready is not None and ready.status == 503
    origin.open_gate(f"{uniq}-term")
    th.join(10)
    assert out["r"].status == 200 and out["r"].body == b"finished"
    assert e.stop() == 0


def test_concurrent_misses_across_workers_send_one_upstream_request(two, origin, uniq):
    """The miss lock lives in the shared cache, so coalescing holds across worker processes too."""
    n = 16
    gate = f"{uniq}-g"
    t = f"{uniq}?cc=max-age=60&size=800&gate={gate}"
    out: list = [None] * n

    def one(i: int) -> None:
        out[i] = get(two.port, t)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    assert origin.wait_count(uniq, 1)
    s = two.wait_stat(lambda s: s["coalescing"]["waiting"] >= n - 1)
    assert s["coalescing"]["waiting"] == n - 1
    served = s["workers"]["requests"]
    origin.open_gate(gate)
    for th in threads:
        th.join(10)
    assert all(r is not None and r.status == 200 for r in out)
    assert origin.count(uniq) == 1
    assert sum("collapsed" in r.cache_status for r in out) == n - 1
    after = two.stats()["workers"]["requests"]
    assert all(a > b for a, b in zip(after, served, strict=True)), (served, after)  # both workers took part
