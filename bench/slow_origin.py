"""Slow origin for the coalescing storm: every GET /slow/<anything> is answered after --delay seconds with a
cacheable 1 KiB body. GET /__count answers {"requests": N} (requests for /slow/ so far).

It sits behind the nginx origin (conf/origin.nginx.conf proxies /slow/ here), so the origin's request counter
sees storm fetches like any other upstream request. Run: python -m bench.slow_origin --port P --delay 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import httptools
import uvloop

BODY = b'{"slow": true, "pad": "' + b"s" * (1024 - 26) + b'"}\n'
assert len(BODY) == 1024


def response(body: bytes, cache_control: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (cache_control, len(body))
    ) + body


class SlowProtocol(asyncio.Protocol):
    delay = 0.5
    count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.loop = asyncio.get_running_loop()

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        url, self.url = self.url, b""
        keep = self.parser.should_keep_alive()
        if url.startswith(b"/__count"):
            self._send(response(json.dumps({"requests": SlowProtocol.count}).encode(), b"no-store"), keep)
        elif url.startswith(b"/slow/"):
            SlowProtocol.count += 1
            self.loop.call_later(self.delay, self._send, response(BODY, b"public, max-age=3600"), keep)
        else:
            self._send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", keep)

    def _send(self, data: bytes, keep: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if not keep:
            self.transport.close()

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SlowProtocol, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.5)
    a = ap.parse_args(argv)
    SlowProtocol.delay = a.delay
    uvloop.run(serve(a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
