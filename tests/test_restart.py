"""Restart and upgrade without losing the cache (issue 12.3): the arena in a named file, its header checks,
re-attaching after a clean stop or a SIGKILL, and the upgrade handoff of the listening sockets.

The file-level tests open cache files in this process (tmp paths under /dev/shm); the end-to-end tests run
real `edgecore serve` processes, on both paths where requests are involved.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from client import ROOT, Conn, Edge, get, path_env, wait_for

from edgecore import cache as cache_mod
from edgecore.cache import Cache, CacheFileInUse, debug_cache_class, open_cache_file
from edgecore.config import control_socket_path
from edgecore.flights import LOCK_PREFIX

CAP = 4 << 20
MOS = 64 << 10
# the arena header (ext/slabcache/arena.pxi arena_hdr): magic[16], u64 arena_version, u64 sc_magic, ...,
# u64 checksum at CHECKSUM_OFF over the bytes before it; the slab header starts at ARENA_HDR_BYTES
ARENA_HDR_BYTES = 4096
OFF_ARENA_VERSION = 16
OFF_SC_MAGIC = 24
CHECKSUM_OFF = 136


@pytest.fixture
def shm_path():
    p = f"/dev/shm/edgecore-test-{os.getpid()}-{uuid.uuid4().hex[:8]}.cache"
    yield p
    for q in (p, control_socket_path(p)):
        if os.path.exists(q):
            os.unlink(q)


def _close(c: Cache) -> None:
    c.close()
    os.close(c.file_fd)


def _fill(path: str, n: int = 50, clean: bool = True) -> None:
    c = open_cache_file(path, CAP, MOS)
    for i in range(n):
        assert c.store(b"key-%d" % i, b"value-%d" % i * 10, 1.0, 1e12)
    if clean:
        assert c.mark_clean()
    _close(c)


def _patch(path: str, off: int, data: bytes, fix_checksum: bool = False) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)
        if fix_checksum:
            f.seek(0)
            head = f.read(CHECKSUM_OFF)
            f.seek(CHECKSUM_OFF)
            f.write(Cache.hash64(head).to_bytes(8, "little"))


def test_cache_file_reattaches_after_a_clean_close(shm_path):
    _fill(shm_path)
    c = open_cache_file(shm_path, CAP, MOS)
    try:
        assert c.arena_info == {"attached": True, "reason": None, "wiped_shards": 0, "left": "clean"}
        assert c.lookup(b"key-7", 2.0) == (b"value-7" * 10, 1e12, 0)
        assert c.stats()["items"] == 50
        assert c.arena_state()["state"] == "in-use"
    finally:
        _close(c)
    assert os.path.getsize(shm_path) == CAP + ARENA_HDR_BYTES  # the mapping, after its header


# Each row: how the file left behind is spoiled, and the reason the next start gives for going cold.
SPOILED = [
    ("wrong size (another cache_size)", lambda p: None, 8 << 20, "file size"),
    ("truncated", lambda p: os.truncate(p, CAP // 2), CAP, "file size"),
    ("empty", lambda p: os.truncate(p, 0), CAP, "empty file"),
    ("wrong magic", lambda p: _patch(p, 0, b"NOTEDGE"), CAP, "magic"),
    (
        "wrong arena version",
        lambda p: _patch(p, OFF_ARENA_VERSION, (99).to_bytes(8, "little"), fix_checksum=True),
        CAP,
        "arena version 99",
    ),
    (
        "wrong slab layout version",
        lambda p: _patch(p, OFF_SC_MAGIC, ((0x45444743 << 32) | 3).to_bytes(8, "little"), fix_checksum=True),
        CAP,
        "slab layout version 3",
    ),
    ("corrupt header byte", lambda p: _patch(p, 60, b"\x7f"), CAP, "checksum"),
    ("garbage header", lambda p: _patch(p, 0, os.urandom(ARENA_HDR_BYTES)), CAP, "magic"),
    ("garbage everywhere", lambda p: _patch(p, 0, os.urandom(CAP)), CAP, "magic"),
    ("corrupt slab geometry", lambda p: _patch(p, ARENA_HDR_BYTES + 8, b"\x01\x02\x03"), CAP, "structure"),
]


@pytest.mark.parametrize("what,spoil,size,reason", SPOILED, ids=[r[0] for r in SPOILED])
def test_incompatible_or_corrupt_file_starts_cold(shm_path, what, spoil, size, reason, caplog):
    _fill(shm_path)
    spoil(shm_path)
    with caplog.at_level("INFO", logger="edgecore"):
        c = open_cache_file(shm_path, size, MOS)
    try:
        info = c.arena_info
        assert info["attached"] is False and reason in info["reason"], info
        assert any("cold start" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
        assert c.lookup(b"key-7", 2.0) is None and c.stats()["items"] == 0
        assert c.store(b"new", b"v", 1.0, 1e12) and c.lookup(b"new", 2.0) is not None
    finally:
        _close(c)
    assert os.path.getsize(shm_path) == size + ARENA_HDR_BYTES
    # and the fresh file is itself re-attachable
    c = open_cache_file(shm_path, size, MOS)
    try:
        assert c.arena_info["attached"] and c.lookup(b"new", 2.0) is not None
    finally:
        _close(c)


def test_another_entry_format_starts_cold(shm_path, monkeypatch):
    """Python-side facts about stored values (entry.py's META format, flags) are in the version check."""
    _fill(shm_path)
    monkeypatch.setattr(cache_mod, "ARENA_FORMAT", cache_mod.ARENA_FORMAT + ";meta2")
    c = open_cache_file(shm_path, CAP, MOS)
    try:
        assert not c.arena_info["attached"] and "entry format" in c.arena_info["reason"]
        assert c.lookup(b"key-1", 2.0) is None
    finally:
        _close(c)


def test_another_max_object_size_starts_cold(shm_path):
    _fill(shm_path)
    c = open_cache_file(shm_path, CAP, MOS * 2)
    try:
        assert not c.arena_info["attached"] and "max_object_size" in c.arena_info["reason"]
    finally:
        _close(c)


def test_a_second_opener_is_refused(shm_path):
    c = open_cache_file(shm_path, CAP, MOS)
    try:
        with pytest.raises(CacheFileInUse, match=shm_path):
            open_cache_file(shm_path, CAP, MOS)
    finally:
        _close(c)


def test_reattach_after_a_holder_died_inside_a_shard_lock(shm_path):
    """A process SIGKILLed while it holds a shard lock mid-update: the next start wipes that shard only (its
    robust mutex says EOWNERDEAD), keeps the others, and the whole mapping checks out."""
    dbg = debug_cache_class()
    big = 32 << 20  # (a few shards)
    c = open_cache_file(shm_path, big, MOS, cls=dbg)
    keys = [b"key-%d" % i for i in range(200)]
    for k in keys:
        assert c.store(k, k * 4, 1.0, 1e12)
    nshards = c.layout()["shards"]
    assert nshards >= 2
    victim = c.shard_of(keys[0])
    hold_r, hold_w = os.pipe()
    note_r, note_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the doomed process
        try:
            c._test_hold_shard_lock(victim, hold_r, True, note_w)
        finally:
            os._exit(0)
    try:
        assert os.read(note_r, 1) == b"L"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (hold_r, hold_w, note_r, note_w):
            os.close(fd)
    _close(c)  # never marked clean: the next start sees a file left in use
    c = open_cache_file(shm_path, big, MOS, cls=dbg)
    try:
        assert c.arena_info["attached"] and c.arena_info["wiped_shards"] == 1
        assert c.arena_info["left"] == "in-use"
        assert c._test_check() == []
        survivors = [k for k in keys if c.shard_of(k) != victim]
        assert survivors and all(c.lookup(k, 2.0) is not None for k in survivors)
        assert all(c.lookup(k, 2.0) is None for k in keys if c.shard_of(k) == victim)
        assert c.store(keys[0], b"again", 1.0, 1e12)  # the shard's lock works again
    finally:
        _close(c)


# ---------------------------------------------------------------------------------------- real processes


# small caches: a container's /dev/shm is often 64 MiB, and an upgrade test holds two files at once
SMALL = ["--cache-size", "8MiB"]


def _edge(origin, path, cache_file, *args: str, workers: int = 1) -> Edge:
    return Edge(origin.url, args=["--cache-file", cache_file, *SMALL, *args], workers=workers, path=path)


def _hit(port: int, target: str) -> str:
    return get(port, target).cache_status


def test_restart_reattaches_the_cache(origin, path, shm_path, uniq):
    target = f"{uniq}/a?cc=max-age=300&size=2000"
    e = _edge(origin, path, shm_path)
    try:
        assert "stored" in _hit(e.port, target)
        assert origin.count(uniq) == 1
    finally:
        assert e.stop() == 0
    assert any("closed clean" in line for line in e.lines)
    e = _edge(origin, path, shm_path)
    try:
        assert any("re-attached (the previous process stopped cleanly" in line for line in e.lines)
        r = get(e.port, target)
        assert r.status == 200 and r.cache_status.startswith("edgecore; hit"), r.cache_status
        assert r.header("age") is not None
        assert origin.count(uniq) == 1
    finally:
        e.stop()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigkill_then_start_again_reattaches_safely(origin, path, shm_path, uniq):
    target = f"{uniq}/k?cc=max-age=300"
    e = _edge(origin, path, shm_path, workers=2)
    try:
        for i in range(20):
            assert get(e.port, f"{target}&i={i}").status == 200
        pids = e.worker_pids()
        assert len(pids) == 3  # two workers and the admin process
    finally:
        e.proc.send_signal(signal.SIGKILL)
        e.proc.wait(10)
        for pid in e.worker_pids() + pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: all(_gone(p) for p in pids), 10)
        e.stop()
    before = origin.count(uniq)
    ctl = control_socket_path(shm_path)
    assert os.path.exists(ctl)  # left behind by the killed supervisor
    # the same command as an upgrade: nothing answers on the control socket, so a plain re-attaching start
    e = _edge(origin, path, shm_path, "--upgrade-from", ctl, workers=2)
    try:
        assert any("starting without a handoff" in line for line in e.lines), "".join(e.lines[-10:])
        assert any("re-attached (the previous process did not stop cleanly" in line for line in e.lines)
        for i in range(20):
            r = get(e.port, f"{target}&i={i}")
            assert r.status == 200 and r.cache_status.startswith("edgecore; hit"), r.cache_status
        assert origin.count(uniq) == before
        # a fresh key still coalesces and stores (no miss lock of the dead workers stands in the way)
        assert "stored" in _hit(e.port, f"{target}&new=1")
    finally:
        e.stop()


