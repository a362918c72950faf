"""Scenarios and the measurement of one run: load, CPU of the server's processes, upstream requests.

Owns: the scenario table, the pre-run verification (exact bytes, hit headers), warm-up, and measure_*().
Invariants: during a run only one system is loaded; the origin's request counter is read just before and just
after, so upstream requests per client request are measured, not assumed; CPU is the utime+stime delta of
the server's whole process tree (all workers), read from /proc.
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from . import procstat, stats
from .servers import REPO, Lab, System, http_get, log, pin_tree
from .wrkrun import LUA_DIR, run_wrk, wrk_command


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # hit | miss | zipf | storm
    title: str
    what: str
    path: str = "/"

    @property
    def uses_wrk(self) -> bool:
        return self.kind != "storm"


SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            "hit-1k",
            "hit",
            "Hits, 1 KiB",
            "GET /b1k.json over and over: every request a cache hit",
            "/b1k.json",
        ),
        Scenario("hit-16k", "hit", "Hits, 16 KiB", "GET /b16k.json: every request a cache hit", "/b16k.json"),
        Scenario(
            "hit-256k", "hit", "Hits, 256 KiB", "GET /b256k.json: every request a cache hit", "/b256k.json"
        ),
        Scenario(
            "hit-1m",
            "hit",
            "Hits, 1 MB",
            "GET /b1m.json (1,000,000 B): every request a hit",
            "/b1m.json",
        ),
        Scenario(
            "miss",
            "miss",
            "Misses (unique keys)",
            "GET /obj?id=<run salt>-<thread>-<n>: no key repeats, every request goes upstream (1 KiB body)",
        ),
        Scenario(
            "zipf",
            "zipf",
            "Zipf over more keys than the cache holds",
            "GET /obj?id=z<k>, k ~ Zipf(s) over KEYS keys of 1 KiB, same key space every run (steady state)",
        ),
        Scenario(
            "storm",
            "storm",
            "Coalescing storm",
            "CLIENTS clients send GET /slow/<fresh key> at the same instant; the origin answers after DELAY",
        ),
    ]
}
FULL = ["hit-1k", "hit-16k", "hit-256k", "hit-1m", "miss", "zipf", "storm"]
QUICK = ["hit-1k", "zipf", "storm"]


@dataclass
class Settings:
    rounds: int
    duration: float
    warmup: float
    connections: int
    zipf_keys: int
    zipf_s: float
    storm_clients: int
    pause: float = 0.5
    retries: int = 1  # re-runs of a run during which other processes used the server's cores
    seed: int = 1


def systems_for(scn: Scenario, lab: Lab) -> list[System]:
    # the ceiling has no cache and no upstream: a storm against it measures nothing
    return [s for s in lab.systems.values() if scn.kind != "storm" or s.is_cache]


# ---------------------------------------------------------------- verification
def verify(lab: Lab, sysm: System, scn: Scenario) -> str:
    """'OK ...' or 'FAIL ...': fetch twice, the 2nd must be the exact bytes and (for caches) a hit."""
    if scn.kind == "hit":
        want = lab.bodies[scn.name.split("-")[1]]
        path = scn.path
    elif scn.kind in ("miss", "zipf"):
        want = lab.bodies["1k"]
        path = f"/obj?id=verify-{random.randrange(1 << 40)}"
    else:
        return "OK (checked by the upstream count)"
    problems = []
    st1, h1, b1 = http_get(sysm.port, path)
    st2, h2, b2 = http_get(sysm.port, path)
    if (st1, st2) != (200, 200):
        problems.append(f"status {st1}/{st2}")
    if b1 != want or b2 != want:
        problems.append(f"body {len(b1)}/{len(b2)} B, origin has {len(want)} B")
    if sysm.is_cache and sysm.hit is not None:
        if not sysm.hit(h2):
            problems.append("2nd response is not a hit")
        if scn.kind != "hit" and sysm.hit(h1):
            problems.append("1st response for a new key is a hit")
    return ("FAIL " + "; ".join(problems)) if problems else "OK"


# ---------------------------------------------------------------- runs
def _wrk_args(scn: Scenario, st: Settings, rnd: int, sysm: System) -> tuple[str, list[str] | None]:
    if scn.kind == "hit":
        return str(LUA_DIR / "report.lua"), None
    if scn.kind == "miss":
        return str(LUA_DIR / "miss.lua"), [f"r{rnd}-{sysm.key}-{time.time_ns()}"]
    return str(LUA_DIR / "zipf.lua"), [str(st.zipf_keys), str(st.zipf_s), str(st.seed * 1000 + rnd)]


def _wrk_cmd(lab: Lab, sysm: System, scn: Scenario, st: Settings, rnd: int, duration: float) -> list[str]:
    script, args = _wrk_args(scn, st, rnd, sysm)
    return wrk_command(
        f"http://127.0.0.1:{sysm.port}{scn.path}",
        duration=duration,
        connections=st.connections,
        threads=len(lab.load_cpus),
        script=script,
        script_args=args,
        cpus=lab.load_cpus,
    )


def warm_up(lab: Lab, sysm: System, scn: Scenario, st: Settings) -> None:
    if not scn.uses_wrk or st.warmup <= 0:
        return
    pin_tree(sysm.pid, lab.sut_cpus)
    # the Zipf load needs longer to fill the cache to its steady state
    dur = st.warmup * (2 if scn.kind == "zipf" else 1)
    r = run_wrk(_wrk_cmd(lab, sysm, scn, st, -1, dur))
    log(f"warm-up {scn.name} {sysm.key}: {r.rps:,.0f} req/s")


class _Meter:
    """CPU of the server's tree, per-core busy/steal and the origin counter around one run."""

    def __init__(self, lab: Lab, sysm: System):
        self.lab, self.sysm = lab, sysm

    def __enter__(self):
        pin_tree(self.sysm.pid, self.lab.sut_cpus)
        self.o0 = self.lab.origin_requests()
        self.t0 = procstat.tree_ticks([self.sysm.pid])
        self.r0 = procstat.tree_runtime([self.sysm.pid])
        self.c0 = procstat.cpu_snapshot()
        self.w0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        self.t1 = procstat.tree_ticks([self.sysm.pid])
        self.r1 = procstat.tree_runtime([self.sysm.pid])
        self.c1 = procstat.cpu_snapshot()
        self.wall = time.monotonic() - self.w0
        self.o1 = self.lab.origin_requests()
        return False

    def record(self) -> dict:
        # the scheduler's ns-precision runtime when the kernel shows it, else utime+stime in 10 ms ticks
        if self.r0 is not None and self.r1 is not None:
            cpu_s, source = procstat.runtime_delta_seconds(self.r0, self.r1), "sched"
        else:
            cpu_s, source = procstat.tree_delta_seconds(self.t0, self.t1), "ticks"
        use = procstat.core_use(self.c0, self.c1)
        sut_busy = sum(use[c].busy for c in self.lab.sut_cpus if c in use)
        return {
            "cpu_s": cpu_s,
            "cpu_source": source,
            "cpu_s_ticks": procstat.tree_delta_seconds(self.t0, self.t1),
            "wall_s": self.wall,
            "upstream": self.o1 - self.o0 - 1,  # minus the counter's own 2nd request
            # cores' worth of CPU used on the server's cores by anything else (other tenants, idle servers)
            "other_cpu": round(max(0.0, sut_busy - cpu_s / self.wall), 3) if self.wall else None,
            "steal": round(max((use[c].steal for c in use), default=0.0), 4),
        }


