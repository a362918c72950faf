"""Starting, checking and stopping every server the bench runs.

Owns: the run's temporary folder (configs, bodies, logs, caches), the origin, the systems under test
(edgecore, nginx proxy_cache, Varnish, the Python ceiling), the tools check, and CPU pinning.
Invariants: every process is started in its own session, recorded with its PID, and stopped by that PID (then
its leftover descendants, by PID) in Supervisor.stop_all(), which the caller runs in a `finally`. Only
127.0.0.1 is ever bound or contacted. Nothing is written outside the temporary folder.
Never: touches the system nginx/varnish services, kills by name, or binds a public address.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procstat

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CONF_DIR = BENCH_DIR / "conf"
SIZES = {"1k": 1024, "16k": 16 * 1024, "256k": 256 * 1024, "1m": 1_000_000}  # 1m: fits max_object_size 1 MiB


def log(*a: object) -> None:
    print("[bench]", *a, file=sys.stderr, flush=True)


class SkipSystem(Exception):
    """A system that cannot run here; the bench skips its row and says why."""


# ---------------------------------------------------------------- tools
REQUIRED_TOOLS = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux"}


def check_tools(*, install: bool, want_varnish: bool) -> list[str]:
    """Make sure wrk, nginx and taskset exist (installing the Debian packages with apt-get when allowed and
    root). Returns notes for the report. Raises SystemExit(2) with the exact command to run otherwise."""
    notes = []
    missing = {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)}
    if want_varnish and not shutil.which("varnishd"):
        if install:
            missing["varnishd"] = "varnish"
        else:
            notes.append(
                "Varnish is not installed: its row is skipped (install: apt-get install varnish, or rerun "
                "with --install)"
            )
    if missing:
        pkgs = sorted(set(missing.values()))
        can_apt = os.geteuid() == 0 and shutil.which("apt-get")
        if install and can_apt:
            log(f"installing {' '.join(pkgs)} with apt-get (missing: {', '.join(missing)})")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env, check=True)
        else:
            how = "rerun with --install (as root)" if can_apt else "ask an administrator"
            raise SystemExit(
                f"[bench] missing tools: {', '.join(missing)}. Install them with:\n"
                f"    sudo apt-get install -y {' '.join(pkgs)}\nor {how}."
            )
    for mod in ("uvloop", "httptools"):
        if importlib.util.find_spec(mod) is None:
            raise SystemExit(
                f"[bench] Python module {mod} is missing: pip install -e '.[bench]' (in the venv)"
            )
    return notes


# ---------------------------------------------------------------- small helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def render_template(text: str, values: dict[str, object]) -> str:
    """Fill @NAME@ placeholders; an unknown placeholder left in the text is an error."""
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"unfilled placeholders: {sorted(set(left))}")
    return text


def write_bodies(www: Path) -> dict[str, bytes]:
    """Valid JSON documents of exactly 1 KiB, 16 KiB and 256 KiB (b1k.json ...)."""
    www.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in SIZES.items():
        head = f'{{"name": "b{name}", "bytes": {n}, "pad": "'
        doc = (head + "x" * (n - len(head) - 3) + '"}\n').encode()
        assert len(doc) == n and json.loads(doc)["bytes"] == n
        (www / f"b{name}.json").write_bytes(doc)
        out[name] = doc
    return out


# ---------------------------------------------------------------- processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


class Supervisor:
    """Starts processes (each in a new session, so Ctrl-C reaches only the bench) and stops them by PID."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self, name: str, argv: list[str], *, cpus: list[int] | None = None, cwd: Path | None = None
    ) -> Proc:
        if cpus:
            argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
                # a benchmarked edgecore stops at once on SIGTERM (no load balancer to drain; older builds
                # ignore the variable)
                env={**os.environ, "EDGECORE_DRAIN_DELAY": "0", "EDGECORE_CACHE_FILE": "none"},
            )
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        log(f"started {name} pid {p.pid}" + (f" on CPU {','.join(map(str, cpus))}" if cpus else ""))
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        if proc.popen.poll() is not None:
            return
        tree = [p for p in procstat.process_tree(proc.pid) if p != proc.pid]
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{proc.name} pid {proc.pid} ignored SIGTERM for {grace:.0f}s: SIGKILL")
            proc.popen.kill()
            proc.popen.wait()
        # descendants that outlived their parent (workers of a killed supervisor): by PID
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in tree if _alive(p)]
            for p in alive:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while alive and time.monotonic() < deadline:
                alive = [p for p in alive if _alive(p)]
                time.sleep(0.05)

    def stop_all(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            try:
                self.stop(proc)
                log(f"stopped {proc.name} pid {proc.pid}")
            except Exception as e:  # keep stopping the others
                log(f"could not stop {proc.name} pid {proc.pid}: {e!r}")

    def tail(self, proc: Proc, n: int = 15) -> str:
        try:
            return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pin_tree(root: int, cpus: list[int]) -> None:
    """(Re)pin every thread of a process tree: supervisors may fork workers after start."""
    mask = ",".join(map(str, cpus))
    for p in procstat.process_tree(root):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", mask, str(p)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def wait_http(sup: Supervisor, proc: Proc, port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            tail = sup.tail(proc)
            last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "no output")
            raise SkipSystem(
                f"{proc.name} exited with {proc.popen.returncode} before answering GET {path} "
                f"(last log line: {last[:200]})\n{tail}"
            )
        try:
            st, _, _ = http_get(port, path, timeout=1)
            if st == 200:
                return
            last = f"status {st}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise SkipSystem(
        f"{proc.name} did not answer 200 to GET {path} on port {port} within {timeout:.0f}s "
        f"({last}); log:\n{sup.tail(proc)}"
    )


