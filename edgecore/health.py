"""Upstream health (active checks) and readiness.

Owns: the active checks of every configured upstream, run once for all workers from the admin process: an
HTTP GET of `health_check_path` every `health_check_interval` seconds (healthy: a 2xx or 3xx status line
within `health_check_timeout`), or without a path a TCP connect; the up/down state built from them
(`healthy_threshold` consecutive good results bring a down server up, `unhealthy_threshold` consecutive bad
ones take an up server down; the first result decides at once), written to the shared health block of
metrics.SharedCounters, which the workers read (they never probe); and the readiness verdict.
Invariants: readiness is a pure function of its inputs (`readiness()`), and the threshold logic one of the
results (`UpstreamHealth.record`), so both are tested without sockets; a check never blocks the loop longer
than its timeout; a change of state is logged with the upstream and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from .config import Config, Upstream
from .metrics import U_DOWN, U_PROBED, SharedCounters

log = logging.getLogger("edgecore.health")


@dataclass
class UpstreamHealth:
    upstream: Upstream
    up: bool = False
    probed: bool = False
    last_error: str = ""
    failures: int = 0  # consecutive bad results
    successes: int = 0  # consecutive good results

    def record(self, ok: bool, error: str, healthy_threshold: int, unhealthy_threshold: int) -> bool | None:
        """One check's result -> the new state when it changed (True up, False down), else None."""
        if ok:
            self.successes += 1
            self.failures = 0
            self.last_error = ""
        else:
            self.failures += 1
            self.successes = 0
            self.last_error = error
        first = not self.probed
        self.probed = True
        if first:
            self.up = ok
            return ok
        if ok and not self.up and self.successes >= healthy_threshold:
            self.up = True
            return True
        if not ok and self.up and self.failures >= unhealthy_threshold:
            self.up = False
            return False
        return None


@dataclass
class Health:
    cfg: Config
    counters: SharedCounters | None = None  # the shared health block the workers read
    upstreams: list[UpstreamHealth] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.upstreams = [UpstreamHealth(u) for u in self.cfg.upstream]

    @property
    def interval(self) -> float:
        return self.cfg.health_check_interval

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(i, h) for i, h in enumerate(self.upstreams)))

    async def _probe(self, i: int, h: UpstreamHealth) -> None:
        try:
            await asyncio.wait_for(self._check(h.upstream), self.cfg.health_check_timeout)
        except (OSError, TimeoutError, ValueError) as e:
            if isinstance(e, TimeoutError):
                why = f"no answer within {self.cfg.health_check_timeout:g}s"
            else:
                why = (getattr(e, "strerror", None) or str(e)) or type(e).__name__
            changed = h.record(False, why, self.cfg.healthy_threshold, self.cfg.unhealthy_threshold)
        else:
            changed = h.record(True, "", self.cfg.healthy_threshold, self.cfg.unhealthy_threshold)
        self._publish(i, h)
        if changed is True:
            log.warning("upstream %s marked up: %s", h.upstream.authority, self._what())
        elif changed is False:
            log.warning("upstream %s marked down: %s", h.upstream.authority, h.last_error)

    def _what(self) -> str:
        path = self.cfg.health_check_path
        return f"GET {path} answered" if path else "TCP connect succeeded"

    async def _check(self, u: Upstream) -> None:
        """One check of u; raises OSError/ValueError (or times out) when it fails."""
        reader, writer = await asyncio.open_connection(u.host, u.port)
        try:
            path = self.cfg.health_check_path
            if not path:
                return
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {u.authority}\r\nUser-Agent: edgecore-health-check\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            line = await reader.readline()
            if not line:
                raise ValueError(f"connection closed before a status line (GET {path})")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP status line: {line[:60].decode('latin-1')!r}")
            status = int(parts[1])
            if not 200 <= status < 400:
                raise ValueError(f"GET {path} answered {status}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _publish(self, i: int, h: UpstreamHealth) -> None:
        c = self.counters
        b = None if c is None else c.block_of(h.upstream.authority, i)  # (its block, assign_blocks)
        if c is None or b is None:
            return
        c.words[c.upstream_word(b, U_DOWN)] = 0 if h.up else 1
        c.words[c.upstream_word(b, U_PROBED)] = 1

    async def run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)

    def any_up(self) -> bool:
        return any(h.up for h in self.upstreams)

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "upstream": h.upstream.authority,
                "weight": h.upstream.weight,
                "up": h.up,
                "probed": h.probed,
                "last_error": h.last_error,
            }
            for h in self.upstreams
        ]

    def report(self) -> str:
        """Lines for /readyz's body: one per upstream, its state and the last reason it failed."""
        out = []
        for h in self.upstreams:
            state = "up" if h.up else ("down" if h.probed else "not probed yet")
            why = f": {h.last_error}" if h.last_error else ""
            out.append(f"upstream {h.upstream.authority} {state}{why}")
        return "\n".join(out)


def readiness(
    *,
    workers_ready: int,
    workers: int,
    draining: bool,
    upstream_up: bool,
    probed: bool,
    requires_upstream: bool = False,
) -> tuple[bool, str]:
    """(ready?, reason). Ready = listening (every worker up) and not draining; an upstream must be up only
    with `requires_upstream` (ready_requires_upstream: an edge that can serve stale stays in the pool)."""
    if draining:
        return False, "draining"
    if workers_ready < workers:
        return False, f"{workers_ready} of {workers} workers listening"
    if requires_upstream:
        if not probed:
            return False, "upstreams not probed yet"
        if not upstream_up:
            return False, "no upstream reachable"
    return True, "ready"
