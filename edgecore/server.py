"""Process model: the supervisor, its worker processes and the admin process.

Owns: sockets (one SO_REUSEPORT listening socket per worker slot on the same port, created by the supervisor
and inherited by the worker, so a restarted worker finds its accept queue intact and an upgrade can hand them
on), fork, signals, restarts, graceful shutdown and the upgrade handoff (upgrade.py: the supervisor offers its
listening sockets and cache file on a control socket beside the cache file; `serve --upgrade-from` takes
them, starts its workers on the same sockets, and only then does the old one stop accepting and drain).
The supervisor creates the shared cache and counters *before* forking, so every child maps the same memory;
it runs no event loop itself (so every fork starts from a clean process), sweeps the cache every 100 ms,
reaps and replaces dead children (releasing at once the miss locks a dead worker held: flights.lock_tag,
and its cache pins: cache.release_pins), and on SIGTERM/SIGINT turns readiness off at once, lets the workers
keep accepting for drain_delay seconds (a second signal cuts it short), then asks them to stop accepting and
finish in-flight requests within the grace period, and exits 0.
Reload (SIGHUP, and POST /reload relayed by the admin process over the control channel, control.py): the
supervisor is the one place a reload happens. It loads the config with the loader serve was given (file,
environment, the original command line), refuses an invalid one whole (one log line per problem, counted),
else computes config.reload_diff, keeps the restart keys at their running values, sends the Config to every
child and answers only once each has acknowledged applying it (or failed, or died; bounded). A child forked
later starts from the config running then. Children ignore SIGHUP.
Before binding, the listen and admin addresses are probed with a plain bind (SO_REUSEADDR, no SO_REUSEPORT):
a port another process holds, another edgecore included, fails the probe and serve exits 2 naming the
address (AddressInUse), instead of silently sharing it through SO_REUSEPORT. A probe rather than a lock file:
it catches every kind of holder, not only edgecores that agree on a lock path.
The cache lives in cache_file when there is one (cache.open_cache_file: re-attached when compatible, else
cold; one edgecore per file, a second gets exit 2 naming it); after a re-attach the miss locks of the dead
process's workers are dropped (flights.LOCK_PREFIX); a clean stop marks the file clean.
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
from collections.abc import Callable
from typing import Any

from . import control, tenants
from .accesslog import apply_process_log, set_process_format
from .cache import Cache, CacheFileInUse, open_cache_file
from .config import (
    Config,
    available_cpus,
    cache_file_path,
    control_socket_path,
    fastpath_disabled,
    reload_diff,
)
from .errors import ConfigErrors
from .flights import LOCK_PREFIX, lock_tag
from .metrics import (
    C_DRAINING,
    C_GENERATION,
    C_RELOADS_ERROR,
    C_RELOADS_OK,
    C_RESTARTS,
    C_STOPPING,
    F_PID,
    F_READY,
    MIN_UPSTREAM_BLOCKS,
    SharedCounters,
)
from .upgrade import Handoff, NobodyThere, Offer, UpgradeError, take_over

log = logging.getLogger("edgecore")

SWEEP_INTERVAL = 0.1
SWEEP_BUDGET = 4096
RELOAD_ACK_TIMEOUT = 10.0  # seconds the supervisor waits for every child to apply a reload
DRAIN_QUIET = 0.5  # draining: an idle connection is closed once it has been quiet this long (seconds)


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


class CacheFileError(Exception):
    """cache_file cannot be used (exit 2, naming the key)."""


def _same_address(want: tuple[str, int], have: Any) -> bool:
    """The address a handed-over socket listens on serves the configured one (port 0: whichever it has)."""
    return bool(have) and want[0] == have[0] and want[1] in (0, have[1])


class Supervisor:
    def __init__(self, cfg: Config, loader: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.loader = loader  # loads and validates the config as serve did (a reload); None: no reloads
        self.generation = 0  # of the config running: +1 per applied reload
        self.nworkers = cfg.workers or available_cpus()
        host, port = cfg.listen
        ahost, aport = cfg.admin
        # an upgrade: the running edgecore's very listening sockets, admin socket and cache file
        self.handoff: Handoff | None = None
        if cfg.upgrade_from:
            try:
                self.handoff = take_over(cfg.upgrade_from)
            except NobodyThere as e:
                # the edgecore to replace is gone (crashed, killed): this is a plain (re-attaching) start
                log.warning("upgrade: %s; starting without a handoff", e)
        self.upgraded = False  # set when our successor took over (we step down)
        self.offer: Offer | None = None
        handed: list[socket.socket] = []
        handed_admin: socket.socket | None = None
        if self.handoff is not None:
            info = self.handoff.info
            if _same_address(cfg.listen, info.get("listen")):
                handed = self.handoff.listen_socks
                port = handed[0].getsockname()[1] if handed else port
            else:
                for sk in self.handoff.listen_socks:
                    sk.close()
            if _same_address(cfg.admin, info.get("admin")):
                handed_admin = self.handoff.admin_sock
            elif self.handoff.admin_sock is not None:
                self.handoff.admin_sock.close()
        if not handed:
            probe_free("listen", host, port)
        if handed_admin is None:
            probe_free("admin", ahost, aport)
        self.cache = self._open_cache()
        # the tenant tables' quotas and revocations (config and state file) before any worker forks
        tenants.start(self.cache, cfg, tenants.State(cfg.tenant_state_file))
        # with one health block per upstream: the admin process's checks write it, the workers read it; a
        # fixed number of them, assigned by upstream, so that a reload may change the upstream list
        self.counters = SharedCounters(
            slots=self.nworkers + 1, upstreams=max(MIN_UPSTREAM_BLOCKS, 2 * len(cfg.upstream))
        )
        self.counters.assign_blocks([u.authority for u in cfg.upstream])
        self.admin_slot = self.nworkers
        # Resolves port 0 and reserves the port; never listens.
        self.placeholder = bind_socket(host, port, reuseport=True, listen=False)
        self.port = self.placeholder.getsockname()[1]
        # one listening socket per worker slot (more when an upgrade handed over more: each is some worker's)
        self.listen_socks = handed + [
            bind_socket(host, self.port, reuseport=True, listen=True)
            for _ in range(self.nworkers - len(handed))
        ]
        self.admin_sock = handed_admin or bind_socket(ahost, aport, reuseport=False, listen=True)
        self.admin_port = self.admin_sock.getsockname()[1]
        self.children: dict[int, int] = {}  # pid -> slot
        self.restarts: dict[int, list[float]] = {}  # slot -> recent start times
        self.stopping = False
        self.hurry = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # the control channel (control.py): records from every child on one pipe, a message pipe per child
        self._ctl_r, self._ctl_w = os.pipe()
        os.set_blocking(self._ctl_r, False)
        self._ctl_buf = bytearray()
        self._to_child: dict[int, int] = {}  # pid -> write end of its message pipe
        self._out: dict[int, bytearray] = {}  # pid -> message bytes not yet written
        self._reload_requests: list[tuple[int, int] | None] = []  # (admin pid, request id) or None: SIGHUP
        self._acks: dict[int, tuple[bytes, int]] = {}  # pid -> its last (ack kind, generation)

    def _open_cache(self) -> Cache:
        cfg = self.cfg
        path = cache_file_path(cfg)
        handed_fd: int | None = None
        if self.handoff is not None and self.handoff.cache_fd >= 0:
            if path is not None and self.handoff.info.get("cache_file") == path:
                handed_fd = self.handoff.cache_fd
            else:
                os.close(self.handoff.cache_fd)
        if path is None:
            return Cache(cfg.cache_size, cfg.max_object_size)
        try:
            cache = open_cache_file(path, cfg.cache_size, cfg.max_object_size, handed_fd=handed_fd)
        except MemoryError as e:
            if cfg.cache_file != "auto":
                raise CacheFileError(f"cache_file: {path}: {e}")
            log.warning(
                "cache file %s: %s; using an anonymous mapping (the cache will not survive a restart)",
                path,
                e,
            )
            with contextlib.suppress(OSError):
                os.unlink(path)
            return Cache(cfg.cache_size, cfg.max_object_size)
        except OSError as e:
            raise CacheFileError(f"cache_file: {path}: {e.strerror or e}")
        if handed_fd is None and cache.arena_info is not None and cache.arena_info["attached"]:
            # the workers of the process that left it are gone: so are the misses they led and the pins
            # they held (a pinned object waits for its last pin before its slots are freed)
            cleared = cache.purge_prefix(LOCK_PREFIX)
            if cleared:
                log.info("cache file %s: dropped %d miss lock(s) of the previous process", path, cleared)
            unpinned = cache.release_pins(0)
            if unpinned:
                log.info("cache file %s: released %d pin(s) of the previous process", path, unpinned)
        return cache

    def _slot_socks(self, slot: int) -> list[socket.socket]:
        return [sk for i, sk in enumerate(self.listen_socks) if i % self.nworkers == slot]

    def _offer_info(self) -> tuple[dict[str, Any], list[int]]:
        info = {
            "pid": os.getpid(),
            "listen": [self.cfg.listen[0], self.port],
            "admin": [self.cfg.admin[0], self.admin_port],
            "nlisten": len(self.listen_socks),
            "cache_file": self.cache.file_path,
        }
        fds = [sk.fileno() for sk in self.listen_socks] + [self.admin_sock.fileno(), self.cache.file_fd]
        return info, fds

    # ------------------------------------------------------------------ children
    def _fork(self, slot: int) -> None:
        msg_r, msg_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(self._wake_r)
                os.close(self._wake_w)
                os.close(self._ctl_r)
                os.close(msg_w)
                for fd in self._to_child.values():  # (the other children's pipes)
                    os.close(fd)
                signal.set_wakeup_fd(-1)
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                # a reload is the supervisor's: a SIGHUP sent to a child (a process group, by mistake) is
                # ignored, never fatal; a worker reopens its access log on SIGUSR1
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                self.placeholder.close()
                # a child forked after a reload starts with the config running now (self.cfg)
                chan = (msg_r, self._ctl_w, self.generation)
                if self.offer is not None:
                    self.offer.sock.close()
                    if self.offer.successor is not None:
                        self.offer.successor.close()
                if slot == self.admin_slot:
                    from .admin import run_admin

                    code = run_admin(
                        self.cfg, self.cache, self.counters, self.admin_sock, self.nworkers, chan
                    )
                else:
                    self.admin_sock.close()
                    code = run_worker(
                        self.cfg,
                        self.cache,
                        self.counters,
                        slot,
                        self.port,
                        chan,
                        socks=self._slot_socks(slot),
                    )
            except BaseException:
                log.exception("process in slot %d failed", slot)
            finally:
                os._exit(code)
        os.close(msg_r)
        os.set_blocking(msg_w, False)
        self._to_child[pid] = msg_w
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
            fd = self._to_child.pop(pid, None)
            self._out.pop(pid, None)
            if fd is not None:
                os.close(fd)
            if slot is None:
                continue
            self.counters.reset_slot(slot)
            # the views of large hits its transports held (slab cache pins): their bytes are reclaimed now
            unpinned = self.cache.release_pins(pid)
            if unpinned:
                log.warning("released %d cache pin(s) held by dead worker pid %d", unpinned, pid)
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
        elif signum == signal.SIGHUP:  # reload, in the main loop
            self._reload_requests.append(None)
        elif signum == signal.SIGUSR1:  # logrotate: every worker reopens its access log file
            for pid, slot in list(self.children.items()):
                if slot != self.admin_slot:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGUSR1)

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(s, self._on_signal)
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
            watch: list[Any] = [self._wake_r, *(self.offer.fds() if self.offer is not None else [])]
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select([*watch, self._ctl_r], self._pending_fds(), [], SWEEP_INTERVAL)
                self._on_control(readable)
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            self._reap()
            self._pump()
            while self._reload_requests and not self.stopping:
                who = self._reload_requests.pop(0)
                answer = self.reload()
                if who is not None:
                    self._send(who[0], ("result", who[1], answer))
            self.cache.sweep(SWEEP_BUDGET)
            if not announced and (
                self.counters.ready_workers() >= self.nworkers or time.monotonic() > deadline
            ):
                announced = True
                self._serving()
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

    # ------------------------------------------------------------------ reload
    def reload(self) -> dict[str, Any]:
        """SIGHUP and POST /reload (the one implementation): load and validate the config as serve did,
        refuse it whole when it does not validate, else apply it in every child (the restart keys kept at
        their running values) and answer once each has applied it or reported failing to."""
        problems: list[str] = []
        new: Config | None = None
        if self.loader is None:
            problems.append("config: this edgecore was started without a config loader (no reloads)")
        else:
            try:
                new = self.loader()
            except ConfigErrors as e:
                problems = [f"{p.key}: {p.why}" for p in e.problems]
            except Exception as e:  # a reload never stops a running edgecore
                problems = [f"config: {e}"]
        if new is not None:
            diff = reload_diff(self.cfg, new)
            try:
                self.counters.assign_blocks([u.authority for u in diff.applied.upstream])
            except ValueError as e:
                problems = [f"upstream: {e}"]
        if problems or new is None:
            for line in problems:
                log.error("config reload refused: %s", line)
            self.counters.words[C_RELOADS_ERROR] += 1
            return {"reloaded": False, "errors": problems}
        self.generation += 1
        gen = self.generation
        previous, self.cfg = self.cfg, diff.applied
        try:  # tenant tables apply at once: what the new policy forbids is purged, its bytes overwritten
            purged = tenants.apply_change(self.cache, previous, self.cfg)
            if purged:
                log.info("config reload: %d entries purged that the new tenant tables forbid", purged)
        except Exception:  # a reload never stops a running edgecore
            log.exception("config reload: the tenant tables could not be applied to the cache")
        apply_process_log(self.cfg.log_format, self.cfg.log_level)
        waiting = set(self.children)
        for pid in waiting:
            self._send(pid, ("config", gen, self.cfg))
        failed = self._await_acks(waiting, gen)
        self.counters.set_flag(C_GENERATION, gen)
        self.counters.words[C_RELOADS_OK] += 1
        log.info(
            "config reloaded (generation %d): changed %s",
            gen,
            ", ".join(diff.changed) if diff.changed else "nothing",
        )
        for k in diff.restart_required:
            log.warning("config reload: %s changed; it needs a restart (the running value is kept)", k)
        for line in failed:
            log.error("config reload: %s", line)
        answer: dict[str, Any] = {
            "reloaded": True,
            "changed": list(diff.changed),
            "restart_required": list(diff.restart_required),
            "generation": gen,
        }
        if failed:
            answer["failed"] = failed
        return answer

    def _await_acks(self, waiting: set[int], gen: int) -> list[str]:
        """Wait (RELOAD_ACK_TIMEOUT at most) until every child in `waiting` has applied generation `gen`,
        reported failing to, or died (one forked meanwhile starts with it) -> one line per child that
        failed or did not answer."""
        failed: list[str] = []
        deadline = time.monotonic() + RELOAD_ACK_TIMEOUT
        while True:
            slots = dict(self.children)
            for pid in list(waiting):
                got = self._acks.get(pid)
                if pid not in slots:
                    waiting.discard(pid)
                elif got is not None and got[1] >= gen:
                    waiting.discard(pid)
                    if got[0] != control.ACK_OK:
                        failed.append(f"{self._what(slots[pid])} (pid {pid}) failed to apply it")
            if not waiting:
                return failed
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r, self._ctl_r], self._pending_fds(), [], min(0.05, left))
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            self._reap()
            self._pump()
        for pid in waiting:
            failed.append(f"{self._what(self.children.get(pid, -1))} (pid {pid}) did not answer in time")
        return failed

    def _what(self, slot: int) -> str:
        return "admin" if slot == self.admin_slot else f"worker {slot}"

    def _send(self, pid: int, msg: tuple[Any, ...]) -> None:
        if pid in self._to_child:
            self._out.setdefault(pid, bytearray()).extend(control.frame(msg))
            self._flush(pid)

    def _flush(self, pid: int) -> None:
        buf = self._out.get(pid)
        fd = self._to_child.get(pid)
        if not buf or fd is None:
            return
        try:
            n = os.write(fd, buf)
        except BlockingIOError:
            return
        except OSError:  # the child is gone: _reap forgets it
            buf.clear()
            return
        del buf[:n]

    def _pending_fds(self) -> list[int]:
        return [self._to_child[p] for p, b in self._out.items() if b and p in self._to_child]

    def _pump(self) -> None:
        """Write what is pending to the children and read their records (acks, the admin's reload
        requests)."""
        for pid in list(self._out):
            self._flush(pid)
        while True:
            try:
                data = os.read(self._ctl_r, 1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            self._ctl_buf += data
        for kind, pid, value in control.parse_records(self._ctl_buf):
            if kind == control.RELOAD_REQUEST:
                self._reload_requests.append((pid, value))
            elif kind in (control.ACK_OK, control.ACK_FAILED):
                self._acks[pid] = (kind, value)

    def _serving(self) -> None:
        """Every worker listens: an upgrade is complete (the old process steps down), and we offer ours."""
        if self.handoff is not None:
            ok = self.handoff.complete()
            log.info(
                "upgrade: serving in place of pid %s%s",
                self.handoff.info.get("pid"),
                "" if ok else " (unconfirmed)",
            )
            self.handoff = None
        if self.cache.file_path is not None:
            try:
                self.offer = Offer(control_socket_path(self.cache.file_path))
            except OSError as e:
                log.warning(
                    "no control socket for upgrades at %s: %s", control_socket_path(self.cache.file_path), e
                )

    def _on_control(self, readable: list[Any]) -> None:
        offer = self.offer
        if offer is None:
            return
        if offer.sock in readable:
            offer.on_connect(*self._offer_info())
        if offer.successor is not None and offer.successor in readable and offer.on_successor():
            self.upgraded = True
            self.stopping = True
            self.hurry = True  # no drain delay: the successor accepts on these very sockets

    def _shutdown(self) -> int:
        if self.offer is not None:
            self.offer.close()
        if self.upgraded:
            # our admin process first: the successor's answers on the same admin socket, with readiness 200
            for pid, slot in list(self.children.items()):
                if slot == self.admin_slot:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        else:
            self.counters.set_flag(C_DRAINING, 1)
        self.counters.set_flag(C_STOPPING, 1)
        if self.cfg.drain_delay > 0 and not self.upgraded:
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
        # Our listening sockets close with the workers' copies: refused from then on, unless a successor
        # holds them too (an upgrade), which goes on accepting from the same queues.
        for sk in self.listen_socks:
            sk.close()
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
        if self.cache.mark_clean():
            log.info("cache file %s: closed clean (a restart re-attaches to it)", self.cache.file_path)
        self.cache.close()
        log.info("stopped")
        return 0


class Listener:
    """A worker's listener that max_connections can pause. With `socks` (the supervisor's listening sockets
    of this worker's slot), the worker accepts on a dup of each: pause() closes the dups (the sockets stay
    listening in the supervisor: new connections wait in the accept queue, never refused), resume() dups
    them again. Without, it binds its own SO_REUSEPORT listener, which pause() closes (new connections go
    to the other workers' listeners) and resume() binds again (the supervisor's placeholder keeps it)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        factory: Any,
        socks: list[socket.socket] | None = None,
    ) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.factory = factory
        self.socks = socks
        self.server: asyncio.AbstractServer | None = None
        self.more: list[asyncio.AbstractServer] = []  # the servers of this slot's other sockets
        self.paused = False
        self.stopped = False
        self._opening = False

    async def open(self) -> None:
        if self.socks:
            # (uvloop closes the socket it is given when its server closes: hence a dup, never ours)
            servers: list[asyncio.AbstractServer] = [
                await self.loop.create_server(self.factory, sock=sk.dup(), backlog=4096) for sk in self.socks
            ]
            self.server, self.more = servers[0], servers[1:]
            return
        sock = bind_socket(self.host, self.port, reuseport=True, listen=True)
        self.server = await self.loop.create_server(self.factory, sock=sock, backlog=4096)

    def _close_servers(self) -> None:
        for srv in self.more:
            srv.close()
        self.more = []
        if self.server is not None:
            self.server.close()
            self.server = None

    def pause(self) -> None:
        if self.paused or self.stopped:
            return
        self.paused = True
        self._close_servers()
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
                self._close_servers()
        finally:
            self._opening = False

    def close(self) -> None:
        self.stopped = True
        self._close_servers()


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


