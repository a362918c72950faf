"""The "outage" scenario: a hot set with short TTLs under load, the origin killed for OUTAGE seconds and
restarted; what the clients see during the outage (error rate, p50/p99), edgecore side by side with nginx
(`proxy_cache_use_stale error timeout updating http_5xx` + `proxy_next_upstream`, kept past expiry by
`inactive`) and Varnish (grace), each configured for the same job.

Run: python -m bench --scenarios outage [--systems edgecore,nginx,varnish] [--outage 10] [--connections 32]
(or python -m bench.outage). Each system gets its own origin process (the same program, the same port for its
whole run), a warm-up with the origin up (every key stored), then the load runs through BEFORE s up, OUTAGE s
with the origin SIGKILLed (connections refused), and AFTER s with it restarted on the same port.

The origin (`python -m bench.outage --origin PORT`) answers GET /hot/<k> with a 1 KiB body and
`Cache-Control: max-age=TTL` (2 s): during a 10 s outage every entry expires, so only a stale copy can
answer. The load is a Python asyncio client (CONNECTIONS keep-alive connections, keys uniform over HOT
keys, one request in flight per connection): it records every request's start, status and latency; a
connection error counts as an error and the connection is reopened. Its latencies include the client's own
overhead on a shared core: compare systems with each other, not with wrk's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .servers import REPO, Supervisor, find_edgecore, free_port, log, run_each, wait_http

TTL = 2
HOT = 200
BODY = b'{"hot": true, "pad": "' + b"h" * (1024 - 25) + b'"}\n'
assert len(BODY) == 1024


# ---------------------------------------------------------------- the origin (its own process)
class _Origin(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        import httptools

        self.t = transport
        self.p = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.p.feed_data(data)
        except Exception:
            self.t.close()

    def on_message_complete(self) -> None:
        self.t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=%d\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (TTL, len(BODY), BODY)
        )


def run_origin(port: int) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    srv = loop.run_until_complete(loop.create_server(_Origin, "127.0.0.1", port, reuse_address=True))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    srv.close()


# ---------------------------------------------------------------- the load
@dataclass
class Sample:
    t: float  # start, seconds since the load began
    ok: bool
    ms: float


async def _one_conn(port: int, stop_at: float, t0: float, out: list[Sample], rnd: random.Random) -> None:
    reader = writer = None
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        start = now
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            assert reader is not None
            k = rnd.randrange(HOT)
            writer.write(b"GET /hot/%d HTTP/1.1\r\nHost: outage.bench\r\n\r\n" % k)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head[9:12])
            clen = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                n, _, v = line.partition(b":")
                n = n.strip().lower()
                if n == b"content-length":
                    clen = int(v)
                elif n == b"connection" and v.strip().lower() == b"close":
                    close = True
            await asyncio.wait_for(reader.readexactly(clen), 10)
            out.append(Sample(start - t0, status == 200, (time.monotonic() - start) * 1000))
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            out.append(Sample(start - t0, False, (time.monotonic() - start) * 1000))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)  # a refused connect: do not spin
    if writer is not None:
        writer.close()


async def _load(port: int, seconds: float, conns: int, samples: list[Sample], t0: float) -> None:
    stop_at = time.monotonic() + seconds
    rnd = random.Random(1)
    await asyncio.gather(
        *(_one_conn(port, stop_at, t0, samples, random.Random(rnd.random())) for _ in range(conns))
    )


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


@dataclass
class Result:
    system: str
    how: str
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


def summarise(samples: list[Sample], cut: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    """Per phase (before / outage / after): requests, error rate, p50 and p99 latency."""
    before, outage, after = cut
    out: dict[str, dict[str, float]] = {}
    for name, lo, hi in (("before", 0, before), ("outage", before, outage), ("after", outage, after)):
        ph = [s for s in samples if lo <= s.t < hi]
        errs = sum(not s.ok for s in ph)
        out[name] = {
            "requests": len(ph),
            "errors": errs,
            "error_rate": errs / len(ph) if ph else float("nan"),
            "p50": _pct([s.ms for s in ph], 50),
            "p99": _pct([s.ms for s in ph], 99),
        }
    return out


# ---------------------------------------------------------------- the systems, configured for the job
NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {run}/nginx-outage.pid;
error_log {run}/log/nginx-outage.error.log crit;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    proxy_temp_path {run}/tmp/outage-proxy;
    client_body_temp_path {run}/tmp/outage-body;
    proxy_cache_path {run}/nginx-outage levels=1:2 keys_zone=outage:16m max_size=64m inactive=10m
                     use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin} max_fails=1 fail_timeout=1s;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_cache outage;
            proxy_cache_lock on;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            proxy_cache_background_update on;
            proxy_next_upstream error timeout http_502 http_503 http_504;
        }}
    }}
}}
"""

VARNISH_VCL = """vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{origin}"; .connect_timeout = 1s; }}
sub vcl_backend_response {{ set beresp.grace = 60s; }}
"""


