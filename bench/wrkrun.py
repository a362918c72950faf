"""Running wrk and reading what it prints.

Owns: the wrk command line (pinned with taskset), the WRKJSON line our Lua `done()` prints, and a fallback
parser for wrk's own text summary.
Invariants: parse_* are pure; a run whose output cannot be parsed raises WrkError with the output attached.
Never: targets anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"


class WrkError(RuntimeError):
    pass


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # wrk's own user+sys CPU seconds
    raw: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


_JSON_RE = re.compile(r"^WRKJSON (\{.*\})\s*$", re.MULTILINE)


def parse_wrk_json(out: str) -> WrkResult | None:
    """The machine-readable line printed by lua/report.lua's done(); None when absent."""
    m = _JSON_RE.search(out)
    if not m:
        return None
    d = json.loads(m.group(1))
    errors = {k[4:]: int(v) for k, v in d.items() if k.startswith("err_") and v}
    return WrkResult(
        requests=int(d["requests"]),
        duration_s=d["duration_us"] / 1e6,
        bytes=int(d.get("bytes", 0)),
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000,
        mean_ms=d.get("mean_us", 0) / 1000,
        max_ms=d.get("max_us", 0) / 1000,
        errors=errors,
        raw=out,
    )


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk_text(out: str) -> WrkResult:
    """wrk's human summary (with --latency). p99.9 is not printed by wrk, so it is left at 0."""
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", out, re.MULTILINE)
    if not m:
        raise WrkError(f"no 'N requests in T' line in wrk output:\n{out}")
    res = WrkResult(
        requests=int(m.group(1)),
        duration_s=_ms(m.group(2) + m.group(3)) / 1000,
        bytes=int(float(m.group(4)) * _SIZE[m.group(5)]),
        raw=out,
    )
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        p = re.search(rf"^\s*{pct}%\s+([\d.]+(?:us|ms|s|m|h))\s*$", out, re.MULTILINE)
        if p:
            setattr(res, attr, _ms(p.group(1)))
    lat = re.search(
        r"^\s*Latency\s+([\d.]+(?:us|ms|s|m|h))\s+\S+\s+([\d.]+(?:us|ms|s|m|h))", out, re.MULTILINE
    )
    if lat:
        res.mean_ms, res.max_ms = _ms(lat.group(1)), _ms(lat.group(2))
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        for name, v in zip(("connect", "read", "write", "timeout"), se.groups(), strict=True):
            if int(v):
                res.errors[name] = int(v)
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n2:
        res.errors["status"] = int(n2.group(1))
    return res


def parse_wrk(out: str) -> WrkResult:
    return parse_wrk_json(out) or parse_wrk_text(out)


def wrk_command(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    script: str | None = None,
    script_args: list[str] | None = None,
    cpus: list[int] | None = None,
    timeout_s: int = 10,
) -> list[str]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the bench only loads 127.0.0.1, not {url}")
    cmd = []
    if cpus:
        cmd += ["taskset", "-c", ",".join(map(str, cpus))]
    cmd += [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
    ]
    cmd += ["--latency", "-s", script or str(LUA_DIR / "report.lua"), url]
    if script_args:
        cmd += ["--", *script_args]
    return cmd


def run_wrk(cmd: list[str]) -> WrkResult:
    env = dict(os.environ, BENCH_LUA_DIR=str(LUA_DIR))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert p.stdout is not None
        out = p.stdout.read().decode(errors="replace")
        _, status, ru = os.wait4(p.pid, 0)
    except BaseException:
        p.kill()
        p.wait()
        raise
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise WrkError(f"wrk exited {p.returncode}: {' '.join(cmd)}\n{out}")
    res = parse_wrk(out)
    res.cpu_s = ru.ru_utime + ru.ru_stime
    return res
