"""Purge propagation over the invalidation bus: three edgecore nodes on loopback, a redis-server, an origin.

Run: python -m bench.purge [--purges 1000] [--throughput 2000] [--workers 1]

1. Propagation: KEYS entries are stored and hit on every node; then, one at a time, a URL purge is sent to
   node i % 3 and, from the moment its answer (`"published": true`) arrives, every node is polled (one
   keep-alive connection each) until its GET of that URL is no longer a hit. Per purge: the time until the
   last node misses (the purge's propagation; the publishing node misses at once). A purge not seen by a
   node within LOST_AFTER seconds counts as lost. Reported: p50/p99/max and lost. The figure includes one
   poll's round trip (a GET to a node, ~0.2-1 ms here), so it is an upper bound.
2. Throughput: PURGES tag purges sent over 8 concurrent admin connections spread over the nodes, each
   answered only once it is in the stream: answered purges per second, and the time until every node has
   applied all of them (from the bus counters in /stats).
The redis-server is started here (a free loopback port, a temporary folder, appendonly off: this measures
the bus, not the disk) and stopped at the end, as are the nodes and the origin.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .servers import edgecore_argv, find_edgecore, free_port, http_get

LOST_AFTER = 5.0


def _origin(port_holder: list[int], stop: threading.Event) -> None:
    """A tiny origin: every GET gets 200, 64 bytes, max-age=3600."""
    body = b"x" * 64

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if not head:
                    break
                w.write(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_holder.append(srv.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        srv.close()

    asyncio.run(main())


def _percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Node:
    def __init__(
        self, cmd: list[str], i: int, origin_port: int, redis_url: str, stream: str, workers: int
    ) -> None:
        self.port, self.admin = free_port(), free_port()
        env = {
            **os.environ,
            "EDGECORE_NODE_ID": f"bench{i}",
            "EDGECORE_INVALIDATION_URL": redis_url,
            "EDGECORE_INVALIDATION_STREAM": stream,
            "EDGECORE_DRAIN_DELAY": "0",
        }
        argv = edgecore_argv(cmd, self.port, self.admin, origin_port, workers, 64 << 20)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.aconn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if (
                    http_get(self.admin, "/readyz", timeout=2)[0] == 200
                    and self.bus()["lag_seconds"] is not None
                ):
                    break
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"node {i} did not become ready")
            time.sleep(0.05)

    def get(self, path: str) -> str:
        self.conn.request("GET", path, headers={"Host": "bench.local"})
        r = self.conn.getresponse()
        r.read()
        return r.getheader("cache-status") or ""

    def purge(self, body: dict[str, Any]) -> dict[str, Any]:
        self.aconn.request("POST", "/purge", body=json.dumps(body))
        r = self.aconn.getresponse()
        out = json.loads(r.read())
        if r.status != 200 or not out.get("published"):
            raise RuntimeError(f"purge refused: {r.status} {out}")
        return out

    def bus(self) -> dict[str, Any]:
        self.aconn.request("GET", "/stats")
        r = self.aconn.getresponse()
        return json.loads(r.read())["invalidation"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _hit(cs: str) -> bool:
    return cs.startswith("edgecore; hit")


def propagation(nodes: list[Node], n: int) -> dict[str, Any]:
    keys = [f"/k/{i}" for i in range(n)]
    for node in nodes:
        for k in keys:
            node.get(k)
        deadline = time.monotonic() + 30
        for k in keys:
            while not _hit(node.get(k)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{k} never became a hit")
    lat: list[float] = []
    lost = 0
    for i, k in enumerate(keys):
        nodes[i % 3].purge({"url": f"http://bench.local{k}"})
        t0 = time.perf_counter()
        worst = 0.0
        for node in nodes:
            while _hit(node.get(k)):
                if time.perf_counter() - t0 > LOST_AFTER:
                    lost += 1
                    break
            worst = max(worst, time.perf_counter() - t0)
        lat.append(worst)
    return {
        "purges": n,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * _percentile(lat, 99),
        "max_ms": 1000 * max(lat),
        "lost": lost,
    }


def throughput(nodes: list[Node], n: int, conns: int = 8) -> dict[str, Any]:
    before = [node.bus()["applied"] + node.bus()["own"] for node in nodes]

    async def one_conn(j: int, count: int) -> None:
        node = nodes[j % 3]
        r, w = await asyncio.open_connection("127.0.0.1", node.admin)
        for i in range(count):
            body = json.dumps({"tag": f"t{j}-{i}"}).encode()
            w.write(b"POST /purge HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await r.readuntil(b"\r\n\r\n")
            clen = int(
                next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(b":")[1]
            )
            ans = json.loads(await r.readexactly(clen))
            if not ans.get("published"):
                raise RuntimeError(f"purge refused: {ans}")
        w.close()

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_conn(j, n // conns) for j in range(conns)))
        return time.perf_counter() - t0

    total = n // conns * conns
    t0 = time.perf_counter()
    elapsed = asyncio.run(run())
    deadline = time.monotonic() + 60
    for node, b in zip(nodes, before, strict=True):
        while node.bus()["applied"] + node.bus()["own"] < b + total:
            if time.monotonic() > deadline:
                raise RuntimeError("not every purge was applied within 60 s")
            time.sleep(0.01)
    all_applied = time.perf_counter() - t0
    return {
        "purges": total,
        "answered_per_s": total / elapsed,
        "applied_everywhere_s": all_applied,
        "applied_per_s": total / all_applied,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--purges", type=int, default=1000)
    ap.add_argument("--throughput", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="edgecore-bench-purge-")
    rport = free_port()
    redis = subprocess.Popen(
        [
            server,
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    holder: list[int] = []
    th = threading.Thread(target=_origin, args=(holder, stop), daemon=True)
    th.start()
    nodes: list[Node] = []
    try:
        for _ in range(200):
            if holder:
                break
            time.sleep(0.01)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", rport), 0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        cmd = find_edgecore()
        url = f"redis://127.0.0.1:{rport}/0"
        nodes = [Node(cmd, i, holder[0], url, "edgecore:bench", a.workers) for i in range(3)]
        prop = propagation(nodes, a.purges)
        print(
            f"propagation over {prop['purges']} URL purges, 3 nodes: p50 {prop['p50_ms']:.1f} ms, "
            f"p99 {prop['p99_ms']:.1f} ms, max {prop['max_ms']:.1f} ms, lost {prop['lost']}"
        )
        thr = throughput(nodes, a.throughput)
        print(
            f"throughput: {thr['purges']} tag purges answered at {thr['answered_per_s']:.0f}/s (8 admin "
            f"connections); applied on all 3 nodes after {thr['applied_everywhere_s']:.2f} s "
            f"({thr['applied_per_s']:.0f}/s)"
        )
        print(json.dumps({"propagation": prop, "throughput": thr}))
    finally:
        for n in nodes:
            n.stop()
        stop.set()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
