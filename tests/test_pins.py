"""Pins (ext/slabcache/pins.pxi): large hits served as views of the shared mapping, without a per-hit copy.

Owns the tests of the pin rules: a pinned object's bytes are never overwritten, moved or freed while any
view of them lives (evicted, purged, replaced or expired, it is only unlinked), the memory pinned is bounded
and counted in bytes_used, a store that cannot make room fails cleanly, a SIGKILLed process's pins are
recovered (release_pins; the supervisor's _reap end to end), and end to end on both paths: concurrent slow
readers of a 1 MB hit while it is purged and replaced each get one whole body (the old or the new), and a
client that disconnects mid-body releases its pin. And Pinned.send, a pinned hit straight into the client's
socket: on real sockets (whole, in part, EAGAIN, reset), and through the protocol on both paths (all into
the socket, the rest through the transport, nothing around buffered output, a real uvloop transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time

import pytest
from client import Edge, closed_port, get, wait_for
from memtransport import MemoryTransport, wait_tasks

from edgecore import entry, keys, policy, protocol
from edgecore.cache import Cache, debug_cache_class
from edgecore.config import Config, Upstream
from edgecore.metrics import SharedCounters

FAR = time.time() + 1e6
NOW = time.time()


def _value(tag: bytes, n: int) -> bytes:
    unit = tag + b"|0123456789"
    return (unit * (n // len(unit) + 1))[:n]


def _fill(cache, prefix: bytes, n: int, size: int) -> int:  # type: ignore[no-untyped-def]
    """Store n objects of `size` bytes; -> how many stores succeeded."""
    return sum(bool(cache.store(prefix + b"%d" % i, _value(prefix, size), NOW, FAR)) for i in range(n))


@pytest.mark.parametrize("kill", ["delete", "purge_tag", "replace", "evict", "expire"])
def test_a_pinned_object_is_never_overwritten_and_is_reused_after_release(kill: str) -> None:
    cache = debug_cache_class()(8 << 20, 1 << 20)
    v = _value(b"old", 900_000)
    assert cache.store(b"/k", v, NOW, FAR if kill != "expire" else NOW + 0.5, 0, 0, (7,))
    found = cache.lookup_pinned(b"/k", NOW, 32 << 10)
    assert found is not None and type(found[0]) is not bytes
    views = found[0].views(0)
    assert b"".join(views) == v
    # what would reuse its slots: the object killed, then as many new objects as the cache takes
    if kill == "delete":
        assert cache.delete(b"/k")
    elif kill == "purge_tag":
        assert cache.purge_tag(7) == 1
    elif kill == "replace":
        assert cache.store(b"/k", _value(b"new", 900_000), NOW, FAR)
    elif kill == "expire":
        assert cache.lookup(b"/k", NOW + 1.0) is None
    elif kill == "evict":  # objects that are hit (so they outrank it) until S3-FIFO evicts it (bounded)
        for r in range(8):
            for i in range(12):
                k = b"/e%d/%d" % (r, i)
                cache.store(k, _value(b"e", 900_000), NOW, FAR)
                cache.lookup(k, NOW)
                cache.lookup(k, NOW)
            if cache.lookup(b"/k", NOW) is None:
                break
        assert cache.lookup(b"/k", NOW) is None
    s = cache.stats()
    assert s["pinned_dead_items"] == 1 and s["pinned_dead_bytes"] >= len(v)
    assert cache.lookup(b"/k", NOW) is None or kill == "replace"
    _fill(cache, b"/fill/", 40, 900_000)
    s = cache.stats()
    assert s["evictions"] > 0  # the fill did press on every slot the cache has
    assert b"".join(views) == v  # never overwritten
    assert found[0].tobytes() == v
    assert s["bytes_used"] <= s["capacity_bytes"]
    assert cache._test_check() == []
    held = s["items"]
    del found, views  # the last view goes: the pin is released and the dead object freed (zeroed)
    s = cache.stats()
    assert s["pins"] == 0 and s["pinned_dead_items"] == 0 and s["pinned_dead_bytes"] == 0
    assert cache._test_check() == []
    if kill != "evict" and kill != "replace":
        assert not cache._test_contains(v[:200])
    # its room is usable again: the same fill holds at least as many objects as while it was pinned
    _fill(cache, b"/again/", 40, 900_000)
    assert cache.stats()["items"] >= held
    cache.close()


def test_the_byte_bound_holds_and_pinning_stops_at_its_bound() -> None:
    cache = debug_cache_class()(8 << 20, 1 << 20)
    cap = cache.stats()["capacity_bytes"]
    held = []
    copies = 0
    for i in range(12):
        assert cache.store(b"/p%d" % i, _value(b"p%d" % i, 500_000), NOW, FAR)
        found = cache.lookup_pinned(b"/p%d" % i, NOW, 32 << 10)
        assert found is not None
        if type(found[0]) is bytes:
            copies += 1  # past the bound: a copy, never a failure
            assert found[0] == _value(b"p%d" % i, 500_000)
        else:
            held.append((found[0], found[0].views()))
        cache.delete(b"/p%d" % i)
        s = cache.stats()
        assert s["bytes_used"] <= cap
        assert s["pinned_bytes"] <= (s["pages"] * s["page_size"]) // 2
    assert held and copies  # some pinned, and the bound stopped the rest
    s = cache.stats()
    assert s["pinned_dead_items"] == len(held)
    assert s["bytes_used"] == s["fixed_metadata_bytes"] + s["pinned_dead_bytes"]  # nothing live but the dead
    # the cache full of what it may hold besides the pins: stores succeed or fail cleanly, never raise
    results = [cache.store(b"/f%d" % i, _value(b"f", 700_000), NOW, FAR) for i in range(30)]
    assert any(results)
    assert cache.stats()["bytes_used"] <= cap
    assert all(b"".join(views) == pv.tobytes() for pv, views in held)
    assert cache._test_check() == []
    held.clear()
    assert cache.stats()["pinned_dead_bytes"] == 0
    assert cache._test_check() == []
    cache.close()


def test_a_store_that_cannot_evict_fails_cleanly() -> None:
    # one shard of a tiny cache: the pin bound lets half its pages be pinned; objects that need more
    cache = debug_cache_class()(1 << 20, 128 << 10, shards=1)
    held = []
    for i in range(8):
        cache.store(b"/a%d" % i, _value(b"a", 100_000), NOW, FAR)
        f = cache.lookup_pinned(b"/a%d" % i, NOW, 1000)
        if f is not None and type(f[0]) is not bytes:
            held.append(f[0].views())
    assert held
    for i in range(20):
        assert cache.store(b"/b%d" % i, _value(b"b", 120_000), NOW, FAR) in (True, False)
    assert cache._test_check() == []
    assert cache.stats()["bytes_used"] <= cache.stats()["capacity_bytes"]
    held.clear()
    assert cache.stats()["pins"] == 0
    cache.close()


def test_views_are_read_only_and_close_waits_for_the_last_pin() -> None:
    cache = debug_cache_class()(8 << 20, 1 << 20)
    v = _value(b"ro", 300_000)
    cache.store(b"/ro", v, NOW, FAR)
    pv = cache.lookup_pinned(b"/ro", NOW, 1)[0]
    views = pv.views(100)
    assert b"".join(views) == v[100:]
    assert all(m.readonly for m in views)
    with pytest.raises(TypeError):
        views[0][0] = 1  # type: ignore[index]
    assert pv.head(50) == v[:50] and len(pv) == len(v)
    del pv
    cache.close()  # the views still live: closed, but still mapped
    assert b"".join(views) == v[100:]
    with pytest.raises(ValueError):
        cache.stats()
    del views  # the last one unmaps


@pytest.mark.parametrize("release", ["pid", "all"])
def test_a_killed_process_pins_are_recovered(release: str) -> None:
    """Real processes: a forked child pins objects, is SIGKILLed holding them; release_pins(pid), as the
    supervisor's _reap calls it, frees the dead objects it pinned; release_pins(0), as a new edgecore calls
    it when it re-attaches a cache file whose processes are all gone, frees every pin."""
    cache = debug_cache_class()(8 << 20, 1 << 20)
    for i in range(3):
        cache.store(b"/z%d" % i, _value(b"z", 400_000), NOW, FAR)
    r, w = os.pipe()  # the child tells the parent it holds its pins
    hold_r, hold_w = os.pipe()  # the child blocks reading this until it is killed
    pid = os.fork()
    if pid == 0:  # the child: pin three objects, tell the parent, wait to be killed
        try:
            held = [cache.lookup_pinned(b"/z%d" % i, NOW, 1) for i in range(3)]
            os.write(w, b"%d" % sum(type(f[0]) is not bytes for f in held if f is not None))
            os.read(hold_r, 1)  # never comes: killed here (EOF if the parent went first)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 8) == b"3"
        assert cache.stats()["pins"] == 3
        for i in range(3):
            cache.delete(b"/z%d" % i)  # dead but pinned: the bytes stay
        assert cache.stats()["pinned_dead_items"] == 3
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert cache.stats()["pinned_dead_items"] == 3  # a dead process's pins stay until released
        assert cache.release_pins(pid if release == "pid" else 0) == 3
        s = cache.stats()
        assert s["pins"] == 0 and s["pinned_dead_items"] == 0 and s["pinned_dead_bytes"] == 0
        assert s["bytes_used"] == s["fixed_metadata_bytes"]
        assert cache._test_check() == []
        assert cache.release_pins(pid) == 0
    finally:
        for fd in (r, w, hold_r, hold_w):
            os.close(fd)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        cache.close()


# ------------------------------------------------------------------ end to end, on both paths

BIG = 1_000_000  # under max_object_size 1 MiB with its head


def _cache(edge: Edge) -> dict:
    return edge.stats()["cache"]


def _purge(edge: Edge, target: str) -> int:
    r = edge.admin("/purge", "POST", json.dumps({"url": f"http://test.local{target}"}).encode())
    assert r.status == 200
    return int(json.loads(r.body)["purged"])


def _open_slow(port: int, target: str, pipelined: int = 1) -> socket.socket:
    """A client that sent `pipelined` GETs of target and reads nothing yet. (Loopback takes up to tcp_wmem's
    4 MiB into the kernel at once, so a transport keeps views of a 1 MB body only behind more than that:
    8 pipelined responses.)"""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode() * pipelined)
    return s


class _Reader:
    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def response(self, deadline: float) -> tuple[bytes, bytes]:
        """(head, body) of the next Content-Length response."""
        while b"\r\n\r\n" not in self.buf and time.monotonic() < deadline:
            part = self.s.recv(65536)
            if not part:
                break
            self.buf += part
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        n = next(
            int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")
        )
        parts = [rest]
        got = len(rest)
        while got < n and time.monotonic() < deadline:
            part = self.s.recv(65536)
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        self.buf = data[n:]
        return head, data[:n]


PIPELINED = 8


def test_slow_readers_of_a_purged_and_replaced_1mb_hit_get_whole_bodies(origin, edge, uniq) -> None:
    """Readers that have not read yet hold views of the old object; it is purged and replaced (a new body
    from the origin) while they wait; every reader gets one whole body, the old or the new, never mixed; then
    every pin is released and the dead object freed."""
    path = f"{uniq}/big"
    target = f"{path}?cc=max-age%3D600&size={BIG}"
    first = get(edge.port, target)
    assert first.status == 200 and len(first.body) == BIG
    old = first.body
    assert get(edge.port, target).cache_status.startswith("edgecore; hit")
    hits = _cache(edge)["hits"]
    readers = [_open_slow(edge.port, target, PIPELINED) for _ in range(4)]
    try:
        # every reader's first request was looked up (a hit), and their transports hold views of the stored
        # object (more is written to each than the kernel takes)
        assert edge.wait_stat(lambda s: s["cache"]["hits"] >= hits + 4, 20)["cache"]["hits"] >= hits + 4
        assert edge.wait_stat(lambda s: s["cache"]["pins"] >= 1, 20)["cache"]["pins"] >= 1
        origin.override(path, size=str(BIG - 7))  # the replacement: a different body from now on
        assert _purge(edge, target) == 1
        assert _cache(edge)["pinned_dead_items"] == 1  # unlinked at once, bytes kept for the readers
        # all readers read at once (a reader's later pipelined request may lead the refetch)
        deadline = time.monotonic() + 90
        bodies: list[list[bytes]] = [[] for _ in readers]

        def read_all(i: int) -> None:
            r = _Reader(readers[i])
            bodies[i] = [r.response(deadline)[1] for _ in range(PIPELINED)]

        threads = [threading.Thread(target=read_all, args=(i,)) for i in range(len(readers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        new = get(edge.port, target)
        assert len(new.body) == BIG - 7
        late = [_open_slow(edge.port, target, 1) for _ in range(2)]
        readers += late
        late_bodies = [_Reader(r).response(deadline)[1] for r in late]
    finally:
        for s in readers:
            s.close()
    # each body whole, the old or the new, never a mix; old ones among them (the views held when it was
    # purged: pinned_dead_items was 1), the late readers' the new one's
    flat = [b for per in bodies for b in per]
    assert len(flat) == 4 * PIPELINED
    assert all(b == old or b == new.body for b in flat)
    assert old in flat
    assert late_bodies == [new.body] * 2
    assert wait_for(lambda: _cache(edge)["pins"] == 0, 20)
    s = _cache(edge)
    assert s["pinned_dead_items"] == 0 and s["pinned_dead_bytes"] == 0


def test_a_client_that_disconnects_mid_body_releases_its_pin(origin, edge, uniq) -> None:
    target = f"{uniq}/gone?cc=max-age%3D600&size={BIG}"
    assert len(get(edge.port, target).body) == BIG
    s = _open_slow(edge.port, target, PIPELINED)
    try:
        s.recv(4096)  # some of it, then gone
        assert edge.wait_stat(lambda st: st["cache"]["pins"] >= 1, 20)["cache"]["pins"] >= 1
        assert _purge(edge, target) == 1
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, mid-body
        s.close()
    assert wait_for(lambda: _cache(edge)["pins"] == 0, 20)
    st = _cache(edge)
    assert st["pinned_dead_items"] == 0 and st["pinned_dead_bytes"] == 0


def test_a_sigkilled_worker_pins_are_recovered_by_the_supervisor(origin, uniq) -> None:
    """Real processes: a worker holding pins (a client not reading a 1 MB hit) is SIGKILLed; the supervisor
    reaps it and releases its pins, so the purged object's bytes are reclaimed."""
    e = Edge(origin.url, workers=1)
    try:
        target = f"{uniq}/kill?cc=max-age%3D600&size={BIG}"
        assert len(get(e.port, target).body) == BIG
        s = _open_slow(e.port, target, PIPELINED)
        try:
            assert e.wait_stat(lambda st: st["cache"]["pins"] >= 1, 20)["cache"]["pins"] >= 1
            assert _purge(e, target) == 1
            assert _cache(e)["pinned_dead_items"] == 1
            (worker,) = e.stats()["workers"]["pids"]
            os.kill(worker, signal.SIGKILL)
            st = e.wait_stat(lambda st: st["cache"]["pins"] == 0, 20)["cache"]
            assert st["pins"] == 0 and st["pinned_dead_items"] == 0 and st["pinned_dead_bytes"] == 0
            assert wait_for(lambda: any("released 1 cache pin(s)" in ln for ln in e.lines), 10)
        finally:
            s.close()
    finally:
        e.stop()


