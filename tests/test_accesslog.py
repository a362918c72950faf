"""The access log (access_log: one JSON line per response, batched, reopened on SIGUSR1) and the process log
(log_format, readable strings, 4xx refusals at info, a clean stop without ERROR): end to end, on both paths.
With the access log on, the C hit path is off (context.make_hitpath), so both paths log every response."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import time

import pytest
from client import Conn, Edge, closed_port, get, wait_for

from edgecore.config import ConfigErrors, load

FIELDS = {
    "ts",
    "client",
    "method",
    "host",
    "target",
    "status",
    "bytes",
    "duration_ms",
    "cache_status",
    "upstream",
    "upstream_ms",
    "tenant",
    "worker",
}


def lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f.read().splitlines() if x]


def line_for(path: str, target: str, n: int = 1, timeout: float = 10.0) -> list[dict]:
    """The access log lines of `target` (bounded wait until there are n)."""
    found: list[dict] = []

    def have() -> bool:
        found[:] = [x for x in lines(path) if x["target"] == target]
        return len(found) >= n

    assert wait_for(have, timeout), (target, lines(path)[-5:])
    return found


def check_shape(x: dict) -> None:
    assert set(x) >= FIELDS, set(x) ^ FIELDS
    datetime.datetime.fromisoformat(x["ts"])  # RFC 3339
    assert x["ts"].endswith("+00:00")
    assert x["client"] == "127.0.0.1"
    assert isinstance(x["status"], int) and isinstance(x["bytes"], int)
    assert isinstance(x["duration_ms"], float) and x["duration_ms"] >= 0
    assert x["tenant"] is None and x["worker"] == 0
    assert (x["upstream"] is None) == (x["upstream_ms"] is None)


@pytest.fixture(scope="module")
def logged(origin, path, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("alog") / "access.log")
    e = Edge(origin.url, path=path, env={"EDGECORE_ACCESS_LOG": log})
    yield e, log
    e.stop()


def test_miss_then_hit_each_yield_one_line(logged, origin, uniq):
    e, log = logged
    t = uniq + "/a?cc=max-age=60&size=1024"
    first = get(e.port, t)
    second = get(e.port, t)
    assert first.status == second.status == 200
    miss, hit = line_for(log, t, 2)
    for x, r in ((miss, first), (hit, second)):
        check_shape(x)
        assert x["method"] == "GET" and x["status"] == 200 and x["bytes"] == len(r.body) == 1024
        assert x["cache_status"] == r.cache_status
        assert x["host"] == "test.local"  # the client's Host, as received
    assert miss["upstream"] == origin.url.split("//")[1].rstrip("/") and miss["upstream_ms"] >= 0
    assert "fwd=uri-miss" in miss["cache_status"]
    assert hit["upstream"] is None and "hit" in hit["cache_status"]
    assert len(line_for(log, t)) == 2  # one line per response, no more


def test_pass_and_head(logged, uniq):
    e, log = logged
    t = uniq + "/p?body=posted"
    r = get(e.port, t, method="POST", body=b"x")
    assert r.status == 200
    (x,) = line_for(log, t)
    check_shape(x)
    assert x["method"] == "POST" and x["bytes"] == len(b"posted") and x["upstream"] is not None
    assert x["cache_status"] == r.cache_status and "fwd=" in x["cache_status"]
    h = uniq + "/h?cc=max-age=60&size=300"
    get(e.port, h, method="HEAD")
    (y,) = line_for(log, h)
    assert y["method"] == "HEAD" and y["bytes"] == 0 and y["status"] == 200


def test_upstream_5xx_relayed_is_logged(logged, uniq):
    e, log = logged
    t = uniq + "/e?status=503&cc=no-store&body=down"
    r = get(e.port, t)
    assert r.status == 503
    (x,) = line_for(log, t)
    assert x["status"] == 503 and x["bytes"] == 4 and x["cache_status"] == r.cache_status


def test_stale_is_logged(logged, origin, uniq):
    """RFC 5861 4 (stale_if_error default 60 s): the stale answer is one line, naming the upstream asked."""
    e, log = logged
    p = uniq + "/s"
    origin.override(p, cc="max-age=1", body="good")
    first = get(e.port, p)
    assert first.status == 200
    time.sleep(max(0.0, 1.2 - int(first.header("age") or 0)))  # not synchronisation: freshness is wall-clock
    origin.override(p, status="500", body="bad", cc="no-store")
    r = get(e.port, p)
    assert r.status == 200 and r.body == b"good" and "stale" in r.cache_status
    xs = line_for(log, p, 2)
    stale = [x for x in xs if x["cache_status"] == r.cache_status]
    assert len(stale) == 1
    assert stale[0]["status"] == 200 and stale[0]["upstream"] is not None and stale[0]["bytes"] == 4


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        for _ in range(100):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize(
    "case,request_bytes,status",
    [
        ("400", b"GET /BAD400 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("431", b"GET /BAD431 HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (20 << 10) + b"\r\n\r\n", 431),
        ("414", b"GET /BAD414" + b"y" * (9 << 10) + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ],
)
def test_refusals_are_logged(logged, case, request_bytes, status):
    """RFC 9112 6.3 (differing Content-Length), max_header_size, max_request_line: each refusal is one
    access log line and one info line in the process log with its reason."""
    e, log = logged
    before = len(lines(log))
    out = _raw(e.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d" % status)
    assert wait_for(lambda: any(x["status"] == status for x in lines(log)[before:]), 10)
    (x,) = [x for x in lines(log)[before:] if x["status"] == status]
    assert set(x) >= FIELDS and x["client"] == "127.0.0.1" and x["bytes"] > 0
    assert "fwd=bypass" in x["cache_status"]
    assert wait_for(lambda: any(f"INFO edgecore.protocol: {status} refused" in ln for ln in e.lines), 5)


def test_sigusr1_reopens_after_a_rename(logged, uniq):
    e, log = logged
    get(e.port, uniq + "/before")
    line_for(log, uniq + "/before")
    os.rename(log, log + ".1")
    e.proc.send_signal(signal.SIGUSR1)  # the supervisor passes it to every worker
    t = uniq + "/after"

    def in_new_file() -> bool:
        get(e.port, t)
        return any(x["target"] == t for x in lines(log))

    assert wait_for(in_new_file, 10)
    assert e.proc.poll() is None  # SIGUSR1 stops nothing
    assert any(x["target"] == uniq + "/before" for x in lines(log + ".1"))
    assert not any(x["target"] == uniq + "/before" for x in lines(log))


def test_edgecore_5xx_is_logged(path, tmp_path):
    log = str(tmp_path / "a.log")
    port = closed_port()
    e = Edge(f"http://127.0.0.1:{port}", path=path, env={"EDGECORE_ACCESS_LOG": log})
    try:
        r = get(e.port, "/down")
        assert r.status == 502
        (x,) = line_for(log, "/down")
        check_shape(x)
        assert (
            x["status"] == 502
            and x["upstream"] == f"127.0.0.1:{port}"
            and x["cache_status"] == r.cache_status
        )
        assert x["bytes"] == len(r.body)
    finally:
        e.stop()


def test_log_format_json_and_readable(origin, path):
    """log_format = json: every process log line is one JSON object; no bytes repr anywhere."""
    e = Edge(origin.url, path=path, env={"EDGECORE_LOG_FORMAT": "json"})
    try:
        out = _raw(e.port, b"GET /q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400")
        assert wait_for(lambda: any("refused" in ln for ln in e.lines), 10)
    finally:
        assert e.stop() == 0
    logged = [ln for ln in e.lines if ln.strip() and not ln.startswith("edgecore: serving")]
    objs = [json.loads(ln) for ln in logged]  # each one parses
    refusal = [o for o in objs if "refused" in o["msg"]]
    assert refusal and refusal[0]["level"] == "INFO" and "Transfer-Encoding" in refusal[0]["msg"]
    assert "GET /q" in refusal[0]["msg"]
    assert not any("b'" in ln or 'b"' in ln for ln in e.lines)


def test_clean_stop_logs_no_error(origin, path):
    e = Edge(origin.url, path=path)
    get(e.port, "/clean?cc=max-age=5")
    assert e.stop() == 0
    assert not any("ERROR" in ln or "Task was destroyed" in ln for ln in e.lines), e.lines
    assert any("stopped" in ln for ln in e.lines)


def test_access_log_off_by_default_writes_nothing(origin, path, tmp_path):
    e = Edge(origin.url, path=path, args=[], env={})
    try:
        c = Conn(e.port)
        c.request("GET", "/quiet?cc=max-age=5")
        assert c.read_response().status == 200
        c.close()
    finally:
        e.stop()
    assert not any('"cache_status"' in ln for ln in e.lines)


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("access_log", True, "is not off, stdout, stderr or a file path"),
        ("access_log", "on", "is not off, stdout, stderr or a file path"),
        ("access_log", "/nonexistent-dir-xyz/a.log", "does not exist"),
        ("log_format", "xml", "is not one of text, json"),
    ],
)
def test_config_errors_name_the_key(key, value, why):
    with pytest.raises(ConfigErrors) as ei:
        load(None, {key: value}, environ={}, require_upstream=False)
    (p,) = ei.value.problems
    assert p.key == key and why in p.why


@pytest.mark.parametrize(
    "value,parsed", [("off", "off"), ("STDOUT", "stdout"), ("stderr", "stderr"), (False, "off")]
)
def test_config_access_log_values(value, parsed, tmp_path):
    assert load(None, {"access_log": value}, environ={}, require_upstream=False).access_log == parsed
    f = str(tmp_path / "x.log")
    assert load(None, {"access_log": f}, environ={}, require_upstream=False).access_log == f
    assert load(None, {}, environ={}, require_upstream=False).access_log == "off"


def test_lines_are_batched_one_write_per_loop_iteration(tmp_path):
    """Off the hot path: records made in one loop iteration are written by one call_soon, in one write."""
    import asyncio

    from edgecore.accesslog import AccessLog

    writes: list[str] = []

    class Spy:
        def write(self, s: str) -> None:
            writes.append(s)

        def flush(self) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        a = AccessLog(str(tmp_path / "b.log"), loop, 3)
        a._file = Spy()  # type: ignore[assignment]
        for i in range(5):
            a.record(b"10.0.0.1", b"GET", b"h", b"/%d" % i, 200, 1, 0.0, b"edgecore; hit", None, 0.0)
        assert writes == []  # nothing written inside the request's own callback
        loop.run_until_complete(asyncio.sleep(0))
        assert len(writes) == 1
        got = [json.loads(x) for x in writes[0].splitlines()]
        assert [x["target"] for x in got] == [f"/{i}" for i in range(5)] and got[0]["worker"] == 3
        a.record(b"10.0.0.1", b"GET", b"h", b"/later", 200, 1, 0.0, b"edgecore; hit", None, 0.0)
        loop.run_until_complete(asyncio.sleep(0))
        assert len(writes) == 2 and json.loads(writes[1])["target"] == "/later"
    finally:
        loop.close()