def test_miss_locks_of_the_previous_process_are_dropped_at_start(origin, shm_path, uniq):
    """A cross-worker miss lock left in the file by a dead worker (flights.LOCK_PREFIX entries) is purged
    when the next edgecore re-attaches, rather than left for waiters to find and time out on."""
    c = open_cache_file(shm_path, 8 << 20, 1 << 20)  # the geometry _edge's edgecore uses (8MiB, 1MiB)
    try:
        dead = 2**22 + 12345  # (above the usual pid_max: no such process)
        assert c.store(LOCK_PREFIX + f"0:3:GET{uniq}".encode(), b"%d" % dead, 1.0, time.time() + 600)
        assert c.mark_clean()
    finally:
        _close(c)
    e = _edge(origin, None, shm_path, workers=2)
    try:
        assert any("re-attached" in line for line in e.lines)
        assert any("dropped 1 miss lock(s) of the previous process" in line for line in e.lines), e.lines[-5:]
    finally:
        e.stop()


def test_second_edgecore_on_the_same_cache_file_is_refused(origin, shm_path):
    e = _edge(origin, None, shm_path)
    try:
        cmd = [sys.executable, "-m", "edgecore", "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        cmd += ["--upstream", origin.url, "--cache-size", "32MiB", "--cache-file", shm_path]
        env = {**os.environ, "PYTHONPATH": ROOT}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert r.returncode == 2, r.stderr
        assert shm_path in r.stderr and "in use" in r.stderr
        assert get(e.port, "/still-serving").status == 200  # the first one is untouched
    finally:
        e.stop()


class Load:
    """Client loops through an upgrade: one opens a new connection per request, one keeps a connection
    alive. A failure is a refused or reset connect, a request on a new connection that gets no complete
    response, or a status other than 200. A keep-alive connection the server closes between requests
    (after a Connection: close, or idle while draining) is reopened, as HTTP clients do (RFC 9112 9.3.1);
    those are counted apart, in `reopened`."""

    def __init__(self, port: int, target: str) -> None:
        self.port, self.target = port, target
        self.errors: list[str] = []
        self.ok = 0
        self.reopened = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._fresh, self._keepalive)]
        for t in self.threads:
            t.start()

    def _fresh(self) -> None:
        for i in range(200_000):
            if self.stop.is_set():
                return
            try:
                r = get(self.port, f"{self.target}&fresh={i % 50}")
                if r.status != 200:
                    self.errors.append(f"fresh: status {r.status}")
                else:
                    self.ok += 1
            except (OSError, ValueError) as e:
                self.errors.append(f"fresh: {e!r}")

    def _keepalive(self) -> None:
        c: Conn | None = None
        for i in range(200_000):
            if self.stop.is_set():
                break
            fresh = c is None
            if c is None:
                try:
                    c = Conn(self.port)
                except OSError as e:
                    self.errors.append(f"keep-alive connect: {e!r}")
                    continue
            try:
                c.request("GET", f"{self.target}&ka={i % 50}")
                r = c.read_response()
            except (OSError, ValueError) as e:
                c.close()
                c = None
                if fresh:
                    self.errors.append(f"keep-alive (new connection): {e!r}")
                else:
                    self.reopened += 1
                continue
            if r.status != 200:
                self.errors.append(f"keep-alive: status {r.status}")
            else:
                self.ok += 1
            if (r.header("connection") or "").lower() == "close":
                c.close()
                c = None
                self.reopened += 1
        if c is not None:
            c.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_upgrade_refuses_no_connection_and_keeps_the_cache_warm(origin, path, shm_path, uniq):
    target = f"{uniq}/u?cc=max-age=300&size=1000"
    old = _edge(origin, path, shm_path, workers=2)
    new: Edge | None = None
    load: Load | None = None
    try:
        assert "stored" in _hit(old.port, target)
        ctl = control_socket_path(shm_path)
        assert wait_for(lambda: os.path.exists(ctl), 10)
        load = Load(old.port, target)
        assert wait_for(lambda: load.ok >= 20, 20)
        new = _edge(origin, path, shm_path, "--upgrade-from", ctl, workers=2)
        assert (new.port, new.admin_port) == (old.port, old.admin_port)
        assert old.proc.wait(30) == 0  # the old one stepped down and drained
        served_at_handoff = load.ok
        assert wait_for(lambda: load.ok >= served_at_handoff + 50, 20)
        load.finish()
        assert load.errors == [], (load.errors[:5], load.ok, load.reopened)
        print(f"upgrade under load: {load.ok} requests ok, 0 errors, {load.reopened} keep-alive reopened")
        assert any("stepping down" in line for line in old.lines)
        assert any("serving in place of pid" in line for line in new.lines)
        # warm: the key stored before is a hit on the new process, the origin not asked again
        before = origin.count(f"{uniq}/u")
        r = get(new.port, target)
        assert r.cache_status.startswith("edgecore; hit"), r.cache_status
        assert origin.count(f"{uniq}/u") == before
        assert new.admin("/readyz").status == 200
        # and the new one can itself be upgraded (it offers its control socket)
        assert wait_for(lambda: os.path.exists(ctl), 10)
    finally:
        if load is not None:
            load.finish()
        old.stop()
        if new is not None:
            new.stop()


