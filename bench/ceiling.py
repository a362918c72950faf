"""The Python ceiling: a bare uvloop + httptools server answering prebuilt constant responses.

No cache, no upstream, no header logic: for each complete request it writes one bytes object chosen by the
request path (query ignored). What edgecore's hit path costs above this is what its Python layer costs.
The bodies are the origin's files, so a hit load moves the same bytes as through the caches; any other path
(/obj?id=..., /slow/...) gets the 1 KiB body, so the miss and Zipf loads can run against it too.

Run: python -m bench.ceiling --port P --www DIR [--workers N]  (N processes share the port, SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import httptools
import uvloop


def build_responses(www: str) -> dict[bytes, bytes]:
    out = {}
    for name in sorted(os.listdir(www)):
        with open(os.path.join(www, name), "rb") as f:
            body = f.read()
        out[b"/" + name.encode()] = (
            b"HTTP/1.1 200 OK\r\nServer: ceiling\r\nContent-Type: application/json\r\n"
            b"Cache-Control: public, max-age=3600\r\nContent-Length: %d\r\n\r\n" % len(body)
        ) + body
    return out


class CeilingProtocol(asyncio.Protocol):
    responses: dict[bytes, bytes] = {}
    default = b""

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        path = self.url.split(b"?", 1)[0]
        self.transport.write(self.responses.get(path, self.default))
        self.url = b""
        if not self.parser.should_keep_alive():
            self.transport.close()

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CeilingProtocol, "127.0.0.1", port, backlog=4096, reuse_port=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--www", required=True)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    CeilingProtocol.responses = build_responses(a.www)
    CeilingProtocol.default = CeilingProtocol.responses[b"/b1k.json"]
    children = []
    for _ in range(max(1, a.workers) - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(a.port))
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(serve(a.port))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
