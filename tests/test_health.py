"""Active health checks' state machine and the readiness verdict (health.py), as tables; and one real HTTP
check against the scriptable origin."""

from __future__ import annotations

import asyncio

import pytest

from edgecore.config import Upstream, build
from edgecore.health import Health, UpstreamHealth, readiness
from edgecore.metrics import U_DOWN, U_PROBED, SharedCounters

# (results in order, healthy_threshold, unhealthy_threshold) -> the states after each result
# (nginx health_check passes/fails and Envoy healthy/unhealthy_threshold semantics: consecutive results)
STATE_TABLE = [
    ("ok", 2, 2, [True]),  # the first result decides at once
    ("bad", 2, 2, [False]),
    ("ok bad bad", 2, 2, [True, True, False]),  # two bad in a row take it down
    ("ok bad ok bad", 2, 2, [True, True, True, True]),  # not consecutive: stays up
    ("bad ok ok", 2, 2, [False, False, True]),  # two good in a row bring it back
    ("bad ok bad ok", 2, 2, [False, False, False, False]),
    ("ok bad", 1, 1, [True, False]),
    ("ok bad bad bad ok ok ok", 3, 3, [True, True, True, False, False, False, True]),
]


@pytest.mark.parametrize(("results", "healthy", "unhealthy", "states"), STATE_TABLE)
def test_thresholds(results, healthy, unhealthy, states):
    h = UpstreamHealth(Upstream("h", 1))
    got = []
    for r in results.split():
        h.record(r == "ok", "" if r == "ok" else "refused", healthy, unhealthy)
        got.append(h.up)
    assert got == states
    assert h.probed


def test_record_reports_changes_only():
    h = UpstreamHealth(Upstream("h", 1))
    assert h.record(True, "", 2, 2) is True
    assert h.record(False, "x", 2, 2) is None
    assert h.record(False, "x", 2, 2) is False and h.last_error == "x"
    assert h.record(False, "x", 2, 2) is None


# readiness: INTERFACE.md /readyz; upstream health matters only with ready_requires_upstream
READY_TABLE = [
    # workers_ready, workers, draining, upstream_up, probed, requires -> ready, reason
    (2, 2, False, True, True, False, True, "ready"),
    (2, 2, False, False, True, False, True, "ready"),  # upstream down: still ready (can serve stale)
    (2, 2, False, False, False, False, True, "ready"),
    (2, 2, False, False, True, True, False, "no upstream reachable"),
    (2, 2, False, True, False, True, False, "upstreams not probed yet"),
    (2, 2, False, True, True, True, True, "ready"),
    (1, 2, False, True, True, False, False, "1 of 2 workers listening"),
    (2, 2, True, True, True, False, False, "draining"),
]


@pytest.mark.parametrize(("wr", "w", "draining", "up", "probed", "req", "ok", "why"), READY_TABLE)
def test_readiness(wr, w, draining, up, probed, req, ok, why):
    got = readiness(
        workers_ready=wr, workers=w, draining=draining, upstream_up=up, probed=probed, requires_upstream=req
    )
    assert got == (ok, why)


def test_http_check_publishes_to_the_shared_block(origin):
    """A real GET of health_check_path: 2xx/3xx up, anything else down; the state lands in the block the
    workers read."""
    cfg = build(
        {
            "upstream": [origin.url, "http://127.0.0.1:1"],
            "health_check_path": "/hc-unit",
            "health_check_timeout": 2,
            "unhealthy_threshold": 1,
        }
    )
    counters = SharedCounters(slots=2, upstreams=2)
    h = Health(cfg, counters)
    down = [counters.upstream_word(i, U_DOWN) for i in range(2)]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(h.probe_once())
        assert [u.up for u in h.upstreams] == [True, False]
        assert [counters.words[d] for d in down] == [0, 1]
        assert all(counters.words[counters.upstream_word(i, U_PROBED)] == 1 for i in range(2))
        seen = origin.requests_for("/hc-unit")[-1]
        assert seen.method == "GET" and seen.header("host") == origin.url.removeprefix("http://")
        origin.override("/hc-unit", status="500")
        loop.run_until_complete(h.probe_once())
        assert not h.upstreams[0].up and "500" in h.upstreams[0].last_error
        assert counters.words[down[0]] == 1
        assert "down: GET /hc-unit answered 500" in h.report()
    finally:
        loop.close()
