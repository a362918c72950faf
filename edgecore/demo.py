"""`edgecore demo`: an embedded demo origin and the proxy on loopback, sample traffic, a short summary.

Owns: the demo origin (a small uvloop + httptools API server: cacheable item documents, a private
per-user document, a slow endpoint) and the demo driver. Everything binds 127.0.0.1; every process it
starts is stopped before it returns (or on Ctrl-C with --serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httptools

_SERVING = re.compile(r"edgecore: serving http://([\d.]+):(\d+) admin http://([\d.]+):(\d+)")


class _Origin(asyncio.Protocol):
    """The demo API: /api/items/N (public, max-age=30), /api/me (private), /api/slow (300 ms)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url.decode(), b""
        keep = self.parser.should_keep_alive()
        if url == "/api/slow":
            asyncio.get_running_loop().call_later(
                0.3, self._send, 200, "public, max-age=30", {"slow": True}, keep
            )
            return
        m = re.fullmatch(r"/api/items/(\d+)", url)
        if m:
            n = int(m.group(1))
            self._send(200, "public, max-age=30", {"id": n, "name": f"item {n}", "pad": "x" * 900}, keep)
        elif url == "/api/me":
            self._send(200, "private, max-age=60", {"user": "demo"}, keep)
        else:
            self._send(404, "public, max-age=10", {"error": "not found"}, keep)

    def _send(self, status: int, cc: str, doc: dict[str, Any], keep: bool) -> None:
        body = json.dumps(doc).encode()
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncache-control: %s\r\n"
            b"date: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, cc.encode(), _http_date().encode(), len(body), body)
        )
        if not keep:
            self.transport.close()


def _http_date() -> str:
    from email.utils import formatdate

    return formatdate(usegmt=True)


def origin_main(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Origin, "127.0.0.1", port)
        print(f"origin: {server.sockets[0].getsockname()[1]}", flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()

    uvloop.run(main())


def _start(
    cmd: list[str], pattern: re.Pattern[str], stream: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pipe = p.stdout if stream == "stdout" else p.stderr
    assert pipe is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            break
        lines.append(line)
        m = pattern.search(line)
        if m:
            return p, m
    p.kill()
    raise RuntimeError(f"{cmd[2:4]} did not start: {''.join(lines[-10:])}")


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def run_demo(serve_forever: bool = False, requests: int = 2000) -> int:
    py = sys.executable
    origin, m = _start([py, "-m", "edgecore.demo", "origin"], re.compile(r"origin: (\d+)"), "stdout")
    oport = int(m.group(1))
    listen = "127.0.0.1:8080" if serve_forever else "127.0.0.1:0"
    admin = "127.0.0.1:9901" if serve_forever else "127.0.0.1:0"
    proxy = None
    try:
        proxy, m = _start(
            [
                py,
                "-m",
                "edgecore",
                "serve",
                "--listen",
                listen,
                "--admin",
                admin,
                "--upstream",
                f"http://127.0.0.1:{oport}",
                "--cache-size",
                "64MiB",
                "--drain-delay",  # (loopback only: no load balancer to tell)
                "0",
            ],
            _SERVING,
            "stderr",
        )
        host, port, ahost, aport = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        print(f"demo origin on 127.0.0.1:{oport}, edgecore on {host}:{port} (admin {ahost}:{aport})")
        rng = random.Random(7)
        weights = [1 / (i + 1) for i in range(200)]  # Zipf-like popularity over 200 items
        lat: list[float] = []
        statuses: dict[str, int] = {}
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for i in range(requests):
            path = (
                "/api/me"
                if i % 50 == 0
                else "/api/slow"
                if i % 400 == 1
                else f"/api/items/{rng.choices(range(200), weights)[0]}"
            )
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            cs = resp.headers.get("cache-status", "")
            kind = "hit" if "; hit" in cs else "miss"
            statuses[kind] = statuses.get(kind, 0) + 1
        conn.close()
        a = http.client.HTTPConnection(ahost, aport, timeout=10)
        a.request("GET", "/stats")
        stats = json.loads(a.getresponse().read())
        a.close()
        hits, misses = statuses.get("hit", 0), statuses.get("miss", 0)
        print(
            f"requests: {requests}  hits: {hits}  misses: {misses}  hit ratio: {hits / max(1, requests):.1%}"
        )
        p50, p90, p99, top = (1000 * x for x in (_pct(lat, 0.5), _pct(lat, 0.9), _pct(lat, 0.99), max(lat)))
        print(f"latency: p50 {p50:.3f} ms  p90 {p90:.3f} ms  p99 {p99:.3f} ms  max {top:.3f} ms")
        c = stats["cache"]
        print(
            f"cache: {c['items']} items, {c['bytes_used']} of {c['capacity_bytes']} bytes; "
            f"upstream requests: {stats['upstream']['requests']}"
        )
        if serve_forever:
            print(
                f"serving: curl -i http://{host}:{port}/api/items/1 ; admin: curl http://{ahost}:{aport}/stats"
                " ; Ctrl-C stops"
            )
            with contextlib.suppress(KeyboardInterrupt):
                proxy.wait()
        return 0
    finally:
        if proxy is not None:
            _stop(proxy)
        _stop(origin)


if __name__ == "__main__":
    if sys.argv[1:2] == ["origin"]:
        origin_main(int(os.environ.get("EDGECORE_DEMO_ORIGIN_PORT", "0")))
