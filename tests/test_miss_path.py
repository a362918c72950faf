"""The miss path in process, through the real client protocol and upstream pool, against a scripted origin
on 127.0.0.1.

Checks what the task path guarantees too: responses in request order, one retry on a fresh connection when
a reused one closes before answering, errors mapped to responses, coalescing of concurrent misses.
"""

from __future__ import annotations

import asyncio

import pytest
from memtransport import MemoryTransport

from edgecore import keys, protocol
from edgecore.cache import Cache
from edgecore.config import Config, Upstream
from edgecore.metrics import SharedCounters


class Origin(asyncio.Protocol):
    """GET /<path> -> body = path, cacheable. `script` pops one action per request: "ok", "drop" (close
    without answering), "truncate" (announce 100 bytes, send 10, close), "split" (head and body in two
    reads)."""

    seen: list[bytes] = []
    script: list[str] = []
    gate: asyncio.Event | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            Origin.seen.append(path)
            action = Origin.script.pop(0) if Origin.script else "ok"
            if action == "drop":
                self.transport.close()
                return
            if action == "truncate":
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100\r\n\r\n"
                )
                self.transport.write(b"x" * 10)
                self.transport.close()
                return
            resp = (
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % len(path)
                + path
            )
            if action == "split":  # the head now, the body in a later read
                head, _, body = resp.partition(b"\r\n\r\n")
                self.transport.write(head + b"\r\n\r\n")
                asyncio.get_running_loop().call_later(0.05, self.transport.write, body)
            elif Origin.gate is not None:
                asyncio.get_running_loop().create_task(self._later(resp))
            else:
                self.transport.write(resp)

    async def _later(self, resp: bytes) -> None:
        assert Origin.gate is not None
        await Origin.gate.wait()
        self.transport.write(resp)


@pytest.fixture
def edge(on_path):  # once per path: make_context reads EDGECORE_NO_FASTPATH
    loop = asyncio.new_event_loop()
    Origin.seen, Origin.script, Origin.gate = [], [], None
    server = loop.run_until_complete(loop.create_server(Origin, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    cfg = Config(upstream=(Upstream("127.0.0.1", port),), cache_size=8 << 20)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    counters = SharedCounters(slots=2)
    ctx = protocol.make_context(cfg, cache, counters.slot_view(1), loop)

    def client() -> tuple[protocol.ClientProtocol, MemoryTransport]:
        p = protocol.ClientProtocol(ctx)
        t = MemoryTransport()
        p.connection_made(t)
        return p, t

    yield loop, ctx, client
    ctx.stop()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    cache.close()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t.example\r\n\r\n".encode()


def _responses(data: bytearray) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each complete Content-Length-framed response in data."""
    out = []
    rest = bytes(data)
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        clen = next(
            int(v) for n, _, v in (ln.partition(b":") for ln in lines[1:]) if n.lower() == b"content-length"
        )
        out.append((lines[0], rest[:clen]))
        rest = rest[clen:]
    return out


def _run_until(loop, cond) -> None:
    async def wait() -> None:
        for _ in range(2000):
            if cond():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("timed out")

    loop.run_until_complete(wait())


def test_pipelined_misses_are_answered_in_order(edge):
    loop, ctx, client = edge
    p, t = client()
    p.data_received(_get("/warm"))  # fills the pool: the misses below take the callback path
    _run_until(loop, lambda: len(_responses(t.data)) == 1)
    p.data_received(_get("/warm") + _get("/a") + _get("/b") + _get("/warm") + _get("/c"))
    _run_until(loop, lambda: len(_responses(t.data)) == 6)
    assert [b for _, b in _responses(t.data)] == [b"/warm", b"/warm", b"/a", b"/b", b"/warm", b"/c"]
    assert Origin.seen == [b"/warm", b"/a", b"/b", b"/c"]


def test_reused_connection_closed_before_answering_is_retried_once(edge):
    loop, ctx, client = edge
    p, t = client()
    p.data_received(_get("/one"))
    _run_until(loop, lambda: len(_responses(t.data)) == 1)
    Origin.script = ["drop"]
    p.data_received(_get("/two"))
    _run_until(loop, lambda: len(_responses(t.data)) == 2)
    status, body = _responses(t.data)[1]
    assert status == b"HTTP/1.1 200 OK" and body == b"/two"
    assert Origin.seen == [b"/one", b"/two", b"/two"]
    # and it was stored
    p.data_received(_get("/two"))
    _run_until(loop, lambda: len(_responses(t.data)) == 3)
    assert Origin.seen == [b"/one", b"/two", b"/two"]


def test_retry_that_fails_too_is_a_502_and_the_connection_goes_on(edge):
    loop, ctx, client = edge
    p, t = client()
    p.data_received(_get("/one"))
    _run_until(loop, lambda: len(_responses(t.data)) == 1)
    Origin.script = ["drop", "drop"]
    p.data_received(_get("/two") + _get("/three"))
    _run_until(loop, lambda: len(_responses(t.data)) == 3)
    got = _responses(t.data)
    assert got[1][0].startswith(b"HTTP/1.1 502") and got[2] == (b"HTTP/1.1 200 OK", b"/three")
    key = keys.primary_key(b"GET", b"t.example", b"/two", ctx.key_opts)
    assert not ctx.flights.busy(key)  # the flight was finished


def test_truncated_upstream_body_is_a_502_and_not_stored(edge):
    loop, ctx, client = edge
    p, t = client()
    p.data_received(_get("/one"))
    _run_until(loop, lambda: len(_responses(t.data)) == 1)
    Origin.script = ["truncate"]
    p.data_received(_get("/short"))
    _run_until(loop, lambda: len(_responses(t.data)) == 2)
    assert _responses(t.data)[1][0].startswith(b"HTTP/1.1 502")
    p.data_received(_get("/short"))
    _run_until(loop, lambda: len(_responses(t.data)) == 3)
    assert _responses(t.data)[2] == (b"HTTP/1.1 200 OK", b"/short")
    assert Origin.seen.count(b"/short") == 2


def test_concurrent_misses_for_one_key_send_one_upstream_request(edge):
    loop, ctx, client = edge
    p0, t0 = client()
    p0.data_received(_get("/warm"))
    _run_until(loop, lambda: len(_responses(t0.data)) == 1)
    Origin.gate = asyncio.Event()
    clients = [client() for _ in range(3)]
    for p, _ in clients:
        p.data_received(_get("/same"))
    _run_until(loop, lambda: Origin.seen.count(b"/same") == 1)
    Origin.gate.set()
    _run_until(loop, lambda: all(len(_responses(t.data)) == 1 for _, t in clients))
    for _, t in clients:
        assert _responses(t.data) == [(b"HTTP/1.1 200 OK", b"/same")]
    assert Origin.seen.count(b"/same") == 1
    assert b"collapsed" in bytes(clients[1][1].data)


def test_retried_response_in_two_reads_is_served_whole_before_the_next(edge):
    """After a retry, the sink starts over: the first attempt's failure must not end the retried response
    early (which answered 502 and let the next pipelined request run while the real response was pending)."""
    loop, ctx, client = edge
    p, t = client()
    p.data_received(_get("/warm"))  # a pooled connection to reuse
    _run_until(loop, lambda: len(_responses(t.data)) == 1)
    Origin.script = ["drop", "split"]
    p.data_received(_get("/two") + _get("/three"))
    _run_until(loop, lambda: len(_responses(t.data)) == 3)
    got = _responses(t.data)
    assert got[1] == (b"HTTP/1.1 200 OK", b"/two") and got[2] == (b"HTTP/1.1 200 OK", b"/three")
