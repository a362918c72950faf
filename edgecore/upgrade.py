"""Hot upgrade: a running edgecore hands its listening sockets and its cache file to its successor.

Owns: the control socket protocol (a unix stream socket beside the cache file, config.control_socket_path)
between the running supervisor (Offer: offers, then steps down) and a new one started with
`serve --upgrade-from PATH` (take_over, then Handoff.complete), as HAProxy's `expose-fd listeners` and
Envoy's hot restart do:
    new -> old   b"UPGRADE <pid>\\n"
    old -> new   one JSON line {"pid", "listen": [host, port], "admin": [host, port], "nlisten", "cache_file"}
                 with, by SCM_RIGHTS, the nlisten listening sockets, the admin socket and the cache file
    new -> old   b"READY\\n" once every new worker listens (or the connection closes: the upgrade is off)
    old -> new   b"OK\\n": the old one removed its control socket and stops accepting, drains, exits
Invariants: the listening sockets are the very same ones (the same accept queues): nothing queued is lost and
nothing is refused, since at every moment a process holds them; the old process steps down only after READY,
so a successor that fails before it changes nothing; every wait here is bounded.
Never: run an event loop (the supervisor has none), or block the old supervisor for more than a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("edgecore")

HANDSHAKE_TIMEOUT = 10.0
MAX_FDS = 300


class UpgradeError(Exception):
    pass


class NobodyThere(UpgradeError):
    """The control socket is a leftover: no process listens on it (the edgecore there died)."""


def _line(conn: socket.socket, limit: int = 65536) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            raise UpgradeError("the other process closed the control connection")
        buf += chunk
        if len(buf) > limit:
            raise UpgradeError("control message too long")
    return buf[:-1]


@dataclass
class Handoff:
    """What the successor received: the old process's sockets and cache file descriptor."""

    conn: socket.socket
    info: dict[str, Any]
    listen_socks: list[socket.socket] = field(default_factory=list)
    admin_sock: socket.socket | None = None
    cache_fd: int = -1

    def complete(self) -> bool:
        """Tell the old process we serve; True once it confirmed it stops accepting (bounded wait)."""
        try:
            self.conn.settimeout(HANDSHAKE_TIMEOUT)
            self.conn.sendall(b"READY\n")
            ok = _line(self.conn) == b"OK"
        except (OSError, UpgradeError) as e:
            log.warning("upgrade: the old process (pid %s) did not confirm: %s", self.info.get("pid"), e)
            ok = False
        self.conn.close()
        return ok

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def take_over(path: str) -> Handoff:
    """Ask the edgecore whose control socket is `path` for its listeners and cache (UpgradeError if not)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(HANDSHAKE_TIMEOUT)
    try:
        try:
            conn.connect(path)
        except ConnectionRefusedError:
            raise NobodyThere(f"no edgecore answers on {path}")
        conn.sendall(b"UPGRADE %d\n" % os.getpid())
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, MAX_FDS)
    except NobodyThere:
        conn.close()
        raise
    except OSError as e:
        conn.close()
        raise UpgradeError(f"cannot take over from {path}: {e.strerror or e}")
    try:
        if not msg.endswith(b"\n"):
            raise UpgradeError("truncated offer")
        info = json.loads(msg)
        n = int(info["nlisten"])
        if len(fds) != n + 2:
            raise UpgradeError(f"offer of {len(fds)} descriptors, {n + 2} expected")
    except (ValueError, KeyError, UpgradeError) as e:
        for fd in fds:
            os.close(fd)
        conn.close()
        raise UpgradeError(f"bad offer from {path}: {e}")
    socks = [socket.socket(fileno=fd) for fd in fds[:n]]
    for s in socks:
        s.setblocking(False)
    admin = socket.socket(fileno=fds[n])
    admin.setblocking(False)
    log.info(
        "upgrade: took %d listening socket(s), the admin socket and the cache file from pid %s",
        n,
        info["pid"],
    )
    return Handoff(conn, info, socks, admin, fds[n + 1])


class Offer:
    """The running supervisor's side: a listening control socket at `path`, polled from its select loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(
                path
            )  # a leftover of a process that died: we hold the cache file's flock, so it is ours
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(4)
        self.sock.setblocking(False)
        self.successor: socket.socket | None = None
        self.successor_pid = ""

    def fds(self) -> list[socket.socket]:
        out = [self.sock]
        if self.successor is not None:
            out.append(self.successor)
        return out

    def on_connect(self, info: dict[str, Any], fds: list[int]) -> None:
        """A successor knocks: send it the offer (bounded); it then starts and says READY, or goes away."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.settimeout(2.0)
        try:
            hello = _line(conn, 256)
            if not hello.startswith(b"UPGRADE "):
                raise UpgradeError(f"unexpected {hello[:40]!r}")
            if self.successor is not None:
                raise UpgradeError("an upgrade is already in progress")
            socket.send_fds(conn, [json.dumps(info).encode() + b"\n"], fds)
        except (OSError, UpgradeError) as e:
            log.warning("upgrade: refused a control connection: %s", e)
            conn.close()
            return
        self.successor_pid = hello[8:].decode(errors="replace")
        log.info(
            "upgrade: offered listeners and cache to pid %s; serving until it is ready", self.successor_pid
        )
        conn.setblocking(False)
        self.successor = conn

    def on_successor(self) -> bool:
        """The successor spoke or went away; True when it is ready and we must step down now."""
        conn = self.successor
        assert conn is not None
        try:
            data = conn.recv(64)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if data.strip() != b"READY":
            log.warning("upgrade: pid %s gave up before it was ready; still serving", self.successor_pid)
            conn.close()
            self.successor = None
            return False
        self.close()  # our control socket goes first, so the successor can bind its own at the same path
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.sendall(b"OK\n")
        conn.close()
        self.successor = None
        log.info("upgrade: pid %s serves now; stepping down", self.successor_pid)
        return True

    def close(self) -> None:
        """Remove our control socket (once: after an upgrade the path may be the successor's)."""
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()