# ------------------------------------------------------------------ Pinned.send: straight into the socket


def _tcp_pair(sndbuf: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected (server side, client side) TCP pair on 127.0.0.1; sndbuf > 0 shrinks the server's
    send buffer and the client's receive buffer so that a large write is taken in part only."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        c.connect(ls.getsockname())
        s, _ = ls.accept()
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.setblocking(False)
    c.settimeout(10)
    return s, c


def _recv_exactly(c: socket.socket, n: int) -> bytes:
    parts, got, deadline = [], 0, time.monotonic() + 10
    while got < n and time.monotonic() < deadline:
        part = c.recv(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


@pytest.mark.parametrize("start", [0, 5, 40_000, 899_999])
def test_send_writes_the_prefix_then_the_value_from_start_in_one_call(start: int) -> None:
    cache = debug_cache_class()(8 << 20, 1 << 20)
    v = _value(b"s", 900_000)
    assert cache.store(b"/k", v, NOW, FAR)
    p = cache.lookup_pinned(b"/k", NOW, 32 << 10)[0]
    assert len(p.views(0)) > 1  # chained: the parts are gathered from several slots
    s, c = _tcp_pair()
    try:
        want = b"HTTP/1.1 200 OK\r\n" + v[start:]
        got: list[bytes] = []
        n = p.send(s.fileno(), b"HTTP/1.1 200 OK\r\n", start)
        t = threading.Thread(target=lambda: got.append(_recv_exactly(c, len(want))))
        t.start()
        if 0 <= n < len(want):  # loopback may take less at once: the rest as views, as the protocol does
            s.setblocking(True)
            rest = [b"HTTP/1.1 200 OK\r\n"[n:]] if n < 17 else []
            s.sendall(b"".join(rest + p.views(start + max(0, n - 17))))
        t.join(20)
        assert got == [want]
        assert n > 0
    finally:
        s.close()
        c.close()
    del p
    assert cache.stats()["pins"] == 0
    cache.close()


def test_send_takes_what_the_socket_takes_and_the_views_give_the_rest() -> None:
    """A socket that takes part of the response: send says how much; the views from there complete it
    byte for byte; a full socket takes nothing (0), a reset one fails (-1) without a SIGPIPE."""
    cache = debug_cache_class()(8 << 20, 1 << 20)
    v = _value(b"p", 1_000_000)
    assert cache.store(b"/k", v, NOW, FAR)
    p = cache.lookup_pinned(b"/k", NOW, 32 << 10)[0]
    s, c = _tcp_pair(sndbuf=16384)
    try:
        prefix = b"HTTP/1.1 200 OK\r\nage: 0\r\n"
        n = p.send(s.fileno(), prefix, 100)
        assert len(prefix) < n < len(prefix) + len(v) - 100
        rest = b"".join(p.views(100 + n - len(prefix)))
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(_recv_exactly(c, len(prefix) + len(v) - 100)))
        t.start()
        s.setblocking(True)
        s.sendall(rest)
        t.join(20)
        assert got == [prefix + v[100:]]
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        s.setblocking(False)
        assert wait_for(lambda q=p: q.send(s.fileno(), prefix, 0) == -1, 10)  # EPIPE/ECONNRESET, no signal
    finally:
        s.close()
        c.close()
    s, c = _tcp_pair(sndbuf=16384)  # a client reading nothing: the socket fills, then takes nothing (EAGAIN)
    try:
        sent = [p.send(s.fileno(), b"", 0) for _ in range(200)]
        assert sent[0] > 0 and sent[-1] == 0
    finally:
        s.close()
        c.close()
    del p
    assert cache.stats()["pins"] == 0
    cache.close()


class _SocketTransport(MemoryTransport):
    """An in-memory transport whose socket is a real one (get_extra_info("socket")): what the protocol
    sends straight into the socket arrives there, what it writes through the transport lands in .data."""

    def __init__(self, sock: socket.socket, buffered: int = 0) -> None:
        super().__init__()
        self.sock = sock
        self.buffered = buffered
        self.lines = 0

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def writelines(self, chunks) -> None:  # type: ignore[no-untyped-def]
        self.lines += 1
        super().writelines(chunks)


@pytest.fixture
def in_process(on_path: str):  # type: ignore[no-untyped-def]
    """A worker's protocol Context (on `path`), its cache holding fresh plain responses at /big (1 MB) and
    /mid (100 kB, above LARGE_BODY) on host t.example; -> (loop, ctx, {target: stored body})."""
    loop = asyncio.new_event_loop()
    cfg = Config(upstream=(Upstream("127.0.0.1", closed_port()),), cache_size=16 << 20)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    ctx = protocol.make_context(cfg, cache, SharedCounters(slots=2).slot_view(1), loop)
    assert ctx.hitpath.enabled == (on_path == "fast")
    bodies = {b"/big": _value(b"b", BIG - 2000), b"/mid": _value(b"m", 100_000)}
    now = time.time()
    f = policy.Freshness(lifetime=3600.0, initial_age=0.0, response_time=now)
    for target, body in bodies.items():
        value, birth, fresh_until, flags = entry.encode(
            200,
            b"OK",
            [(b"cache-control", b"max-age=3600"), (b"content-length", b"%d" % len(body))],
            body,
            f,
            now,
        )
        assert flags == entry.FLAG_PLAIN
        key = keys.primary_key(b"GET", b"t.example", target)
        assert cache.store(key, value, birth, fresh_until + 60, flags)
    yield loop, ctx, bodies
    ctx.stop()
    loop.close()
    cache.close()


def _answer(loop, ctx, t: MemoryTransport, target: bytes) -> protocol.ClientProtocol:  # type: ignore[no-untyped-def]
    p = protocol.ClientProtocol(ctx)
    p.connection_made(t)
    p.data_received(b"GET %s HTTP/1.1\r\nHost: t.example\r\n\r\n" % target)
    wait_tasks(loop, ctx)
    return p


def _split(resp: bytes) -> tuple[bytes, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("sndbuf", [0, 16384], ids=["socket-takes-all", "socket-takes-part"])
def test_a_pinned_hit_goes_straight_into_the_socket_and_the_rest_through_the_transport(
    in_process, sndbuf: int
) -> None:
    """On both paths: with nothing buffered, the response is sent into the client's socket by one sendmsg;
    what the socket does not take follows through the transport as views; the client gets every byte once,
    in order; no pin outlives the write. (100 kB into a 1 MiB send buffer, which even the default
    net.core.wmem_max leaves at 416 KiB: taken whole; 1 MB into 16 KiB: taken in part.)"""
    loop, ctx, bodies = in_process
    target = b"/big" if sndbuf else b"/mid"
    body = bodies[target]
    s, c = _tcp_pair(sndbuf)
    try:
        t = _SocketTransport(s)
        if sndbuf == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # room for the whole response
        _answer(loop, ctx, t, target)
        if sndbuf:
            assert t.lines == 1 and len(t.data) > 0  # the rest, through the transport
        else:
            assert t.lines == 0 and t.data == b""  # all of it into the socket, none through the transport
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(_recv_exactly(c, 2 * BIG)))
        reader.start()
        s.setblocking(True)
        s.sendall(bytes(t.data))  # what the transport holds goes out after what the socket took
        s.shutdown(socket.SHUT_WR)
        reader.join(20)
        direct = got[0]
        head, rest = _split(direct)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncache-status: edgecore; hit" in head
        assert rest == body
        assert ctx.cache.stats()["pins"] == 0
    finally:
        s.close()
        c.close()


def test_a_pinned_hit_behind_buffered_output_goes_through_the_transport_only(in_process) -> None:
    """On both paths: bytes still buffered in the transport go first, so nothing is sent around them."""
    loop, ctx, bodies = in_process
    body = bodies[b"/mid"]
    s, c = _tcp_pair()
    try:
        t = _SocketTransport(s, buffered=1)
        _answer(loop, ctx, t, b"/mid")
        assert t.lines == 1
        head, rest = _split(bytes(t.data))
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and rest == body
        c.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c.recv(1)  # nothing went into the socket
    finally:
        s.close()
        c.close()


class _Counting:
    """A real uvloop transport, with its writelines calls counted (everything else passes through)."""

    def __init__(self, t) -> None:  # type: ignore[no-untyped-def]
        self._t = t
        self.lines = 0

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def]
        self.lines += 1
        self._t.writelines(parts)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._t, name)


def test_on_a_real_uvloop_transport_a_pinned_hit_goes_straight_into_its_socket(in_process) -> None:
    """On both paths, through uvloop's own TCP transport: the protocol finds the socket, the whole 100 kB hit
    goes into it (no writelines), the client reads it byte for byte, and no pin is left."""
    import uvloop

    old, ctx, bodies = in_process
    loop = uvloop.new_event_loop()
    ctx.loop = loop
    made: list[protocol.ClientProtocol] = []

    class Proto(protocol.ClientProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            made.append(self)
            super().connection_made(_Counting(transport))

    async def run() -> bytes:
        server = await loop.create_server(lambda: Proto(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /mid HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(-1), 20)
            writer.close()
            return data
        finally:
            server.close()

    try:
        data = loop.run_until_complete(run())
    finally:
        loop.close()
        ctx.loop = old
    head, rest = _split(data)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncache-status: edgecore; hit" in head
    assert rest == bodies[b"/mid"]
    (p,) = made
    assert p.fd >= 0
    assert p.transport is not None and p.transport.lines == 0  # type: ignore[attr-defined]
    assert ctx.cache.stats()["pins"] == 0
