"""`python -m bench`: edgecore side by side with nginx proxy_cache, Varnish and the Python ceiling.

Owns: the command line, the run's life cycle (temporary folder, start, verify, warm up, interleaved rounds,
report, stop everything by PID even on Ctrl-C), the output names, the optional py-spy profile.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import report, runner, servers
from .servers import BENCH_DIR, REPO, Lab, Supervisor, log
from .wrkrun import run_wrk, wrk_command

RESULTS = BENCH_DIR / "results"
SYSTEM_KEYS = ["edgecore", "nginx", "varnish", "ceiling"]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 16MiB")
    return int(m.group(1)) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2) or "B"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load edgecore, nginx proxy_cache, Varnish and a bare uvloop+httptools server "
        "(the Python ceiling) with the same wrk loads, in interleaved rounds, and write a markdown table "
        "and a PNG chart to bench/results/.",
    )
    ap.add_argument(
        "--quick", action="store_true", help="3 rounds x 5 s, scenarios hit-1k, zipf, storm (~3 min)"
    )
    ap.add_argument("--scenarios", help=f"comma list from {','.join(runner.SCENARIOS)} (default: all)")
    ap.add_argument("--systems", default=",".join(SYSTEM_KEYS), help="comma list (default: %(default)s)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="workers for every system (edgecore --workers, nginx "
        "worker_processes, Varnish thread pools, ceiling processes); default %(default)s",
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    ap.add_argument("--duration", type=float, help="seconds per run (default 10, quick 5)")
    ap.add_argument(
        "--warmup", type=float, help="seconds of warm-up per system and scenario (default 3, quick 2)"
    )
    ap.add_argument(
        "--retries",
        type=int,
        help="re-runs of a run disturbed by other processes on "
        "the server's cores; the least disturbed attempt counts (default 1, quick 0)",
    )
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default %(default)s)")
    ap.add_argument(
        "--cache-size",
        type=parse_size,
        default=parse_size("16MiB"),
        help="cache memory for edgecore, nginx max_size and Varnish malloc (default 16MiB)",
    )
    ap.add_argument(
        "--zipf-keys",
        type=int,
        default=200_000,
        help="Zipf key space, 1 KiB objects; must exceed what the cache holds (default %(default)s)",
    )
    ap.add_argument("--zipf-s", type=float, default=0.99, help="Zipf exponent (default %(default)s)")
    ap.add_argument(
        "--storm-clients", type=int, default=256, help="clients in the storm (default %(default)s)"
    )
    ap.add_argument("--storm-delay", type=float, default=0.5, help="origin delay for the storm key, s")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also record a py-spy flame graph (SVG) of edgecore "
        "(of the ceiling when edgecore is absent) under the 1 KiB hit load",
    )
    ap.add_argument(
        "--edgecore-cmd",
        help="command that runs edgecore (default: the venv's `edgecore`); the bench "
        "appends `serve --listen ... --admin ... --upstream ... --workers N --cache-size SIZE`",
    )
    ap.add_argument("--install", action="store_true", help="apt-get install missing wrk/nginx/varnish (root)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument("--no-readme", action="store_true", help="do not update README.md and bench/README.md")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (configs, logs)")
    ap.add_argument("--from-raw", type=Path, help="only re-render the table/chart from a .raw.json of a run")
    return ap


# ---------------------------------------------------------------- facts about the machine and the code
def git_commit() -> tuple[str, bool]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--", "edgecore", "ext"))
    return commit, dirty


def machine() -> tuple[str, str]:
    model = "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", lscpu)
        h = re.search(r"Hypervisor vendor:\s*(.+)", lscpu)
        model = (m.group(1).strip() if m else "?") + (f" ({h.group(1).strip()} VM)" if h else "")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / (1 << 20):.0f} GiB RAM"
    except OSError:
        mem = "?"
    n = os.cpu_count()
    return f"{n} CPUs, {model}, {mem}, Linux {platform.release()}", f"{n} CPUs, {model}"


def versions() -> str:
    import httptools
    import uvloop

    edge = "?"
    try:
        from importlib.metadata import version

        edge = version("edgecore")
    except Exception:
        pass
    return (
        f"edgecore {edge}, nginx {servers.nginx_version()}, varnish {servers.varnish_version()}, "
        f"wrk {servers.wrk_version()}, Python {platform.python_version()} (uvloop {uvloop.__version__}, "
        f"httptools {httptools.__version__})"
    )


def split_cpus() -> tuple[list[int], list[int], str | None]:
    """(server cores, load generator cores, warning). Load gets the first allowed core, servers the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return [], [], "fewer than 2 CPUs: server and wrk share the core, nothing is pinned"
    return allowed[1:], allowed[:1], None


