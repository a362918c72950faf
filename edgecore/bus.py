"""The invalidation bus: one Redis stream shared by every node (docs/invalidation.md).

Owns: this node's Redis client (in the admin process: one per node, not per worker), the publisher (XADD of
an invalidation, trimmed with MINID ~ so that at least `invalidation_retention` seconds stay), the reader
(XREAD BLOCK from the last applied id, each message applied once through invalidation.apply, its own messages
skipped and counted, malformed ones logged, counted and skipped), the lease (the time this node last
confirmed it had read the stream to its end, + invalidation_lease, written to the shared counters'
C_LEASE_UNTIL word that every worker's hit paths compare with their clock), gap handling (XINFO STREAM
`entries-added` against what was read since the last id: a trimmed gap flushes the whole cache, not ready
until done), the last applied id's state file, and the revoked-tenant hash beside the stream
(`<stream>:revoked`).
Invariants: the reader never dies of a message or of Redis (every failure is logged, counted, retried with a
bounded backoff); a message is counted as applied only once apply() returned; the lease word only moves
forward from a confirmation taken before the read that proved it (a paused or cut-off node's lease runs out by
itself); `publish` returns the entry id only once XADD returned, and raises BusError within
PUBLISH_TIMEOUT otherwise.
Never: decide what an invalidation does to the cache (invalidation.py), or block the admin loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from . import invalidation
from .cache import Cache
from .config import Config
from .invalidation import Invalidation, MalformedMessage
from .metrics import C_LEASE_UNTIL, SharedCounters

log = logging.getLogger("edgecore.bus")

PUBLISH_TIMEOUT = 2.0  # INTERFACE: a purge not appended within 2 s is answered 503
READ_COUNT = 512  # entries per XREAD
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0  # reconnect backoff bounds (seconds)


class BusError(Exception):
    """The bus could not take a message (Redis unreachable, timeout, refused)."""


def _id_tuple(i: bytes | str) -> tuple[int, int]:
    s = i.decode() if isinstance(i, bytes) else i
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def lease_word_until(words: Any) -> float:
    """The lease deadline in the shared word (epoch seconds; 0 before the first confirmation)."""
    return int(words[C_LEASE_UNTIL]) / 1e6


class Bus:
    def __init__(
        self, cfg: Config, cache: Cache, counters: SharedCounters, scope: invalidation.Scope
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.counters = counters
        self.scope = scope  # what applying a message needs (the admin process updates it on reload)
        self.stream = cfg.invalidation_stream
        self.revoked_key = cfg.invalidation_stream + ":revoked"
        self.node = cfg.node_id
        self.lease = cfg.invalidation_lease
        # XREAD blocks at most this long, so that an idle stream is still confirmed well within the lease
        self.block_ms = max(10, min(250, int(self.lease * 1000 / 4)))
        self.redis: Any = aioredis.Redis.from_url(
            cfg.invalidation_url,
            socket_connect_timeout=PUBLISH_TIMEOUT,
            socket_timeout=None,
            health_check_interval=0,
        )
        self.last_id: bytes | None = None  # the last applied (or skipped) entry's id
        self.read_count = 0  # entries-added up to and including last_id
        self.confirmed = 0.0  # when this node last confirmed it had read the stream to its end
        self.connected = False
        self.flushing = ""  # reason while a gap flush runs (not ready)
        self.error = ""  # the last Redis error, for /readyz and logs
        self.stats = {
            "applied": 0,
            "own": 0,
            "malformed": 0,
            "failed": 0,
            "gaps": 0,
            "reconnects": 0,
            "published": 0,
            "publish_errors": 0,
        }
        self._task: asyncio.Task[None] | None = None
        self._load_state()

    # ------------------------------------------------------------------------------------------ state file
    def _load_state(self) -> None:
        path = self.cfg.invalidation_state
        if not path:
            return
        try:
            with open(path) as f:
                st = json.load(f)
            if st.get("stream") == self.stream:
                self.last_id = str(st["id"]).encode()
                self.read_count = int(st["count"])
                _id_tuple(self.last_id)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("invalidation state %s unreadable (%s): starting from the stream's end", path, e)
            self.last_id, self.read_count = None, 0

    def _save_state(self) -> None:
        path = self.cfg.invalidation_state
        if not path or self.last_id is None:
            return
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"stream": self.stream, "id": self.last_id.decode(), "count": self.read_count}, f)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write invalidation state %s: %s", path, e)

    # ------------------------------------------------------------------------------------------ lease
    def _confirm(self, at: float) -> None:
        if at > self.confirmed:
            self.confirmed = at
            self.counters.set_flag(C_LEASE_UNTIL, int((at + self.lease) * 1e6))

    def lag(self) -> float:
        """Seconds since this node last confirmed the stream's end (the lag gauge)."""
        return max(0.0, time.time() - self.confirmed) if self.confirmed else float("inf")

    def describe(self) -> dict[str, Any]:
        lag = self.lag()
        return {
            "stream": self.stream,
            "node_id": self.node,
            "connected": self.connected,
            "last_id": self.last_id.decode() if self.last_id else None,
            "lag_seconds": None if lag == float("inf") else round(lag, 3),
            "behind": lag > self.lease,
            "flushing": bool(self.flushing),
            "error": self.error or None,
            **self.stats,
        }

    def readiness(self) -> tuple[bool, str]:
        """(ready?, a line for /readyz): not ready only while a gap flush runs; behind is said, not 503."""
        if self.flushing:
            return False, f"invalidation bus: {self.flushing}"
        lag = self.lag()
        if lag > self.lease:
            why = self.error or "not confirmed yet"
            shown = "never" if lag == float("inf") else f"{lag:.1f} s ago"
            return True, f"invalidation bus behind (last confirmed {shown}: {why}); hits revalidate"
        return (
            True,
            f"invalidation bus ok (lag {lag:.3f} s, last id {(self.last_id or b'-').decode()})",
        )

    # ------------------------------------------------------------------------------------------ publisher
    async def publish(self, msg: Invalidation) -> str:
        """Append msg to the stream -> its entry id, once XADD returned; BusError within PUBLISH_TIMEOUT
        otherwise. A revoke/restore also sets/clears the tenant in the revoked hash, in the same MULTI."""
        try:
            return await asyncio.wait_for(self._publish_retrying(msg), PUBLISH_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as e:
            self.stats["publish_errors"] += 1
            raise BusError(f"the invalidation bus did not take the message: {type(e).__name__}: {e}") from e

    async def _publish_retrying(self, msg: Invalidation) -> str:
        """A pooled connection that Redis closed (a restart) fails once: try again on a new one (bounded
        by publish's timeout)."""
        for attempt in range(3):
            try:
                return await self._publish(msg)
            except RedisConnectionError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _publish(self, msg: Invalidation) -> str:
        minid = str(max(0, int((time.time() - self.cfg.invalidation_retention) * 1000)))
        fields = invalidation.encode(msg)
        if msg.kind in ("revoke", "restore"):
            async with self.redis.pipeline(transaction=True) as p:
                if msg.kind == "revoke":
                    p.hset(self.revoked_key, msg.value, f"{time.time():.3f}")
                else:
                    p.hdel(self.revoked_key, msg.value)
                p.xadd(self.stream, fields, minid=minid, approximate=True)
                res = await p.execute()
            eid = res[-1]
        else:
            eid = await self.redis.xadd(self.stream, fields, minid=minid, approximate=True)
        self.stats["published"] += 1
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    async def set_revoked(self, name: str) -> None:
        await asyncio.wait_for(self.redis.hset(self.revoked_key, name, f"{time.time():.3f}"), PUBLISH_TIMEOUT)

    async def clear_revoked(self, name: str) -> None:
        await asyncio.wait_for(self.redis.hdel(self.revoked_key, name), PUBLISH_TIMEOUT)

    async def read_revoked(self) -> set[str]:
        names = await asyncio.wait_for(self.redis.hkeys(self.revoked_key), PUBLISH_TIMEOUT)
        return {n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names}

    # ------------------------------------------------------------------------------------------ reader
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._save_state()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def run(self) -> None:
        """Read the stream until cancelled, reconnecting with a bounded, jittered backoff."""
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._connected()
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError) as e:
                if self.connected or not self.error:
                    log.warning(
                        "invalidation bus %s unreachable: %s (retrying)", self.cfg.invalidation_url, e
                    )
                self.connected = False
                self.error = f"{type(e).__name__}: {e}"
                self.stats["reconnects"] += 1
            except Exception:  # never a dead reader: log, back off, go on
                log.exception("invalidation reader failed (retrying)")
                self.connected = False
                self.error = "reader error (see the log)"
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _connected(self) -> None:
        r = self.redis
        await asyncio.wait_for(r.ping(), PUBLISH_TIMEOUT)
        self.connected = True
        if self.error:
            log.info("invalidation bus %s reachable again", self.cfg.invalidation_url)
        self.error = ""
        await self._sync_revoked()
        while True:
            t_info = time.time()
            info = await self._info()
            if self.last_id is None:
                # a fresh node: its cache is empty, it starts from the stream's end
                self.last_id, self.read_count = info["last"], info["added"]
                self._save_state()
            gap = self._gap(info)
            if gap:
                await self._flush(gap, info)
                continue
            at_end = info["added"] == self.read_count
            if at_end:
                self._confirm(t_info)
            res = await r.xread(
                {self.stream: self.last_id}, count=READ_COUNT, block=self.block_ms if at_end else None
            )
            if res:
                self._apply_batch(res[0][1])

    async def _sync_revoked(self) -> None:
        hook = invalidation.on_revoked_set
        names = await self.read_revoked()
        if hook is None:
            if names:
                log.warning("revoked tenants on the bus %s: no revocation hook installed here", sorted(names))
            return
        try:
            hook(names)
        except Exception:
            log.exception("the revoked-set hook failed")

    async def _info(self) -> dict[str, Any]:
        try:
            raw = await self.redis.xinfo_stream(self.stream)
        except ResponseError as e:
            if "no such key" not in str(e).lower():
                raise
            return {"added": 0, "last": b"0-0", "first": None, "length": 0}
        first = raw.get("first-entry")
        return {
            "added": int(raw["entries-added"]),
            "last": raw["last-generated-id"],
            "first": first[0] if first else None,
            "length": int(raw["length"]),
        }

    def _gap(self, info: dict[str, Any]) -> str:
        """Why entries after last_id cannot all be read any more ("" when they can): XINFO STREAM's
        entries-added against what was read (trimming removes the oldest entries first)."""
        assert self.last_id is not None
        after = info["added"] - self.read_count  # entries added after last_id
        if after < 0 or _id_tuple(info["last"]) < _id_tuple(self.last_id):
            return "the stream was reset (fewer entries than already read)"
        if after == 0:
            return ""
        first = info["first"]
        if first is not None and _id_tuple(first) <= _id_tuple(self.last_id):
            return ""  # the stream still starts at or before our position: nothing after it was trimmed
        if info["length"] < after:
            return f"{after - info['length']} entries after {self.last_id.decode()} were trimmed"
        return ""

    async def _flush(self, why: str, info: dict[str, Any]) -> None:
        """A gap: drop everything (it cannot be proved fresh), then go on from the stream's end."""
        self.stats["gaps"] += 1
        self.flushing = f"catching up: {why}; flushing the cache"
        log.warning("invalidation gap: %s: flushing the cache", why)
        try:
            await asyncio.sleep(0)  # (readiness says so before the flush runs)
            n = invalidation.flush(self.cache)
            log.warning("invalidation gap: flushed %d entries", n)
            # from the end as the XINFO before the flush saw it: what came after is read normally
            self.last_id, self.read_count = info["last"], info["added"]
            self._save_state()
        finally:
            self.flushing = ""

    def _apply_batch(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for eid, fields in entries:
            try:
                msg = invalidation.decode(fields)
            except MalformedMessage as e:
                self.stats["malformed"] += 1
                log.warning("invalidation %s skipped: malformed: %s", eid.decode(errors="replace"), e)
            else:
                if msg.origin_node == self.node:
                    self.stats["own"] += 1  # applied when it was published here
                else:
                    try:
                        invalidation.apply(self.cache, msg, self.scope)
                        self.stats["applied"] += 1
                    except Exception:
                        self.stats["failed"] += 1
                        log.exception("invalidation %s could not be applied", eid.decode(errors="replace"))
            self.last_id = eid
            self.read_count += 1
        self._save_state()