def run_worker(
    cfg: Config,
    cache: Cache,
    counters: SharedCounters,
    slot: int,
    port: int,
    chan: tuple[int, int, int] | None = None,
    socks: list[socket.socket] | None = None,
) -> int:
    """A worker process: its own uvloop loop, the shared cache, and the listening sockets of its slot
    (`socks`, inherited from the supervisor; without them its own SO_REUSEPORT listener). `chan`: its end of
    the control channel (message pipe, record pipe, generation of cfg): reloads arrive there."""
    import uvloop

    from .protocol import ClientProtocol, make_context

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    slot_counters = counters.slot_view(slot)
    ctx = make_context(cfg, cache, slot_counters, loop, worker=slot)

    def reopen() -> None:
        if ctx.access is not None:
            ctx.access.reopen()

    loop.add_signal_handler(signal.SIGUSR1, reopen)
    if chan is not None:
        channel: control.ChildChannel | None = None

        def on_message(msg: tuple[Any, ...]) -> None:
            if msg[0] != "config":
                return
            _, gen, new = msg[:3]
            try:
                ctx.configure(new)
                apply_process_log(new.log_format, new.log_level)
            except Exception:
                log.exception("worker %d could not apply config generation %d", slot, gen)
                assert channel is not None
                channel.send(control.ACK_FAILED, gen)
                return
            assert channel is not None
            channel.send(control.ACK_OK, gen)

        channel = control.ChildChannel(loop, chan[0], chan[1], on_message)
    host, _ = cfg.listen
    listener = Listener(loop, host, port, lambda: ClientProtocol(ctx), socks=socks)
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
        deadline = loop.time() + ctx.cfg.grace_period  # (as reloaded)

        def close_quiet() -> None:
            # A connection that spoke within DRAIN_QUIET (a new one whose request is on its way, a keep-alive
            # client in the middle of its work) may send one more request, answered with Connection: close
            # (draining); closing it now would race that request (a failure on a fresh connection).
            now = loop.time()
            for c in list(ctx.connections):
                if now - getattr(c, "last_progress", 0.0) >= DRAIN_QUIET:
                    c.close_if_idle()

        close_quiet()
        while ctx.connections and loop.time() < deadline:
            close_quiet()
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


def serve(cfg: Config, loader: Callable[[], Config] | None = None) -> int:
    """Run until stopped; `loader` loads and validates the config as this one was (a reload calls it)."""
    set_process_format(cfg.log_format)
    raise_open_files_limit()
    try:
        sup = Supervisor(cfg, loader)
    except (AddressInUse, CacheFileInUse) as e:
        print(f"edgecore: {e}", file=sys.stderr)
        return 2
    except CacheFileError as e:
        print(f"edgecore: config error: {e}", file=sys.stderr)
        return 2
    except UpgradeError as e:
        print(f"edgecore: upgrade: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"edgecore: config error: cache_size: cannot allocate {cfg.cache_size} bytes", file=sys.stderr)
        return 2
    except OSError as e:
        # the usual cause: the port is taken (by another edgecore without SO_REUSEPORT, or anything else)
        (h, p), (ah, ap) = cfg.listen, cfg.admin
        print(f"edgecore: cannot listen on {h}:{p} / admin {ah}:{ap}: {e.strerror or e}", file=sys.stderr)
        return 1
    return sup.run()