# ---------------------------------------------------------------- profile
def profile(lab: Lab, st: runner.Settings, out_svg: Path) -> str | None:
    """py-spy flame graph of edgecore (else the ceiling) under 1 KiB hits; returns what was profiled."""
    target = lab.systems.get("edgecore") or lab.systems.get("ceiling")
    if target is None:
        log("--profile: neither edgecore nor the ceiling is running; no flame graph")
        return None
    pyspy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if not pyspy:
        log("--profile: py-spy is missing: pip install -e '.[bench]' (or pip install py-spy); no flame graph")
        return None
    if target.key != "edgecore":
        log("--profile: edgecore is not running; profiling the Python ceiling instead")
    dur = max(5, int(st.duration))
    cmd = [
        pyspy,
        "record",
        "--pid",
        str(target.pid),
        "--subprocesses",
        "--rate",
        "250",
        "--nonblocking",
        "--duration",
        str(dur + 1),
        "--format",
        "flamegraph",
        "--output",
        str(out_svg),
    ]
    if lab.load_cpus:
        cmd = ["taskset", "-c", ",".join(map(str, lab.load_cpus)), *cmd]
    spy = lab.sup.start("py-spy", cmd)
    time.sleep(1)
    run_wrk(
        wrk_command(
            f"http://127.0.0.1:{target.port}/b1k.json",
            duration=dur,
            connections=st.connections,
            threads=max(1, len(lab.load_cpus)),
            cpus=lab.load_cpus,
        )
    )
    try:
        spy.popen.wait(30)
    except subprocess.TimeoutExpired:
        log("py-spy did not finish in time")
    if spy.popen.returncode != 0 or not out_svg.exists():
        log(f"py-spy failed ({spy.popen.returncode}):\n{lab.sup.tail(spy)}")
        return None
    return target.label


# ---------------------------------------------------------------- main
def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus)) or "-"