def measure_wrk(lab: Lab, sysm: System, scn: Scenario, st: Settings, rnd: int) -> dict:
    cmd = _wrk_cmd(lab, sysm, scn, st, rnd, st.duration)
    if scn.kind == "hit":
        # the miss and Zipf runs in between may have evicted the object: store it again, outside the
        # measurement, so that a hit run measures hits (upstream/req then shows any later re-fetch)
        for _ in range(2):
            try:
                http_get(sysm.port, scn.path)
            except (OSError, http.client.HTTPException) as e:
                log(f"priming GET {scn.path} on {sysm.key} failed: {e!r}")
    with _Meter(lab, sysm) as m:
        r = run_wrk(cmd)
    rec = m.record()
    rec.update(
        system=sysm.key,
        scenario=scn.name,
        round=rnd,
        requests=r.requests,
        rps=r.rps,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        p999_ms=r.p999_ms,
        max_ms=r.max_ms,
        errors=r.errors,
        wrk_cpu=r.cpu_s / m.wall if m.wall else None,
        bytes_per_resp=r.bytes / r.requests if r.requests else 0,
    )
    rec["cpu_us_per_req"] = rec["cpu_s"] / r.requests * 1e6 if r.requests else None
    rec["upstream_per_req"] = rec["upstream"] / r.requests if r.requests else None
    return rec