# ---------------------------------------------------------------- the systems
def _hit_nginx(h: dict[str, str]) -> bool:
    return h.get("x-cache-status") == "HIT"


def _hit_varnish(h: dict[str, str]) -> bool:
    return len(h.get("x-varnish", "").split()) == 2  # "<this xid> <xid of the request that stored it>"


def edgecore_hit(h: dict[str, str]) -> bool:
    """RFC 9211: a Cache-Status list member for the cache `edgecore` carrying the `hit` parameter."""
    for member in h.get("cache-status", "").split(","):
        parts = [p.strip() for p in member.split(";")]
        if parts[0] == "edgecore" and "hit" in parts[1:]:
            return True
    return False


@dataclass
class System:
    key: str
    label: str
    port: int
    proc: Proc
    is_cache: bool
    describe: str
    hit: object = None  # callable(headers) -> bool for caches
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Lab:
    """The run's folder, the origin and the started systems."""

    run_dir: Path
    sup: Supervisor
    sut_cpus: list[int]
    load_cpus: list[int]
    workers: int
    cache_size: int
    storm_delay: float
    bodies: dict[str, bytes] = field(default_factory=dict)
    origin_port: int = 0
    origin: Proc | None = None
    slow: Proc | None = None
    systems: dict[str, System] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def www(self) -> Path:
        return self.run_dir / "www"

    def user_line(self) -> str:
        return "user root;" if os.geteuid() == 0 else ""

    def setup(self) -> None:
        for d in ("www", "log", "tmp"):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        self.bodies = write_bodies(self.www)

    def start_origin(self) -> None:
        slow_port, self.origin_port = free_port(), free_port()
        self.slow = self.sup.start(
            "slow-origin",
            [
                sys.executable,
                "-m",
                "bench.slow_origin",
                "--port",
                str(slow_port),
                "--delay",
                str(self.storm_delay),
            ],
            cpus=self.load_cpus,
            cwd=REPO,
        )
        conf = self.run_dir / "origin.nginx.conf"
        conf.write_text(
            render_template(
                (CONF_DIR / "origin.nginx.conf").read_text(),
                {
                    "RUN": self.run_dir,
                    "ORIGIN_PORT": self.origin_port,
                    "SLOW_PORT": slow_port,
                    "USER_LINE": self.user_line(),
                },
            )
        )
        self.origin = self.sup.start("origin", self._nginx_argv(conf, "origin"), cpus=self.load_cpus)
        try:
            wait_http(self.sup, self.slow, slow_port, "/__count", 10)
            wait_http(self.sup, self.origin, self.origin_port, "/b1k.json", 10)
        except SkipSystem as e:
            raise SystemExit(f"[bench] the origin did not start: {e}") from None

    def origin_requests(self) -> int:
        """Requests the origin has answered so far (stub_status), this request included."""
        body = http_get(self.origin_port, "/__origin_status")[2].decode()
        return int(body.splitlines()[2].split()[2])

    def _nginx_argv(self, conf: Path, name: str) -> list[str]:
        return [
            "nginx",
            "-p",
            str(self.run_dir),
            "-c",
            str(conf),
            "-e",
            str(self.run_dir / "log" / f"{name}.err"),
        ]

    # -- systems under test
    def start_all(self, keys: list[str], edgecore_cmd: list[str] | None) -> None:
        starters = {
            "nginx": self._start_nginx,
            "ceiling": self._start_ceiling,
            "varnish": self._start_varnish,
            "edgecore": lambda: self._start_edgecore(edgecore_cmd),
        }
        for key in keys:
            try:
                self.systems[key] = starters[key]()
            except SkipSystem as e:
                self.skipped[key] = str(e)
                log(f"SKIPPING {key}: {e}")

    def _start_nginx(self) -> System:
        port = free_port()
        conf = self.run_dir / "cache.nginx.conf"
        conf.write_text(
            render_template(
                (CONF_DIR / "cache.nginx.conf").read_text(),
                {
                    "RUN": self.run_dir,
                    "PORT": port,
                    "ORIGIN_PORT": self.origin_port,
                    "WORKERS": self.workers,
                    "CACHE_SIZE": f"{max(1, self.cache_size // 1024)}k",
                    "KEYS_ZONE": f"{max(1, self.cache_size // (1 << 20)) + 8}m",
                    "USER_LINE": self.user_line(),
                },
            )
        )
        proc = self.sup.start("nginx-cache", self._nginx_argv(conf, "nginx-cache"), cpus=self.sut_cpus)
        wait_http(self.sup, proc, port, "/b1k.json", 10)
        return System(
            "nginx",
            "nginx proxy_cache",
            port,
            proc,
            True,
            f"nginx {nginx_version()}, {self.workers} worker(s), proxy_cache on the run folder, "
            f"max_size={self.cache_size >> 20} MiB, proxy_cache_lock on (bench/conf/cache.nginx.conf)",
            _hit_nginx,
        )

    def _start_ceiling(self) -> System:
        port = free_port()
        proc = self.sup.start(
            "ceiling",
            [
                sys.executable,
                "-m",
                "bench.ceiling",
                "--port",
                str(port),
                "--www",
                str(self.www),
                "--workers",
                str(self.workers),
            ],
            cpus=self.sut_cpus,
            cwd=REPO,
        )
        wait_http(self.sup, proc, port, "/b1k.json", 10)
        return System(
            "ceiling",
            "Python ceiling",
            port,
            proc,
            False,
            f"bench/ceiling.py: uvloop + httptools, prebuilt constant responses, no cache logic, "
            f"{self.workers} process(es)",
        )

    def _start_varnish(self) -> System:
        if not shutil.which("varnishd"):
            raise SkipSystem(
                "varnishd is not installed (apt-get install varnish, or python -m bench --install)"
            )
        port, admin = free_port(), free_port()
        name = self.run_dir / "varnish"
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
            f"malloc,{max(1, self.cache_size >> 20)}m",
            "-p",
            f"thread_pools={self.workers}",
            "-p",
            "thread_pool_min=50",
            "-p",
            "thread_pool_max=1000",
            # a 256 KiB object in a store full of 1 KiB ones must evict more than the default 50 objects
            "-p",
            "nuke_limit=1000",
        ]
        if os.geteuid() == 0:
            argv += ["-j", "none"]  # no privilege separation needed for a loopback benchmark in a temp folder
        proc = self.sup.start("varnish", argv, cpus=self.sut_cpus)
        wait_http(self.sup, proc, port, "/b1k.json", 20)
        return System(
            "varnish",
            "Varnish",
            port,
            proc,
            True,
            f"varnishd {varnish_version()} -s malloc,{self.cache_size >> 20}m, builtin VCL, "
            f"thread_pools={self.workers}, nuke_limit=1000",
            _hit_varnish,
        )

    def _start_edgecore(self, cmd: list[str] | None) -> System:
        port, admin = free_port(), free_port()
        argv = edgecore_argv(
            cmd or find_edgecore(), port, admin, self.origin_port, self.workers, self.cache_size
        )
        proc = self.sup.start("edgecore", argv, cpus=self.sut_cpus, cwd=REPO)
        wait_http(self.sup, proc, admin, "/healthz", 30)
        wait_http(self.sup, proc, port, "/b1k.json", 10)
        return System(
            "edgecore", "edgecore", port, proc, True, f"`{' '.join(argv)}`", edgecore_hit, {"admin": admin}
        )


