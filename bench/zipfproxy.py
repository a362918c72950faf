"""Hit ratio through the proxy on Zipf traces of fixed-size objects, beside exact LRU at equal bytes.

Owns: one instrument (issue 13): a real `edgecore serve` in front of a small origin on loopback, fed a Zipf
trace of GET /obj?id=<k> over one keep-alive connection (so the proxy sees the trace in the order the model
does), every response of `--size` body bytes, cacheable for a day. The edgecore figure is counted at the
origin (hit ratio = 1 - origin requests / requests over the measured half of the trace; the first half warms
the cache); the reference is exact LRU replaying the same trace with the same budget, each object costing
only its body plus its URL (no head, no index, no allocator slack: conservative for edgecore, which counts
all of those inside --cache-size). A second reference gives each LRU object what edgecore's `/stats` says
its objects hold on average at the end of the run (`cache.data_bytes / cache.items`: key + stored head +
body, the bytes bench.efficiency's share counts), still with no index, slot header or slack.
Invariants: both see the same trace; a response that is not 200 with the full body fails the run (no figure
is reported for a broken run).
Run: python -m bench.zipfproxy [--size 8192] [--cache-size 16MiB] [--keys 20000] [--requests 100000]
[--alphas 0.7,0.9,1.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict

import numpy as np

from edgecore.config import parse_size

from .hitratio import zipf_trace
from .servers import edgecore_argv, find_edgecore, http_get

SERVING = re.compile(r"edgecore: serving http://[\d.]+:(\d+) admin")


class Origin:
    """GET /obj?id=K -> 200 with `size` deterministic body bytes, cacheable for a day; counts requests."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._conn, sock=self.sock))
        ready.set()
        self.loop.run_forever()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                self.requests += 1
                body = (target * (self.size // max(1, len(target)) + 1))[: self.size]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Cache-Control: max-age=86400\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_edgecore(origin_port: int, cache_size: int) -> tuple[subprocess.Popen[bytes], int, int]:
    """(process, serving port, admin port)."""
    admin = _free_port()
    argv = edgecore_argv(find_edgecore(), 0, admin, origin_port, 1, cache_size)
    env = {**os.environ, "EDGECORE_DRAIN_DELAY": "0"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = SERVING.search(line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, int(m.group(1)), admin
    proc.kill()
    raise RuntimeError("edgecore did not start:\n" + "".join(lines[-10:]))


class Client:
    """One keep-alive connection; get() returns the body length of a 200, raising on anything else."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def get(self, target: bytes) -> int:
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: bench.local\r\n\r\n" % target)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head[:80]!r}")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert m, head
        n = int(m.group(1))
        while len(rest) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-body")
            rest += chunk
        self.buf = rest[n:]
        return n


def lru_hit_ratio(trace: np.ndarray, cost: int, capacity: int, measure_from: int) -> float:
    lru: OrderedDict[int, None] = OrderedDict()
    held = capacity // cost
    hits = 0
    for i, k in enumerate(trace.tolist()):
        if k in lru:
            lru.move_to_end(k)
            if i >= measure_from:
                hits += 1
        else:
            lru[k] = None
            if len(lru) > held:
                lru.popitem(last=False)
    return hits / (len(trace) - measure_from)


def run_one(alpha: float, a: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(42)
    trace = zipf_trace(a.keys, a.requests, alpha, rng)
    half = len(trace) // 2
    origin = Origin(a.size)
    proc, port, admin = start_edgecore(origin.port, a.cache_size)
    try:
        c = Client(port)
        t0 = time.monotonic()
        for i, k in enumerate(trace.tolist()):
            if i == half:
                warm = origin.requests
            if c.get(b"/obj?id=%d" % k) != a.size:
                raise RuntimeError("short body")
        wall = time.monotonic() - t0
        fetched = origin.requests - warm
        st = json.loads(http_get(admin, "/stats")[2])["cache"]
    finally:
        proc.terminate()
        proc.wait(20)
        origin.close()
    url = len(b"/obj?id=%d" % (a.keys - 1)) + len(b"bench.local")
    return {
        "edgecore": 1 - fetched / (len(trace) - half),
        "lru": lru_hit_ratio(trace, a.size + url, a.cache_size, half),
        "held_bytes": st["data_bytes"] / st["items"],
        "lru_held": lru_hit_ratio(trace, round(st["data_bytes"] / st["items"]), a.cache_size, half),
        "items": st["items"],
        "seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.zipfproxy", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192, help="body bytes of every object (default %(default)s)")
    ap.add_argument("--cache-size", type=parse_size, default=parse_size("16MiB"))
    ap.add_argument("--keys", type=int, default=20_000, help="distinct objects (default %(default)s)")
    ap.add_argument("--requests", type=int, default=100_000, help="trace length (default %(default)s)")
    ap.add_argument("--alphas", default="0.7,0.9,1.1", help="Zipf exponents (default %(default)s)")
    a = ap.parse_args(argv)
    print(
        "| Zipf s | edgecore through the proxy | its items | exact LRU, body + URL | difference (points) "
        "| exact LRU, key + head + body | difference (points) |"
        f"\n|---:|---:|---:|---:|---:|---:|---:|  <!-- {a.size} B bodies, {a.keys} keys, "
        f"--cache-size {a.cache_size} B, "
        f"{a.requests} requests, second half measured -->",
        flush=True,
    )
    for alpha in (float(x) for x in a.alphas.split(",")):
        r = run_one(alpha, a)
        print(
            f"| {alpha:g} | {r['edgecore']:.3f} | {r['items']:,} | {r['lru']:.3f} "
            f"| {100 * (r['edgecore'] - r['lru']):+.1f} | {r['lru_held']:.3f} "
            f"| {100 * (r['edgecore'] - r['lru_held']):+.1f} |"
            f"  <!-- {r['seconds']:.0f} s; {r['held_bytes']:.0f} B held per object -->",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
