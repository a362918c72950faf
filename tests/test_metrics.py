"""End to end: the metrics an on-call dashboard reads (INTERFACE.md /metrics; issue 12 point 6): responses by
status class (counted on both paths, the C hit path included), open connections, build info, worker restarts.
Each test reads the figures as a scrape would, from a real `edgecore serve`."""

from __future__ import annotations

import os
import signal

from client import Conn, Edge, get, wait_for


def scrape(edge: Edge) -> dict[str, float]:
    """Every sample of /metrics: `name{labels}` -> value."""
    out = {}
    for line in edge.admin("/metrics").body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _classes(m: dict[str, float]) -> dict[str, float]:
    return {
        c: m[f'edgecore_responses_total{{status_class="{c}"}}'] for c in ("1xx", "2xx", "3xx", "4xx", "5xx")
    }


def test_responses_are_counted_by_status_class_on_every_path(edge, uniq):
    """Hits (the C path's too), misses, a stored 404, a 301 and edgecore's own 400: each in its class."""
    before = _classes(scrape(edge))
    fresh = f"{uniq}/ok?cc=max-age=60"
    for _ in range(3):  # a miss, then two hits (answered in C on the fast path)
        assert get(edge.port, fresh).status == 200
    assert get(edge.port, fresh).cache_status.startswith("edgecore; hit")
    gone = f"{uniq}/gone?status=404&cc=max-age=60"
    assert get(edge.port, gone).status == 404
    assert get(edge.port, gone).status == 404  # a stored 404 served as a hit
    assert get(edge.port, f"{uniq}/moved?status=301&hdr=Location:/x").status == 301
    c = Conn(edge.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # two Host fields: 400
        assert c.read_response().status == 400
    finally:
        c.close()
    after = _classes(scrape(edge))
    assert {k: after[k] - before[k] for k in after} == {"1xx": 0, "2xx": 4, "3xx": 1, "4xx": 3, "5xx": 0}


def test_edgecore_own_5xx_is_counted_as_5xx(origin, path, uniq):
    from client import closed_port

    e = Edge(f"http://127.0.0.1:{closed_port()}", path=path, env={"EDGECORE_RETRIES": "0"})
    try:
        assert get(e.port, f"{uniq}/x").status == 502
        assert _classes(scrape(e))["5xx"] == 1
    finally:
        e.stop()


def test_open_connections_gauge_follows_the_clients(edge):
    base = scrape(edge)["edgecore_connections_open"]
    conns = [Conn(edge.port) for _ in range(3)]
    try:
        for c in conns:  # a request on each, so the worker has surely accepted it
            c.request("GET", "/open?body=x")
            assert c.read_response().status == 200
        assert scrape(edge)["edgecore_connections_open"] == base + 3
    finally:
        for c in conns:
            c.close()
    assert wait_for(lambda: scrape(edge)["edgecore_connections_open"] == base)


def test_build_info_names_the_version_and_the_path(edge, path):
    from edgecore import __version__

    info = [k for k in scrape(edge) if k.startswith("edgecore_build_info{")]
    assert len(info) == 1
    assert f'version="{__version__}"' in info[0]
    assert f'fastpath="{"on" if path == "fast" else "off"}"' in info[0]
    assert scrape(edge)["edgecore_workers"] == 1


def test_worker_restarts_are_counted(origin, path):
    e = Edge(origin.url, path=path, workers=2)
    try:
        assert scrape(e)["edgecore_worker_restarts_total"] == 0
        assert e.wait_stat(lambda s: s["workers"]["ready"] == 2)["workers"]["ready"] == 2
        os.kill(e.stats()["workers"]["pids"][0], signal.SIGKILL)
        assert wait_for(lambda: scrape(e)["edgecore_worker_restarts_total"] == 1)
        assert wait_for(lambda: scrape(e)["edgecore_workers_ready"] == 2)
    finally:
        e.stop()
