"""Coalescing storm client: N clients ask for the same cold, slow key at the same instant.

wrk cannot express "every client sends exactly one request, all at once", so this small client does: it opens
N keep-alive connections first, then writes the same GET on all of them in one loop iteration and times each
response to its last byte. Prints one JSON line: {"clients", "ok", "errors", "latencies_ms": [...]}.
Run pinned to the load generator's core: python -m bench.storm --port P --path /slow/KEY --clients 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httptools
import uvloop


class _Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future):
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.t0 = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self.done.done():
                self.done.set_exception(e)

    def on_message_complete(self):
        if not self.done.done():
            self.done.set_result((self.parser.get_status_code(), time.perf_counter() - self.t0))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the response"))


async def storm(port: int, path: str, clients: int, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(clients):
        fut = loop.create_future()
        tr, pr = await loop.create_connection(lambda f=fut: _Client(f), "127.0.0.1", port)
        conns.append((tr, pr, fut))
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench-storm\r\n\r\n".encode()
    t0 = time.perf_counter()
    for tr, pr, _ in conns:
        pr.t0 = t0
        tr.write(req)
    results = await asyncio.gather(
        *(asyncio.wait_for(f, timeout) for _, _, f in conns), return_exceptions=True
    )
    wall = time.perf_counter() - t0
    for tr, _, _ in conns:
        tr.close()
    lat, errors, statuses = [], 0, {}
    for r in results:
        if isinstance(r, BaseException):
            errors += 1
            continue
        status, dt = r
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            lat.append(dt * 1000)
        else:
            errors += 1
    return {
        "clients": clients,
        "ok": len(lat),
        "errors": errors,
        "statuses": statuses,
        "wall_s": wall,
        "latencies_ms": lat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    print("STORMJSON " + json.dumps(uvloop.run(storm(a.port, a.path, a.clients, a.timeout))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