@pytest.mark.parametrize("before,after", [(2, 1), (1, 3)])
def test_upgrade_to_another_worker_count_serves_every_socket(origin, shm_path, uniq, before, after):
    """Fewer workers than handed sockets: each new worker accepts on several (none is left without an
    acceptor, where connections would wait for ever); more: new sockets join the port beside the handed."""
    target = f"{uniq}/w?cc=max-age=300"
    old = _edge(origin, None, shm_path, workers=before)
    new: Edge | None = None
    load: Load | None = None
    try:
        assert "stored" in _hit(old.port, target)
        ctl = control_socket_path(shm_path)
        assert wait_for(lambda: os.path.exists(ctl), 10)
        load = Load(old.port, target)
        new = _edge(origin, None, shm_path, "--upgrade-from", ctl, workers=after)
        assert old.proc.wait(30) == 0
        served = load.ok
        assert wait_for(lambda: load.ok >= served + 200, 30)  # fresh connections hash over every socket
        load.finish()
        assert load.errors == [], load.errors[:5]
        assert len(new.worker_pids()) == after + 1
    finally:
        if load is not None:
            load.finish()
        old.stop()
        if new is not None:
            new.stop()


def test_upgrade_to_an_incompatible_config_starts_cold_on_the_same_port(origin, shm_path, uniq):
    """Another cache_size: the arena cannot be shared, so the successor makes a new file at the same path
    (the old process keeps its own until it exits) and starts cold, still on the handed-over sockets."""
    target = f"{uniq}/c?cc=max-age=300"
    old = _edge(origin, None, shm_path)
    new: Edge | None = None
    try:
        assert "stored" in _hit(old.port, target)
        ctl = control_socket_path(shm_path)
        assert wait_for(lambda: os.path.exists(ctl), 10)
        args = ["--cache-file", shm_path, "--upgrade-from", ctl, "--cache-size", "16MiB"]
        new = Edge(origin.url, args=args)
        assert new.port == old.port
        assert old.proc.wait(30) == 0
        assert any("starting cold in a new file" in line for line in new.lines), "".join(new.lines[-10:])
        assert "stored" in _hit(new.port, target)  # cold: fetched again, and stored in the new file
        assert os.path.getsize(shm_path) == (16 << 20) + ARENA_HDR_BYTES  # (the old 8MiB one: unlinked)
    finally:
        old.stop()
        if new is not None:
            new.stop()


def test_a_failed_upgrade_leaves_the_old_process_serving(origin, shm_path, uniq):
    """A successor that takes the offer and dies before it is ready changes nothing."""
    old = _edge(origin, None, shm_path)
    try:
        ctl = control_socket_path(shm_path)
        assert wait_for(lambda: os.path.exists(ctl), 10)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(ctl)
        conn.sendall(b"UPGRADE 1\n")
        msg, fds, _, _ = socket.recv_fds(conn, 65536, 300)
        assert b'"nlisten"' in msg and len(fds) >= 3
        for fd in fds:
            os.close(fd)
        conn.close()  # gone before READY
        assert wait_for(lambda: any("gave up" in line for line in old.lines), 10)
        assert old.proc.poll() is None
        assert get(old.port, f"{uniq}/after").status == 200
        assert os.path.exists(ctl)
    finally:
        old.stop()


def test_upgrade_from_nothing_is_a_clean_error(origin, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, **path_env(None)}
    cmd = [sys.executable, "-m", "edgecore", "serve", "--upstream", origin.url, "--listen", "127.0.0.1:0"]
    cmd += ["--admin", "127.0.0.1:0", "--upgrade-from", str(tmp_path / "nothing.ctl")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and "upgrade_from" in r.stderr, r.stderr
