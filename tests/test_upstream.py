"""End to end: upstream failures map to 502/504, coalescing of concurrent misses, hit-for-miss, and flow
control from a client that does not read."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from client import Conn, Edge, closed_port, get
from origin import body_bytes


@pytest.fixture(scope="module")
def quick(origin, path):
    """edgecore with short upstream timeouts."""
    e = Edge(
        origin.url,
        path=path,
        env={"EDGECORE_RESPONSE_TIMEOUT": "1", "EDGECORE_IDLE_TIMEOUT": "1", "EDGECORE_CONNECT_TIMEOUT": "1"},
    )
    yield e
    e.stop()


def test_unreachable_upstream_is_502(path):
    e = Edge(f"http://127.0.0.1:{closed_port()}", path=path)
    try:
        r = get(e.port, "/x")
        assert r.status == 502
        assert "edgecore" in r.cache_status
        r = get(e.port, "/y", method="POST", body=b"x")
        assert r.status == 502
        # readiness does not depend on upstreams (INTERFACE.md: an edge that can serve stale stays in the
        # pool) unless ready_requires_upstream; the body says the upstream is down either way
        ready = e.admin("/readyz")
        assert ready.status == 200 and b"down" in ready.body
    finally:
        assert e.stop() == 0


def test_slow_upstream_head_is_504(quick, uniq):
    t0 = time.monotonic()
    r = get(quick.port, f"{uniq}?delay=3")
    assert r.status == 504
    assert time.monotonic() - t0 < 2.9  # answered at the response timeout, not when the origin finally speaks


def test_stalled_upstream_body_closes_the_client(quick, origin, uniq):
    # the head came, the body never does: a small cacheable body is held until complete, so the client
    # gets a clean 504; a streamed one (no Content-Length here) is cut off by closing the connection
    t = f"{uniq}?size=5000&bodygate={uniq}-never&cc=max-age=60"
    r = get(quick.port, t)
    assert r.status == 504 and r.complete
    r = get(quick.port, f"{uniq}/s?size=5000&bodygate={uniq}-never&chunked=1")
    assert r.status == 200 and not r.complete
    origin.open_gate(f"{uniq}-never")
    r2 = get(quick.port, t)  # not stored: fetched again, this time whole
    assert r2.complete and r2.body == body_bytes(t, 5000)
    assert origin.count(f"{uniq}?") == 2


def _concurrent(port: int, target: str, n: int) -> list:
    out: list = [None] * n

    def one(i: int) -> None:
        try:
            out[i] = get(port, target)
        except OSError as e:
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return [threads, out]


def test_concurrent_misses_send_one_upstream_request(edge, origin, uniq):
    n = 12
    gate = f"{uniq}-g"
    t = f"{uniq}?cc=max-age=60&size=2000&gate={gate}"
    threads, out = _concurrent(edge.port, t, n)
    assert origin.wait_count(uniq, 1)
    s = edge.wait_stat(lambda s: s["coalescing"]["waiting"] >= n - 1)
    assert s["coalescing"]["waiting"] == n - 1  # everybody else is waiting on the one fetch
    origin.open_gate(gate)
    for th in threads:
        th.join(10)
    assert all(r.status == 200 and r.body == body_bytes(t, 2000) for r in out)
    assert origin.count(uniq) == 1
    assert sum("collapsed" in r.cache_status for r in out) == n - 1


def test_uncacheable_response_releases_waiters_at_once(edge, origin, uniq):
    n = 6
    gate, bodygate = f"{uniq}-head", f"{uniq}-body"
    t = f"{uniq}?cc=private&size=100&gate={gate}&bodygate={bodygate}"
    threads, out = _concurrent(edge.port, t, n)
    assert origin.wait_count(uniq, 1)
    edge.wait_stat(lambda s: s["coalescing"]["waiting"] >= n - 1)
    origin.open_gate(gate)
    # the leader's body is still held, yet every waiter has already gone upstream on its own
    assert origin.wait_count(uniq, n, timeout=10)
    origin.open_gate(bodygate)
    for th in threads:
        th.join(10)
    assert all(r.status == 200 for r in out)
    # hit-for-miss: the next request goes straight upstream, without coalescing
    r = get(edge.port, t)
    assert "hit-for-miss" in r.cache_status
    assert origin.count(uniq) == n + 1


def test_waiters_never_wait_past_the_upstream_timeout(quick, origin, uniq):
    n = 4
    gate = f"{uniq}-stuck"
    threads, out = _concurrent(quick.port, f"{uniq}?cc=max-age=60&gate={gate}", n)
    t0 = time.monotonic()
    for th in threads:
        th.join(10)
    assert time.monotonic() - t0 < 5
    assert [r.status for r in out] == [504] * n
    origin.open_gate(gate)


def test_client_that_does_not_read_stops_the_upstream_read(edge, origin, uniq):
    total = 64 << 20
    t = f"{uniq}?size={total}"
    pid = edge.stats()["workers"]["pids"][0]
    before = _rchar(pid)
    c = Conn(edge.port)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.request("GET", t)
        head = c.read_response(head_only=True)
        assert head.status == 200
        # edgecore must stop pulling from the origin while we do not read: the bytes in flight are bounded
        # by socket buffers, far below the 64 MiB body
        read = _stalled_progress(pid) - before
        assert read < total // 4
        got = len(c.buf)
        while got < total:
            chunk = c.sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == total
    finally:
        c.close()


def _rchar(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def _stalled_progress(pid: int) -> int:
    """Bytes the worker process has read, once that number stops moving (bounded in count and time)."""
    last = -1
    for _ in range(100):
        rchar = _rchar(pid)
        if rchar == last:
            return rchar
        last = rchar
        time.sleep(0.1)
    return last


def test_upstream_that_does_not_read_stops_the_client_read(edge, origin, uniq):
    """Flow control client -> upstream: while the origin takes none of the body, edgecore stops reading
    the client, so what the worker reads of the body is bounded by buffers, not by the body size. (What the
    client manages to send is not the measure: the kernel autotunes the worker's receive buffer, up to
    net.ipv4.tcp_rmem's maximum, while the worker reads fast at the start.)"""
    total = 64 << 20
    gate = f"{uniq}-read"
    pid = edge.stats()["workers"]["pids"][0]
    before = _rchar(pid)
    c = Conn(edge.port)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        c.send(
            f"POST {uniq}?readgate={gate}&body=ok HTTP/1.1\r\nHost: a\r\n"
            f"Content-Length: {total}\r\n\r\n".encode()
        )
        assert origin.wait_count(uniq, 0)
        c.sock.setblocking(False)
        chunk = b"x" * (1 << 16)
        sent = 0
        stalls = 0
        for _ in range(20000):  # bounded: until the sends stop being accepted for a while
            try:
                sent += c.sock.send(chunk)
                stalls = 0
            except BlockingIOError:
                stalls += 1
                if stalls >= 50:
                    break
                time.sleep(0.01)
        assert sent < total, sent  # the sends stopped being accepted before the whole body
        read = _stalled_progress(pid) - before
        assert read < total // 4, read
        origin.open_gate(gate)
        c.sock.setblocking(True)
        view = memoryview(b"x" * (1 << 20))
        while sent < total:
            n = min(len(view), total - sent)
            c.sock.sendall(view[:n])
            sent += n
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok"
        assert len(origin.requests_for(uniq)[-1].body) == total
    finally:
        c.close()
