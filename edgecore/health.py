"""Upstream health and readiness.

Owns: the active probe of every configured upstream (a TCP connect every `interval` seconds, from the admin
process) and the readiness verdict built from it, the workers' liveness flags and the drain flag.
Invariants: readiness is a pure function of those inputs (`readiness()`), so it is tested without sockets;
a probe never blocks the loop longer than its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from .config import Config, Upstream


@dataclass
class UpstreamHealth:
    upstream: Upstream
    up: bool = False
    probed: bool = False
    last_error: str = ""
    failures: int = 0


@dataclass
class Health:
    cfg: Config
    interval: float = 2.0
    upstreams: list[UpstreamHealth] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.upstreams = [UpstreamHealth(u) for u in self.cfg.upstream]

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(h) for h in self.upstreams))

    async def _probe(self, h: UpstreamHealth) -> None:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(h.upstream.host, h.upstream.port), self.cfg.connect_timeout
            )
        except (OSError, TimeoutError) as e:
            h.up = False
            h.failures += 1
            h.last_error = str(e) or type(e).__name__
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            h.up = True
            h.failures = 0
            h.last_error = ""
        h.probed = True

    async def run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)

    def any_up(self) -> bool:
        return any(h.up for h in self.upstreams)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"upstream": h.upstream.authority, "up": h.up, "last_error": h.last_error} for h in self.upstreams
        ]


def readiness(
    *, workers_ready: int, workers: int, draining: bool, upstream_up: bool, probed: bool
) -> tuple[bool, str]:
    """(ready?, reason). Ready = listening (every worker up), an upstream usable, not draining."""
    if draining:
        return False, "draining"
    if workers_ready < workers:
        return False, f"{workers_ready} of {workers} workers listening"
    if not probed:
        return False, "upstreams not probed yet"
    if not upstream_up:
        return False, "no upstream reachable"
    return True, "ready"
