"""The caching flow in process (edgecore/cachepath.py), through a real ClientProtocol on an in-memory
transport: background work is kept until done and its failures are logged, and errors raised by the flow
become responses with their own class's status and Cache-Status detail."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from client import closed_port
from memtransport import MemoryTransport, wait_tasks

from edgecore import cachepath, entry, errors, keys, policy, protocol
from edgecore.cache import Cache
from edgecore.config import Config, Upstream
from edgecore.metrics import SharedCounters


@pytest.fixture
def worker():
    loop = asyncio.new_event_loop()
    cfg = Config(upstream=(Upstream("127.0.0.1", closed_port()),), cache_size=8 << 20, connect_timeout=1.0)
    cache = Cache(cfg.cache_size, cfg.max_object_size)
    ctx = protocol.make_context(cfg, cache, SharedCounters(slots=2).slot_view(1), loop)
    p = protocol.ClientProtocol(ctx)
    t = MemoryTransport()
    p.connection_made(t)
    yield loop, ctx, p, t
    ctx.stop()
    loop.close()
    cache.close()


def _stale_while_revalidate(ctx, target: bytes) -> None:
    """A stored response that is stale but inside stale-while-revalidate (RFC 5861 3)."""
    now = time.time()
    f = policy.Freshness(lifetime=1.0, initial_age=0.0, response_time=now - 10, stale_while_revalidate=600.0)
    value, birth, fresh_until, flags = entry.encode(
        200, b"OK", [(b"cache-control", b"max-age=1, stale-while-revalidate=600")], b"old", f
    )
    ctx.cache.store(keys.primary_key(b"GET", b"t.example", target), value, birth, fresh_until + 600, flags)


@pytest.mark.parametrize("failure", ["refused", "bug"])
def test_background_refresh_is_kept_until_done_and_its_failure_logged(worker, caplog, monkeypatch, failure):
    loop, ctx, p, t = worker
    held: list[bool] = []
    real = cachepath.exchange

    async def spy(*a, **kw):
        held.append(asyncio.current_task() in ctx.tasks)  # the worker keeps the running refresh
        if failure == "bug":
            raise RuntimeError("a bug in the refresh")
        return await real(*a, **kw)

    monkeypatch.setattr(cachepath, "exchange", spy)
    _stale_while_revalidate(ctx, b"/swr")
    caplog.set_level(logging.INFO, logger="edgecore.cachepath")
    p.data_received(b"GET /swr HTTP/1.1\r\nHost: t.example\r\nPragma: x\r\n\r\n")
    wait_tasks(loop, ctx)
    assert held == [True]
    assert b"detail=stale-while-revalidate" in t.data and t.data.endswith(b"old")
    assert not ctx.tasks and not ctx.refreshing
    logged = [r for r in caplog.records if "background refresh" in r.getMessage()]
    assert len(logged) == 1 and "/swr" in logged[0].getMessage() and "b'" not in logged[0].getMessage()
    if failure == "bug":
        assert logged[0].levelno == logging.ERROR and logged[0].exc_info is not None
    else:
        assert logged[0].levelno == logging.INFO and "cannot connect" in logged[0].getMessage()


def test_error_classes_carry_their_own_status_and_detail():
    """No status is changed on an instance: every class that maps to a status says it itself."""
    expected = {
        errors.BadRequest: (400, "bad-request"),
        errors.ContentTooLarge: (413, "content-too-large"),
        errors.HeaderTooLarge: (431, "header-too-large"),
        errors.InternalError: (500, "internal-error"),
        errors.UpstreamError: (502, "upstream-error"),
        errors.UpstreamIncomplete: (502, "upstream-incomplete"),
        errors.UpstreamTimeout: (504, "upstream-timeout"),
        errors.NotCached: (504, "only-if-cached"),
    }
    for cls, (status, detail) in expected.items():
        e = cls("x")
        assert (e.status, e.detail) == (status, detail), cls
        assert "status" not in vars(e) and "reason" not in vars(e)


def test_only_if_cached_with_nothing_stored_is_504_from_its_error_class(worker):
    loop, ctx, p, t = worker
    p.data_received(b"GET /nothing HTTP/1.1\r\nHost: t.example\r\nCache-Control: only-if-cached\r\n\r\n")
    wait_tasks(loop, ctx)
    assert t.data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"cache-status: edgecore; fwd=miss; detail=only-if-cached\r\n" in t.data


def test_request_body_over_the_limit_is_413_and_closes(worker):
    loop, ctx, p, t = worker
    n = ctx.cfg.max_body_size + 1
    p.data_received(b"POST /up HTTP/1.1\r\nHost: t.example\r\nContent-Length: %d\r\n\r\n" % n)
    wait_tasks(loop, ctx)
    assert t.data.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"detail=content-too-large" in t.data and t.closed