def start_system(key: str, sup: Supervisor, run: Path, origin: int, edge_cmd: list[str]) -> tuple[int, str]:
    port = free_port()
    if key == "edgecore":
        admin = free_port()
        argv = [*edge_cmd, "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
        argv += ["--upstream", f"http://127.0.0.1:{origin}"]
        os.environ["EDGECORE_CONNECT_TIMEOUT"] = "1"  # (no command-line option; inherited by the child)
        p = sup.start("edgecore-outage", argv, cwd=REPO)
        wait_http(sup, p, admin, "/healthz", 30)
        wait_http(sup, p, port, "/hot/0", 10)
        return port, "edgecore defaults (stale_if_error 60 s, stale_keep 600 s), connect_timeout 1 s"
    if key == "nginx":
        conf = run / "outage.nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, run=run, origin=origin, port=port))
        p = sup.start(
            "nginx-outage", ["nginx", "-p", str(run), "-c", str(conf), "-e", str(run / "log/ng.err")]
        )
        wait_http(sup, p, port, "/hot/0", 10)
        return (
            port,
            "proxy_cache_use_stale error timeout updating http_5xx, background update, proxy_next_upstream",
        )
    if key == "varnish":
        vcl = run / "outage.vcl"
        vcl.write_text(VARNISH_VCL.format(origin=origin))
        argv = ["varnishd", "-F", "-n", str(run / "varnish-outage"), "-a", f"127.0.0.1:{port}"]
        argv += ["-f", str(vcl), "-T", f"127.0.0.1:{free_port()}", "-s", "malloc,64m"]
        if os.geteuid() == 0:
            argv += ["-j", "none"]
        p = sup.start("varnish-outage", argv)
        wait_http(sup, p, port, "/hot/0", 20)
        return port, "VCL: beresp.grace = 60s, connect_timeout 1 s"
    raise ValueError(key)


def run_one(key: str, a: argparse.Namespace, sup: Supervisor, run: Path, edge_cmd: list[str]) -> Result:
    oport = free_port()
    origin_argv = [sys.executable, "-m", "bench.outage", "--origin", str(oport)]
    origin = sup.start(f"origin-{key}", origin_argv, cwd=REPO)
    wait_http(sup, origin, oport, "/hot/0", 10)
    port, how = start_system(key, sup, run, oport, edge_cmd)
    import http.client

    for k in range(HOT):  # warm: every key stored
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", f"/hot/{k}")
        c.getresponse().read()
        c.close()
    samples: list[Sample] = []
    t0 = time.monotonic()
    total = a.before + a.outage + a.after

    async def drive() -> None:
        load = asyncio.ensure_future(_load(port, total, a.connections, samples, t0))
        await asyncio.sleep(a.before)
        log(f"{key}: killing the origin for {a.outage:g} s")
        os.kill(origin.pid, signal.SIGKILL)
        await asyncio.sleep(a.outage)
        log(f"{key}: restarting the origin")
        sup.start(f"origin-{key}-again", origin_argv, cwd=REPO)
        await load

    asyncio.run(drive())
    return Result(key, how, summarise(samples, (a.before, a.before + a.outage, total)))


def render(results: list[Result], a: argparse.Namespace) -> str:
    lines = [
        f"#### Outage: origin killed for {a.outage:g} s under load ({a.connections} connections, "
        f"{HOT} hot keys, max-age={TTL})",
        "",
        "| system | configured with | requests during outage | errors during outage "
        "| p50 / p99 during outage (ms) | p99 before (ms) | errors after restart |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, o, af = r.phases["before"], r.phases["outage"], r.phases["after"]
        lines.append(
            f"| {r.system} | {r.how} | {o['requests']:.0f} "
            f"| {o['errors']:.0f} ({o['error_rate'] * 100:.2f} %) "
            f"| {o['p50']:.1f} / {o['p99']:.1f} | {b['p99']:.1f} | {af['errors']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__.split("\n")[0])
    ap.add_argument("--origin", type=int, help=argparse.SUPPRESS)  # run as the origin on this port
    ap.add_argument("--systems", default="edgecore,nginx,varnish")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--before", type=float, default=5.0, help="seconds of load with the origin up (5)")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds the origin is down (10)")
    ap.add_argument("--after", type=float, default=5.0, help="seconds of load after the restart (5)")
    ap.add_argument("--edgecore-cmd", help="command that runs edgecore (default: this checkout)")
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.origin:
        run_origin(a.origin)
        return 0
    keys = [k for k in a.systems.split(",") if k]
    edge_cmd = a.edgecore_cmd.split() if a.edgecore_cmd else find_edgecore()

    def one(key: str, sup: Supervisor, run: Path) -> Result | None:
        if key == "varnish" and not shutil.which("varnishd"):
            log("SKIPPING varnish: varnishd is not installed")
            return None
        return run_one(key, a, sup, run, edge_cmd)

    results = run_each("edgecore-outage-", keys, one)
    md = render(results, a)
    if a.out:
        a.out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
