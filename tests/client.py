"""Test-side helpers: start a real `edgecore serve` process, and a small HTTP/1.1 client on raw sockets
(so tests control pipelining, framing and malformed input byte for byte)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SERVING = re.compile(
    r"edgecore: serving http://([\d.]+):(\d+) admin http://([\d.]+):(\d+) workers=(\d+) pid=(\d+)"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True  # False: the connection closed before the framed body ended

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def cache_status(self) -> str:
        return self.header("cache-status") or ""


class Conn:
    """One client connection; `request` sends, `read_response` reads exactly one response."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        version: str = "1.1",
    ) -> None:
        h = {"Host": "test.local"}
        h.update(headers or {})
        if body is not None and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(body))
        head = (
            f"{method} {target} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        )
        self.send(head.encode("latin-1") + (body or b""))

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed while reading a line")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_response(self, head_only: bool = False) -> Response:
        line = self._line()
        while True:
            _, status, *reason = line.decode("latin-1").split(" ", 2)
            headers = []
            while True:
                h = self._line()
                if not h:
                    break
                n, _, v = h.decode("latin-1").partition(":")
                headers.append((n.strip(), v.strip()))
            if not 100 <= int(status) < 200:
                break
            line = self._line()  # interim response: read the final one
        r = Response(int(status), reason[0] if reason else "", headers, b"")
        if head_only or r.status in (204, 304):
            return r
        clen = r.header("content-length")
        if (r.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            try:
                while True:
                    size = int(self._line().split(b";")[0], 16)
                    if size == 0:
                        self._line()
                        break
                    while len(self.buf) < size + 2:
                        if not self._fill():
                            raise ConnectionError
                    body += self.buf[:size]
                    self.buf = self.buf[size + 2 :]
            except (ConnectionError, ValueError):
                r.body, r.complete = body, False
                return r
            r.body = body
        elif clen is not None:
            n = int(clen)
            while len(self.buf) < n:
                if not self._fill():
                    r.body, r.complete = self.buf, False
                    self.buf = b""
                    return r
            r.body, self.buf = self.buf[:n], self.buf[n:]
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within timeout, sending nothing more."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b""

    def close(self) -> None:
        self.sock.close()


def get(
    port: int,
    target: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> Response:
    c = Conn(port)
    try:
        c.request(method, target, headers, body)
        return c.read_response(head_only=method == "HEAD")
    finally:
        c.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll cond (bounded in count and time): True as soon as it holds, False after timeout."""
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return False


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound once by the OS, then released): connects are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def path_env(path: str | None) -> dict[str, str]:
    """The environment that makes an edgecore process answer on `path`: "fast" (the C fast paths on),
    "general" (EDGECORE_NO_FASTPATH=1: the general Python path answers everything) or None (as inherited)."""
    if path is None:
        return {}
    if path not in ("fast", "general"):
        raise ValueError(f"path is 'fast', 'general' or None, not {path!r}")
    return {"EDGECORE_NO_FASTPATH": "1" if path == "general" else "0"}


@dataclass
class Edge:
    """A real `python -m edgecore serve` process on 127.0.0.1 with ephemeral ports; `env` is added to the
    inherited environment (after `path`'s, see path_env)."""

    upstream: str
    args: list[str] = field(default_factory=list)
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # "fast", "general" or None: as EDGECORE_NO_FASTPATH is inherited
    main: list[str] = field(default_factory=lambda: [sys.executable, "-m", "edgecore"])  # the program
    # replaces the options below (listen, admin, upstream, workers, ...) when given: a test whose config
    # file must own those keys (a reload changes them) passes ["--config", FILE]
    base_args: list[str] | None = None

    def __post_init__(self) -> None:
        cmd = [
            *self.main,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            self.upstream,
            "--workers",
            str(self.workers),
            "--cache-size",
            "32MiB",
            "--grace-period",
            "5",
            "--drain-delay",  # (tests that need the SIGTERM drain delay pass their own)
            "0",
            *self.args,
        ]
        if self.base_args is not None:
            cmd = [*self.main, "serve", *self.base_args, *self.args]
        env = {**os.environ, "PYTHONPATH": ROOT, **path_env(self.path), **self.env}
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=ROOT
        )
        self.lines: list[str] = []
        ready = threading.Event()
        self.port = self.admin_port = 0

        def pump() -> None:
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                m = SERVING.search(line)
                if m:
                    self.port, self.admin_port = int(m.group(2)), int(m.group(4))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        if not ready.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("edgecore did not start:\n" + "".join(self.lines[-30:]))

    def admin(
        self, path: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        return get(self.admin_port, path, headers, method=method, body=body)

    def stats(self) -> dict:
        return json.loads(self.admin("/stats").body)

    def wait_stat(self, pred, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
        """Poll /stats until pred(stats) holds (bounded); returns the last stats."""
        deadline = time.monotonic() + timeout
        s = self.stats()
        while not pred(s) and time.monotonic() < deadline:
            time.sleep(0.02)
            s = self.stats()
        return s

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode
