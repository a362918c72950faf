"""Process model: the supervisor, its worker processes and the admin process.

Owns: sockets (one SO_REUSEPORT listener per worker on the same port), fork, signals, restarts and graceful
shutdown. The supervisor creates the shared cache and counters *before* forking, so every child maps the
same memory; it runs no event loop itself (so every fork starts from a clean process), sweeps the cache
every 100 ms, reaps and replaces dead children (releasing at once the miss locks a dead worker held:
flights.lock_tag), and on SIGTERM/SIGINT turns readiness off at once, lets the workers keep accepting for
drain_delay seconds (a second signal cuts it short), then asks them to stop accepting and finish in-flight
requests within the grace period, and exits 0.
Before binding, the listen and admin addresses are probed with a plain bind (SO_REUSEADDR, no SO_REUSEPORT):
a port another process holds, another edgecore included, fails the probe and serve exits 2 naming the
address (AddressInUse), instead of silently sharing it through SO_REUSEPORT. A probe rather than a lock file:
it catches every kind of holder, not only edgecores that agree on a lock path.
Invariants: a worker never outlives a stopped supervisor by more than the grace period (it also exits when
its parent disappears); a crash-looping worker is restarted with backoff, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import Any

from . import tenants
from .accesslog import open_access_log, set_process_format
from .cache import Cache
from .config import Config, available_cpus, fastpath_disabled
from .flights import lock_tag
from .metrics import C_DRAINING, C_RESTARTS, C_STOPPING, F_PID, F_READY, SharedCounters

log = logging.getLogger("edgecore")

SWEEP_INTERVAL = 0.1
SWEEP_BUDGET = 4096


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class AddressInUse(Exception):
    def __init__(self, what: str, host: str, port: int, why: str) -> None:
        super().__init__(f"{what} address {host}:{port} is already in use by another process ({why})")


def probe_free(what: str, host: str, port: int) -> None:
    """Raise AddressInUse when another process holds host:port (listening, or bound without SO_REUSEADDR):
    a bind without SO_REUSEPORT fails there. Port 0 (the kernel picks a free one) is not probed."""
    if port == 0:
        return
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (TIME_WAIT leftovers are no holder)
        sock.bind((host, port))
    except OSError as e:
        raise AddressInUse(what, host, port, e.strerror or str(e))
    finally:
        sock.close()


def bind_socket(host: str, port: int, reuseport: bool, listen: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(4096)
    sock.setblocking(False)
    return sock


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.nworkers = cfg.workers or available_cpus()
        self.cache = Cache(cfg.cache_size, cfg.max_object_size)
        # the tenant tables' quotas and revocations (config and state file) before any worker forks
        tenants.start(self.cache, cfg, tenants.State(cfg.tenant_state_file))
        # with one health block per upstream: the admin process's checks write it, the workers read it
        self.counters = SharedCounters(slots=self.nworkers + 1, upstreams=len(cfg.upstream))
        self.admin_slot = self.nworkers
        host, port = cfg.listen
        ahost, aport = cfg.admin
        probe_free("listen", host, port)
        probe_free("admin", ahost, aport)
        # Resolves port 0 and reserves the port; never listens, so the kernel hands connections only to
        # the workers' SO_REUSEPORT listeners.
        self.placeholder = bind_socket(host, port, reuseport=True, listen=False)
        self.port = self.placeholder.getsockname()[1]
        self.admin_sock = bind_socket(ahost, aport, reuseport=False, listen=True)
        self.admin_port = self.admin_sock.getsockname()[1]
        self.children: dict[int, int] = {}  # pid -> slot
        self.restarts: dict[int, list[float]] = {}  # slot -> recent start times
        self.stopping = False
        self.hurry = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # ------------------------------------------------------------------ children
    def _fork(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(self._wake_r)
                os.close(self._wake_w)
                signal.set_wakeup_fd(-1)
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a worker reopens its access log on it
                self.placeholder.close()
                if slot == self.admin_slot:
                    from .admin import run_admin

                    code = run_admin(self.cfg, self.cache, self.counters, self.admin_sock, self.nworkers)
                else:
                    self.admin_sock.close()
                    code = run_worker(self.cfg, self.cache, self.counters, slot, self.port)
            except BaseException:
                log.exception("process in slot %d failed", slot)
            finally:
                os._exit(code)
        self.children[pid] = slot
        self.restarts.setdefault(slot, []).append(time.monotonic())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            self.counters.reset_slot(slot)
            if slot != self.admin_slot:
                # the miss locks it led are released at once: their waiters in other workers go on
                cleared = self.cache.purge_tag(lock_tag(pid))
                if cleared:
                    log.warning("released %d miss lock(s) held by dead worker pid %d", cleared, pid)
            if self.stopping:
                continue
            what = "admin" if slot == self.admin_slot else f"worker {slot}"
            log.warning(
                "%s (pid %d) exited with status %s; restarting", what, pid, os.waitstatus_to_exitcode(status)
            )
            recent = [t for t in self.restarts.get(slot, []) if time.monotonic() - t < 10.0]
            self.restarts[slot] = recent
            if len(recent) >= 5:  # crash loop: back off
                time.sleep(min(2.0, 0.2 * len(recent)))
            self.counters.set_flag(C_RESTARTS, self.counters.get_flag(C_RESTARTS) + 1)
            self._fork(slot)

    # ------------------------------------------------------------------ main loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                self.hurry = True  # a second signal: no more drain delay
            self.stopping = True
        elif signum == signal.SIGUSR1:  # logrotate: every worker reopens its access log file
            for pid, slot in list(self.children.items()):
                if slot != self.admin_slot:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGUSR1)

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload: operations issue
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w)
        if fastpath_disabled():
            log.info("fast paths: off (EDGECORE_NO_FASTPATH)")
        for slot in range(self.nworkers):
            self._fork(slot)
        self._fork(self.admin_slot)
        announced = False
        deadline = time.monotonic() + 30.0
        while not self.stopping:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], SWEEP_INTERVAL)
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            self._reap()
            self.cache.sweep(SWEEP_BUDGET)
            if not announced and (
                self.counters.ready_workers() >= self.nworkers or time.monotonic() > deadline
            ):
                announced = True
                h, _ = self.cfg.listen
                ah, _ = self.cfg.admin
                # one line, parsed by tests and scripts: keep its shape
                print(
                    f"edgecore: serving http://{h}:{self.port} admin http://{ah}:{self.admin_port} "
                    f"workers={self.nworkers} pid={os.getpid()}",
                    file=sys.stderr,
                    flush=True,
                )
        return self._shutdown()

    def _shutdown(self) -> int:
        self.counters.set_flag(C_DRAINING, 1)
        self.counters.set_flag(C_STOPPING, 1)
        if self.cfg.drain_delay > 0:
            # readiness is 503 from now on; the workers still accept, so a load balancer that has not yet
            # noticed sends to a live listener, never to a refused port
            log.info("stopping: readiness off, still accepting for %.1fs (drain_delay)", self.cfg.drain_delay)
            until = time.monotonic() + self.cfg.drain_delay
            while not self.hurry and time.monotonic() < until:
                with contextlib.suppress(InterruptedError):
                    select.select(
                        [self._wake_r], [], [], min(SWEEP_INTERVAL, max(0.0, until - time.monotonic()))
                    )
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
                self.stopping = False  # (so _reap still replaces a worker that dies meanwhile)
                self._reap()
                self.stopping = True
                self.cache.sweep(SWEEP_BUDGET)
        log.info("stopping: draining %d workers (grace %.1fs)", self.nworkers, self.cfg.grace_period)
        admin_pids = [p for p, s in self.children.items() if s == self.admin_slot]
        workers = [p for p, s in self.children.items() if s != self.admin_slot]
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.grace_period + 2.0
        while any(s != self.admin_slot for s in self.children.values()) and time.monotonic() < deadline:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], 0.05)
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            self._reap()
        for pid, slot in list(self.children.items()):
            if slot != self.admin_slot:
                log.warning("worker pid %d did not stop within the grace period; killing it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in admin_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], 0.05)
            self._reap()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reap()
        self.placeholder.close()
        self.admin_sock.close()
        self.cache.close()
        log.info("stopped")
        return 0


class Listener:
    """A worker's SO_REUSEPORT listener that max_connections can pause: pause() closes the listening
    socket (new connections go to the other workers' listeners, or are refused when there is none), resume()
    binds and listens again on the same port (the supervisor's placeholder keeps it reserved)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, factory: Any) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.factory = factory
        self.server: asyncio.AbstractServer | None = None
        self.paused = False
        self.stopped = False
        self._opening = False

    async def open(self) -> None:
        sock = bind_socket(self.host, self.port, reuseport=True, listen=True)
        self.server = await self.loop.create_server(self.factory, sock=sock, backlog=4096)

    def pause(self) -> None:
        if self.paused or self.stopped:
            return
        self.paused = True
        if self.server is not None:
            self.server.close()
            self.server = None
        log.info("max_connections reached: not accepting until a connection closes")

    def resume(self) -> None:
        if not self.paused or self.stopped:
            return
        self.paused = False
        if not self._opening and self.server is None:
            self._opening = True
            self.loop.create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            while not self.paused and not self.stopped and self.server is None:
                try:
                    await self.open()
                except OSError as e:  # (never expected: the port is reserved) try again shortly
                    log.error("cannot listen again on %s:%d: %s", self.host, self.port, e)
                    await asyncio.sleep(0.1)
            if (self.paused or self.stopped) and self.server is not None:
                self.server.close()
                self.server = None
        finally:
            self._opening = False

    def close(self) -> None:
        self.stopped = True
        if self.server is not None:
            self.server.close()
            self.server = None


def raise_open_files_limit() -> None:
    """Raise the open-files soft limit to the hard limit (each client and upstream connection is a file), and
    log it: with the usual 1024 soft limit, misses fail with "Too many open files" under load."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.info("open files limit raised from %d to %d", soft, want)
        except (ValueError, OSError) as e:
            log.warning("open files limit %d could not be raised to %d: %s", soft, want, e)
    else:
        log.info("open files limit %d", soft)


def run_worker(cfg: Config, cache: Cache, counters: SharedCounters, slot: int, port: int) -> int:
    """A worker process: its own SO_REUSEPORT listener, its own uvloop loop, the shared cache."""
    import uvloop

    from .protocol import ClientProtocol, make_context

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    slot_counters = counters.slot_view(slot)
    ctx = make_context(cfg, cache, slot_counters, loop)
    ctx.access = open_access_log(cfg.access_log, loop, slot)
    if ctx.access is not None:
        loop.add_signal_handler(signal.SIGUSR1, ctx.access.reopen)
    host, _ = cfg.listen
    listener = Listener(loop, host, port, lambda: ClientProtocol(ctx))
    loop.run_until_complete(listener.open())
    ctx.listener = listener
    ctx.start()
    stop = loop.create_future()

    def on_term() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    parent = os.getppid()

    async def watch_parent() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        if not stop.done():
            stop.set_result(None)

    watcher = loop.create_task(watch_parent())
    slot_counters.set(F_PID, os.getpid())
    slot_counters.set(F_READY, 1)

    async def drain() -> None:
        await stop
        slot_counters.set(F_READY, 0)
        listener.close()
        ctx.draining = True
        deadline = loop.time() + cfg.grace_period
        for c in list(ctx.connections):
            c.close_if_idle()
        while ctx.connections and loop.time() < deadline:
            for c in list(ctx.connections):
                c.close_if_idle()
            await asyncio.sleep(0.05)
        for c in list(ctx.connections):
            c.abort()
        watcher.cancel()
        ctx.stop()

    try:
        loop.run_until_complete(drain())
    finally:
        loop.close()
    return 0


def serve(cfg: Config) -> int:
    set_process_format(cfg.log_format)
    raise_open_files_limit()
    try:
        sup = Supervisor(cfg)
    except AddressInUse as e:
        print(f"edgecore: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"edgecore: config error: cache_size: cannot allocate {cfg.cache_size} bytes", file=sys.stderr)
        return 2
    except OSError as e:
        # the usual cause: the port is taken (by another edgecore without SO_REUSEPORT, or anything else)
        (h, p), (ah, ap) = cfg.listen, cfg.admin
        print(f"edgecore: cannot listen on {h}:{p} / admin {ah}:{ap}: {e.strerror or e}", file=sys.stderr)
        return 1
    return sup.run()