def measure_storm(lab: Lab, sysm: System, scn: Scenario, st: Settings, rnd: int) -> dict:
    key = f"/slow/r{rnd}-{sysm.key}-{time.time_ns()}"
    cmd = [
        "taskset",
        "-c",
        ",".join(map(str, lab.load_cpus)),
        sys.executable,
        "-m",
        "bench.storm",
        "--port",
        str(sysm.port),
        "--path",
        key,
        "--clients",
        str(st.storm_clients),
    ]
    with _Meter(lab, sysm) as m:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    if out.returncode != 0 or "STORMJSON " not in out.stdout:
        raise RuntimeError(f"storm client failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    res = json.loads(out.stdout.split("STORMJSON ", 1)[1])
    lat = res["latencies_ms"]
    rec = m.record()
    n = res["clients"]
    rec.update(
        system=sysm.key,
        scenario=scn.name,
        round=rnd,
        requests=n,
        ok=res["ok"],
        rps=n / res["wall_s"],
        p50_ms=stats.percentile(lat, 50),
        p99_ms=stats.percentile(lat, 99),
        p999_ms=stats.percentile(lat, 99.9),
        max_ms=max(lat) if lat else None,
        errors={"failed": res["errors"]} if res["errors"] else {},
        statuses=res["statuses"],
        wrk_cpu=None,
    )
    rec["cpu_us_per_req"] = rec["cpu_s"] / n * 1e6 if n else None
    rec["upstream_per_req"] = rec["upstream"] / n if n else None
    return rec


def run_rounds(
    lab: Lab, scenarios: list[Scenario], st: Settings, runs: list[dict], failures: list[str]
) -> None:
    """Interleaved rounds: in every round each scenario (in a shuffled order) runs every system (shuffled),
    so slow drift of a noisy machine falls on all systems alike and a system's references run seconds away."""
    total = st.rounds * sum(len(systems_for(s, lab)) for s in scenarios)
    done = 0
    for rnd in range(st.rounds):
        rng = random.Random(st.seed * 7919 + rnd)
        order = list(scenarios)
        rng.shuffle(order)
        for scn in order:
            syss = systems_for(scn, lab)
            rng.shuffle(syss)
            for sysm in syss:
                tries = []
                for attempt in range(st.retries + 1):
                    measure = measure_storm if scn.kind == "storm" else measure_wrk
                    try:
                        tries.append(measure(lab, sysm, scn, st, rnd))
                    except Exception as e:  # one failed run must not end the whole bench
                        log(f"round {rnd} {scn.name} {sysm.key}: run FAILED: {e!r}"[:2000])
                        failures.append(f"round {rnd} {scn.name} {sysm.key}: {str(e).splitlines()[0][:200]}")
                        break
                    other = tries[-1]["other_cpu"] or 0.0
                    if other <= stats.NOISY_OTHER_CPU or attempt == st.retries:
                        break
                    log(
                        f"round {rnd} {scn.name} {sysm.key}: other processes used {other:.2f} of the "
                        "server's cores during the run; running it again"
                    )
                    time.sleep(st.pause * 4)
                if not tries:
                    continue
                # the least disturbed attempt counts; how many it took is kept in the raw data
                rec = min(tries, key=lambda r: r["other_cpu"] or 0.0)
                rec["attempts"] = len(tries)
                runs.append(rec)
                done += 1
                log(
                    f"[{done}/{total}] round {rnd} {scn.name:8} {sysm.key:8} {rec['rps']:>9,.0f} req/s "
                    f"p99 {rec['p99_ms'] or 0:7.2f} ms  cpu {rec['cpu_us_per_req'] or 0:7.1f} us/req "
                    f"upstream/req {rec['upstream_per_req'] or 0:.3f}"
                    + (f"  errors {rec['errors']}" if rec["errors"] else "")
                )
                time.sleep(st.pause)