def edgecore_argv(
    cmd: list[str], port: int, admin: int, origin_port: int, workers: int, cache_size: int
) -> list[str]:
    """`edgecore serve` on 127.0.0.1 in front of the origin on origin_port, as every scenario runs it."""
    return [
        *cmd,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--upstream",
        f"http://127.0.0.1:{origin_port}",
        "--workers",
        str(workers),
        "--cache-size",
        f"{cache_size}B",
    ]


def find_edgecore() -> list[str]:
    """The edgecore command to benchmark: the venv's console script, else `python -m edgecore`."""
    exe = Path(sys.executable).parent / "edgecore"
    if importlib.util.find_spec("edgecore") is None:
        raise SkipSystem("the edgecore package is not importable (cd to the repo and pip install -e .)")
    for mod in ("edgecore.cli", "edgecore.server", "edgecore.protocol"):
        if importlib.util.find_spec(mod) is None:
            raise SkipSystem(f"edgecore is not complete yet: no module {mod}")
    if exe.exists():
        return [str(exe)]
    if shutil.which("edgecore"):
        return [shutil.which("edgecore") or "edgecore"]
    return [sys.executable, "-m", "edgecore"]


def _version(argv: list[str], pattern: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(1) if m else "?"


def nginx_version() -> str:
    return _version(["nginx", "-v"], r"nginx/([\d.]+)")


def varnish_version() -> str:
    return _version(["varnishd", "-V"], r"varnish-([\d.]+)")


def wrk_version() -> str:
    return _version(["wrk", "-v"], r"wrk (\S+)")


def run_each(prefix: str, items: list[str], run_one: Callable[[str, Supervisor, Path], Any]) -> list[Any]:
    """A scenario's driver (bench/outage.py, bench/upgrade.py): a temporary run folder (on /dev/shm when it
    is writable, with log/ and tmp/), one Supervisor, run_one(item, sup, run) for each item with every process
    it started stopped after it; the folder removed at the end, whatever happened."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    run = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    for d in ("log", "tmp"):
        (run / d).mkdir()
    sup = Supervisor(run / "log")
    results = []
    try:
        for item in items:
            r = run_one(item, sup, run)
            if r is not None:
                results.append(r)
            sup.stop_all()
    finally:
        sup.stop_all()
        shutil.rmtree(run, ignore_errors=True)
    return results
