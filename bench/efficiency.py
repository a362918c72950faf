"""Memory efficiency through the proxy: how many objects a byte budget holds, edgecore beside Varnish.

For each body size (and a fixed mix of sizes) and each `--cache-size`, a fresh `edgecore serve` and a fresh
`varnishd -s malloc,<size>` are each sent more distinct cacheable objects of that size than fit (wrk with
lua/fill.lua against an nginx origin, conf/efficiency-origin.nginx.conf). Then edgecore's `/stats` gives
`cache.items` and `cache.data_bytes` (key + stored head + body bytes of the live objects) and
`varnishstat -1 -f MAIN.n_object` gives Varnish's object count. The table has, per row: edgecore items,
Varnish objects, their ratio, and the share of edgecore's budget holding key + head + body
(data_bytes / capacity_bytes). Varnish keeps its per-object metadata outside the -s malloc budget;
edgecore counts everything inside.

Owns: the fill load, the per-row start/fill/read/stop cycle and the efficiency table.
Invariants: every row starts from empty caches; each system gets exactly the same requests (same paths,
same count: each wrk thread stops after its share, and the run ends when the origin has answered them all,
or at the row's time bound, which is then reported); every process is started and stopped through
servers.Supervisor by PID; only 127.0.0.1 is bound.
Never: a test (no assertions about figures); run it as `python -m bench.efficiency [--capacities 8MiB,64MiB]
[--sizes 100,200,...] [--max-requests N]`. Rows needing more than --max-requests requests are skipped and
listed, so a 1 GiB run of small objects is bounded by what you allow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .servers import (
    CONF_DIR,
    REPO,
    SkipSystem,
    Supervisor,
    edgecore_argv,
    find_edgecore,
    free_port,
    http_get,
    log,
    render_template,
    wait_http,
)
from .wrkrun import LUA_DIR, parse_wrk_json

DEFAULT_SIZES = [100, 200, 500, 1500, 4200, 8500, 16500, 40000, 70000, 150000, 300000, 1000000]
MIX_MAX = 150000  # the mixed run draws from the default sizes up to this one
FILL_FACTOR = 1.3  # distinct objects sent = FILL_FACTOR x capacity / body size


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("ib", "").replace("b", "")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


class Rig:
    """The run folder, the origin, and one system at a time."""

    def __init__(self, run_dir: Path, workers: int, threads: int, conns: int):
        self.run_dir = run_dir
        self.workers = workers
        self.threads = threads
        self.conns = conns
        for d in ("www/eff", "log", "tmp"):
            (run_dir / d).mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o755)
        self.sup = Supervisor(run_dir / "log")
        self.origin_port = 0

    def body(self, size: int) -> None:
        path = self.run_dir / "www" / "eff" / f"{size}.bin"
        if not path.exists():
            path.write_bytes((b"0123456789abcdef" * (size // 16 + 1))[:size])

    def start_origin(self) -> None:
        self.origin_port = free_port()
        conf = self.run_dir / "origin.nginx.conf"
        conf.write_text(
            render_template(
                (CONF_DIR / "efficiency-origin.nginx.conf").read_text(),
                {
                    "RUN": self.run_dir,
                    "ORIGIN_PORT": self.origin_port,
                    "USER_LINE": "user root;" if os.geteuid() == 0 else "",
                },
            )
        )
        argv = ["nginx", "-p", str(self.run_dir), "-c", str(conf), "-e", str(self.run_dir / "log" / "o.err")]
        proc = self.sup.start("origin", argv)
        wait_http(self.sup, proc, self.origin_port, "/ping", 10)

    def origin_requests(self) -> int:
        body = http_get(self.origin_port, "/__origin_status")[2].decode()
        return int(body.splitlines()[2].split()[2]) - 1  # minus this request

    def fill(self, port: int, sizes: list[int], total: int, bound_s: float) -> tuple[int, bool]:
        """Send `total` distinct requests (split over the wrk threads); returns (origin requests it caused,
        completed within the bound)."""
        per_thread = math.ceil(total / self.threads)
        expect = per_thread * self.threads
        before = self.origin_requests()
        argv = [
            "wrk",
            f"-t{self.threads}",
            f"-c{max(self.conns, self.threads)}",
            f"-d{int(bound_s) + 5}s",
            "-s",
            str(LUA_DIR / "fill.lua"),
            f"http://127.0.0.1:{port}/",
            "--",
            uuid.uuid4().hex[:10],
            str(per_thread),
            ",".join(map(str, sizes)),
        ]
        env = dict(os.environ, BENCH_LUA_DIR=str(LUA_DIR))
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        done = False
        deadline = time.monotonic() + bound_s
        try:
            while time.monotonic() < deadline and wrk.poll() is None:
                if self.origin_requests() - before >= expect:
                    done = True
                    break
                time.sleep(0.25)
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)
            out, _ = wrk.communicate(timeout=30)
        res = parse_wrk_json(out)
        if res is not None and res.errors:
            log(f"wrk errors: {res.errors}")
        settled = self.origin_requests() - before
        return settled, done or settled >= expect

    # -- systems
    def start_edgecore(self, cap: int) -> tuple[object, int, int]:
        port, admin = free_port(), free_port()
        argv = edgecore_argv(find_edgecore(), port, admin, self.origin_port, self.workers, cap)
        proc = self.sup.start("edgecore", argv, cwd=REPO)
        wait_http(self.sup, proc, admin, "/healthz", 60)
        wait_http(self.sup, proc, port, "/ping", 10)
        return proc, port, admin

    def start_varnish(self, cap: int) -> tuple[object, int, Path]:
        if not shutil.which("varnishd"):
            raise SkipSystem("varnishd is not installed (apt-get install varnish)")
        port, admin = free_port(), free_port()
        name = self.run_dir / f"varnish-{uuid.uuid4().hex[:6]}"
        argv = [
            "varnishd",
            "-F",
            "-n",
            str(name),
            "-a",
            f"127.0.0.1:{port}",
            "-b",
            f"127.0.0.1:{self.origin_port}",
            "-T",
            f"127.0.0.1:{admin}",
            "-s",
            f"malloc,{cap >> 10}k",
            "-p",
            f"thread_pools={self.workers}",
            "-p",
            "nuke_limit=1000",
        ]
        if os.geteuid() == 0:
            argv += ["-j", "none"]
        proc = self.sup.start("varnish", argv)
        wait_http(self.sup, proc, port, "/ping", 30)
        return proc, port, name


def varnish_objects(name: Path) -> int:
    out = subprocess.run(
        ["varnishstat", "-n", str(name), "-1", "-f", "MAIN.n_object"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return int(out.split()[1])


def run_row(rig: Rig, cap: int, label: str, sizes: list[int], total: int, bound_s: float) -> dict:
    row: dict = {"capacity": cap, "size": label, "requests": total}
    proc, port, admin = rig.start_edgecore(cap)
    try:
        t0 = time.monotonic()
        sent, complete = rig.fill(port, sizes, total, bound_s)
        st = json.loads(http_get(admin, "/stats")[2])["cache"]
        row.update(
            edgecore_items=st["items"],
            edgecore_data_bytes=st["data_bytes"],
            edgecore_share=st["data_bytes"] / st["capacity_bytes"],
            edgecore_evictions=st["evictions"],
            edgecore_refused=st.get("refused", 0),
            edgecore_complete=complete,
            edgecore_fill_s=round(time.monotonic() - t0, 1),
            edgecore_origin_requests=sent,
        )
    finally:
        rig.sup.stop(proc)  # type: ignore[arg-type]
        rig.sup.procs.remove(proc)  # type: ignore[arg-type]
    try:
        vproc, vport, vname = rig.start_varnish(cap)
    except SkipSystem as e:
        row["varnish_skipped"] = str(e)
        return row
    try:
        t0 = time.monotonic()
        sent, complete = rig.fill(vport, sizes, total, bound_s)
        n = varnish_objects(vname)
        row.update(
            varnish_objects=n,
            varnish_complete=complete,
            varnish_fill_s=round(time.monotonic() - t0, 1),
            ratio=row["edgecore_items"] / n if n else float("nan"),
        )
    finally:
        rig.sup.stop(vproc)  # type: ignore[arg-type]
        rig.sup.procs.remove(vproc)  # type: ignore[arg-type]
    return row


def human(n: int) -> str:
    for unit, sh in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << sh and n % (1 << sh) == 0:
            return f"{n >> sh} {unit}"
    return f"{n} B"


def table(rows: list[dict]) -> str:
    out = [
        "| cache size | body size | edgecore items | Varnish objects | edgecore ÷ Varnish | "
        "share of the budget holding key + head + body |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = r["size"] if r["size"] == "mixed" else f"{int(r['size']):,} B"
        v = r.get("varnish_objects")
        vs = f"{v:,}" if v is not None else "skipped"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        flag = "" if r.get("edgecore_complete", True) and r.get("varnish_complete", True) else " (bound hit)"
        out.append(
            f"| {human(r['capacity'])} | {size} | {r['edgecore_items']:,} | {vs} | {ratio} | "
            f"{r['edgecore_share']:.2f}{flag} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.split("\n")[0])
    ap.add_argument("--capacities", default="8MiB,64MiB", help="comma-separated --cache-size values")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="body sizes in bytes")
    ap.add_argument("--no-mixed", action="store_true", help="skip the mixed-size row")
    ap.add_argument(
        "--mixed-fill", type=float, default=FILL_FACTOR, help="mixed row: capacities' worth of objects sent"
    )
    ap.add_argument("--max-requests", type=int, default=400_000, help="skip rows needing more requests")
    ap.add_argument("--bound", type=float, default=240.0, help="seconds each fill may take at most")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    caps = [parse_size(c) for c in args.capacities.split(",") if c]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    plan: list[tuple[int, str, list[int], int]] = []
    skipped: list[str] = []
    for cap in caps:
        max_obj = min(1 << 20, cap // 8)
        runs = [(str(s), [s]) for s in sizes if s + 1024 <= max_obj]
        if not args.no_mixed:
            runs.append(("mixed", [s for s in DEFAULT_SIZES if s <= MIX_MAX]))
        for label, ss in runs:
            mean = sum(ss) / len(ss)
            fill = args.mixed_fill if label == "mixed" else FILL_FACTOR
            total = max(400, math.ceil(fill * cap / mean))
            if total > args.max_requests:
                skipped.append(f"{human(cap)} x {label} B ({total:,} requests > --max-requests)")
                continue
            plan.append((cap, label, ss, total))
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"[bench] {tool} is missing (apt-get install {tool})")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgecore-eff-") as tmp:
        rig = Rig(Path(tmp), args.workers, args.threads, args.connections)
        try:
            for s in DEFAULT_SIZES + sizes:
                rig.body(s)
            rig.start_origin()
            for cap, label, ss, total in plan:
                log(f"row: cache {human(cap)}, body {label}, {total:,} distinct requests")
                row = run_row(rig, cap, label, ss, total, args.bound)
                log(json.dumps(row))
                rows.append(row)
        finally:
            rig.sup.stop_all()
    print(table(rows))
    if skipped:
        print("\nskipped: " + "; ".join(skipped))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