def _caveats(st: runner.Settings, lab: Lab | None) -> list[str]:
    out = [
        "Loopback TCP on one machine: part of each side's network cost is charged to the other side, and the "
        "fastest systems can saturate wrk's single core (then req/s is a lower bound; compare CPU µs/req).",
        "Compare ratios within one run; absolute numbers move between runs and machines.",
        f"Zipf: {st.zipf_keys:,} keys of 1 KiB against the same byte budget for every cache; each system "
        "counts its own overhead (nginx stores a file per object on tmpfs, rounded to 4 KiB pages), so the "
        "number of objects each holds differs. Hit ratio = 1 - upstream/req, measured at the origin.",
        "nginx coalesces with proxy_cache_lock, whose waiters poll every 500 ms: its storm latency shows "
        "it, and so does its Zipf p99.9 (concurrent misses on one popular key wait for the lock).",
        "CPU time: the scheduler's per-thread runtime (/proc/<pid>/task/<tid>/sched, ns precision) of the "
        "whole process tree, else utime+stime ticks (10 ms); the CPU of a thread that exits mid-run is lost.",
    ]
    if lab and lab.workers > 1 and len(lab.sut_cpus) < lab.workers:
        out.append(
            f"--workers {lab.workers} with {len(lab.sut_cpus)} server core(s): the workers share the "
            "core(s); this measures multi-worker overhead, not scaling."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.from_raw:
        raw = json.loads(a.from_raw.read_text())
        md_path = a.from_raw.resolve().with_name(a.from_raw.name.replace(".raw.json", ".md"))
        png = md_path.with_suffix(".png")
        try:
            report.render_chart(raw["runs"], raw["meta"], png)
        except ImportError:
            png = None
        md = report.render_markdown(raw["runs"], raw["meta"], raw.get("checks"))
        md_path.write_text(md)
        if not a.no_readme and md_path.resolve().parent == RESULTS.resolve():
            for readme in (BENCH_DIR / "README.md", BENCH_DIR.parent / "README.md"):
                report.update_readme(readme, md_path, png, md, raw["meta"])
        print(md)
        return 0

    names = a.scenarios.split(",") if a.scenarios else (runner.QUICK if a.quick else runner.FULL)
    if names == ["outage"]:  # its own instrument (bench/outage.py): the origin is killed mid-run
        from . import outage

        keys = [k for k in a.systems.split(",") if k in ("edgecore", "nginx", "varnish")]
        args = ["--systems", ",".join(keys), "--connections", str(min(a.connections, 32))]
        if a.duration:
            args += ["--outage", str(a.duration)]
        if a.edgecore_cmd:
            args += ["--edgecore-cmd", a.edgecore_cmd]
        return outage.main(args)
    if names == ["upgrade"]:  # its own instrument (bench/upgrade.py): edgecore replaced mid-run
        from . import upgrade

        args = ["--connections", str(min(a.connections, 32)), "--workers", str(a.workers)]
        if a.edgecore_cmd:
            args += ["--edgecore-cmd", a.edgecore_cmd]
        return upgrade.main(args)
    unknown = [n for n in names if n not in runner.SCENARIOS]
    keys = [k for k in a.systems.split(",") if k]
    bad_sys = [k for k in keys if k not in SYSTEM_KEYS]
    if unknown or bad_sys:
        print(f"unknown scenario(s) {unknown} / system(s) {bad_sys}", file=sys.stderr)
        return 2
    st = runner.Settings(
        rounds=a.rounds or (3 if a.quick else 5),
        duration=a.duration or (5 if a.quick else 10),
        warmup=a.warmup if a.warmup is not None else (2 if a.quick else 3),
        connections=a.connections,
        zipf_keys=a.zipf_keys,
        zipf_s=a.zipf_s,
        storm_clients=a.storm_clients,
        retries=a.retries if a.retries is not None else (0 if a.quick else 1),
    )
    if "zipf" in names and a.zipf_keys * 1024 <= a.cache_size:
        print(
            f"--zipf-keys {a.zipf_keys} x 1 KiB fits in --cache-size; raise the keys or lower the size",
            file=sys.stderr,
        )
        return 2
    notes = servers.check_tools(install=a.install, want_varnish="varnish" in keys)
    edge_cmd = shlex.split(a.edgecore_cmd) if a.edgecore_cmd else None
    sut_cpus, load_cpus, warn = split_cpus()
    if warn:
        notes.append(warn)
        log("WARNING:", warn)

    # SIGTERM / SIGHUP end the run like Ctrl-C does: through the finally below, which stops every server
    def _stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)

    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="edgecore-bench-", dir=base))
    sup = Supervisor(tmp / "log")
    lab = Lab(tmp, sup, sut_cpus, load_cpus, a.workers, a.cache_size, a.storm_delay)
    runs: list[dict] = []
    failures: list[str] = []
    checks: dict[str, str] = {}
    scenarios = [runner.SCENARIOS[n] for n in names]
    started = datetime.datetime.now().astimezone()
    commit, dirty = git_commit()
    stem = f"{started:%Y-%m-%d-%H%M}-{commit}" + ("-quick" if a.quick else "")
    a.out.mkdir(parents=True, exist_ok=True)
    interrupted = None
    flame, flame_of = None, None
    try:
        lab.setup()
        lab.start_origin()
        lab.start_all(keys, edge_cmd)
        if not lab.systems:
            log("no system could be started")
            return 1
        for scn in scenarios:
            for s in runner.systems_for(scn, lab):
                checks[f"{s.key}|{scn.name}"] = runner.verify(lab, s, scn)
                log(f"check {s.key} {scn.name}: {checks[f'{s.key}|{scn.name}']}")
        for scn in scenarios:
            for s in runner.systems_for(scn, lab):
                runner.warm_up(lab, s, scn, st)
        try:
            runner.run_rounds(lab, scenarios, st, runs, failures)
        except KeyboardInterrupt as e:
            interrupted = f"interrupted ({str(e) or 'Ctrl-C'}) after {len(runs)} runs"
            log(interrupted)
        if a.profile and not interrupted:
            svg = a.out / f"{stem}-flame.svg"
            flame_of = profile(lab, st, svg)
            flame = svg if flame_of else None
    except KeyboardInterrupt as e:
        interrupted = f"interrupted ({str(e) or 'Ctrl-C'}) before the rounds"
        log(interrupted)
    finally:
        sup.stop_all()
        if a.keep_tmp:
            log(f"kept the temporary folder {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not runs:
        return 130 if interrupted else 1

    mach, mach_short = machine()
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit + (" (edgecore/ext modified in the working tree)" if dirty else ""),
        "machine": mach,
        "machine_short": mach_short,
        "versions": versions(),
        "command": "python -m bench "
        + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
        "method": (
            f"wrk -t{max(1, len(load_cpus))} -c{st.connections} on CPU {_cpus(load_cpus)} (origin too), "
            f"servers on CPU {_cpus(sut_cpus)}, {a.workers} worker(s) each;"
            f" {st.rounds} interleaved rounds x {st.duration:g} s after {st.warmup:g} s warm-up per system; "
            f"cache size {a.cache_size >> 20} MiB; zipf {st.zipf_keys:,} keys s={st.zipf_s}; storm "
            f"{st.storm_clients} clients, origin delay {a.storm_delay:g} s"
        ),
        "scenarios": {
            s.name: {
                "title": s.title,
                "what": s.what.replace("CLIENTS", str(st.storm_clients))
                .replace("DELAY", f"{a.storm_delay:g} s")
                .replace("KEYS", f"{st.zipf_keys:,}"),
            }
            for s in scenarios
        },
        "systems": {k: s.describe for k, s in lab.systems.items()},
        "skipped": lab.skipped,
        "notes": notes + ([interrupted] if interrupted else []) + [f"run failed: {f}" for f in failures],
        "caveats": _caveats(st, lab),
    }
    png = a.out / f"{stem}.png"
    try:
        report.render_chart(runs, meta, png)
        meta["chart"] = png.name
    except ImportError:
        log("matplotlib is missing (pip install -e '.[bench]'): no chart")
        png = None
    if flame:
        meta["flamegraph"], meta["flamegraph_of"] = flame.name, flame_of
    md = report.render_markdown(runs, meta, checks)
    md_path = a.out / f"{stem}.md"
    md_path.write_text(md)
    (a.out / f"{stem}.raw.json").write_text(
        json.dumps({"meta": meta, "checks": checks, "runs": runs}, indent=1)
    )
    if not a.no_readme and not interrupted and a.out.resolve() == RESULTS.resolve():
        for readme in (BENCH_DIR / "README.md", BENCH_DIR.parent / "README.md"):
            report.update_readme(readme, md_path, png, md, meta)
    print(md)
    log(f"wrote {md_path}" + (f", {png}" if png else "") + (f", {flame}" if flame else ""))
    return 130 if interrupted else 0
