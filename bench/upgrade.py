"""The "upgrade" scenario: edgecore replaced under load, by `serve --upgrade-from` (the listening sockets and
the cache file handed over) and, for contrast, by a plain stop and start on the same cache file (the cache
kept, the port closed in between, as any restart without a handoff). Reports failed requests and p50/p99
before, around and after the replacement.

Run: python -m bench --scenarios upgrade [--connections 32] (or python -m bench.upgrade). The origin is
bench/outage.py's (GET /hot/<k>, 1 KiB, max-age=2); the load is its client (CONNECTIONS keep-alive
connections; a connection error counts as an error and the connection is reopened; a response with
Connection: close reopens without an error). The replacement happens BEFORE s into the load; "around" is the
AROUND s from then on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from .outage import HOT, Sample, _load, _pct
from .servers import REPO, Supervisor, find_edgecore, free_port, log, run_each, wait_http


def _phase(samples: list[Sample], lo: float, hi: float) -> dict[str, float]:
    ph = [s for s in samples if lo <= s.t < hi]
    return {
        "requests": len(ph),
        "errors": sum(not s.ok for s in ph),
        "p50": _pct([s.ms for s in ph], 50),
        "p99": _pct([s.ms for s in ph], 99),
    }


def run_one(how: str, a: argparse.Namespace, sup: Supervisor, run: Path, edge_cmd: list[str]) -> dict:
    oport = free_port()
    origin_argv = [sys.executable, "-m", "bench.outage", "--origin", str(oport)]
    origin = sup.start(f"origin-{how}", origin_argv, cwd=REPO)
    wait_http(sup, origin, oport, "/hot/0", 10)
    port, admin = free_port(), free_port()
    cache_file = str(run / f"{how}.cache")
    argv = [*edge_cmd, "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    argv += ["--upstream", f"http://127.0.0.1:{oport}", "--workers", str(a.workers), "--cache-size", "64MiB"]
    argv += ["--cache-file", cache_file, "--drain-delay", "0"]
    old = sup.start(f"edgecore-{how}-old", argv, cwd=REPO)
    wait_http(sup, old, admin, "/readyz", 30)
    import http.client

    for k in range(HOT):  # warm: every key stored
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", f"/hot/{k}")
        c.getresponse().read()
        c.close()
    samples: list[Sample] = []
    t0 = time.monotonic()
    total = a.before + a.around + a.after
    ctl = cache_file + ".ctl"
    swapped = [0.0, 0.0]

    async def drive() -> None:
        load = asyncio.ensure_future(_load(port, total, a.connections, samples, t0))
        await asyncio.sleep(a.before)
        swapped[0] = time.monotonic() - t0
        if how == "upgrade":
            log("upgrade: starting the new edgecore with --upgrade-from")
            new = sup.start(f"edgecore-{how}-new", [*argv, "--upgrade-from", ctl], cwd=REPO)
        else:
            log("restart: stopping the old edgecore, then starting it again")
            old.popen.terminate()
            await asyncio.get_running_loop().run_in_executor(None, old.popen.wait)
            new = sup.start(f"edgecore-{how}-new", argv, cwd=REPO)
        await asyncio.get_running_loop().run_in_executor(None, wait_http, sup, new, admin, "/readyz", 30)
        swapped[1] = time.monotonic() - t0
        await load

    asyncio.run(drive())
    return {
        "how": how,
        "swap_s": swapped[1] - swapped[0],
        "before": _phase(samples, 0, a.before),
        "around": _phase(samples, a.before, a.before + a.around),
        "after": _phase(samples, a.before + a.around, total),
    }


def render(results: list[dict], a: argparse.Namespace) -> str:
    lines = [
        f"#### Upgrade under load ({a.connections} keep-alive connections, {a.workers} worker(s), "
        f"{HOT} hot keys, 1 KiB)",
        "",
        "| replaced by | failed requests before | failed around (first "
        f"{a.around:g} s) | failed after | p50 / p99 before (ms) | p50 / p99 around (ms) | requests around |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, ar, af = r["before"], r["around"], r["after"]
        lines.append(
            f"| {r['how']} | {b['errors']:.0f} | {ar['errors']:.0f} | {af['errors']:.0f} "
            f"| {b['p50']:.1f} / {b['p99']:.1f} | {ar['p50']:.1f} / {ar['p99']:.1f} | {ar['requests']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__.split("\n")[0])
    ap.add_argument("--hows", default="upgrade,restart", help="upgrade, restart or both (default)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--before", type=float, default=3.0)
    ap.add_argument("--around", type=float, default=4.0)
    ap.add_argument("--after", type=float, default=3.0)
    ap.add_argument("--edgecore-cmd", help="command that runs edgecore (default: this checkout)")
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    edge_cmd = a.edgecore_cmd.split() if a.edgecore_cmd else find_edgecore()
    hows = [h for h in a.hows.split(",") if h]
    results = run_each("edgecore-upgrade-", hows, lambda how, sup, run: run_one(how, a, sup, run, edge_cmd))
    md = render(results, a)
    if a.out:
        a.out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
