"""The access log (one JSON object per line and response) and the process log's format.

Owns: `AccessLog`, a worker's access log: `record` appends one line to a list; the list is written by one
`loop.call_soon` callback per loop iteration (one write per batch, never one per response); `reopen` (SIGUSR1,
for logrotate) reopens a file target by its path. `json_formatter`/`set_process_format` for `log_format`.
Invariants: a response is recorded once, where it is counted (serve.serve_stored, sinks.StreamSink.end,
protocol.ClientProtocol.error); every string in a line is text (request bytes decoded latin-1), never a bytes
repr; a failing write drops the batch and logs one warning, it never raises into the request path.
The C hit path cannot record (it answers without Python): context.make_hitpath turns it off while the access
log is on (README "Access log" gives the measured cost). When the log is off, nothing here runs per request.
Never: block the loop longer than one write per iteration, or decide anything about a response.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import time
from typing import IO, Any

__all__ = ["AccessLog", "json_formatter", "open_access_log", "set_process_format"]

log = logging.getLogger("edgecore.accesslog")


def _text(b: bytes) -> str:
    return b.decode("latin-1")


class AccessLog:
    """One worker's access log: lines batched per loop iteration, one write per batch."""

    def __init__(self, target: str, loop: asyncio.AbstractEventLoop, worker: int) -> None:
        self.target = target
        self.loop = loop
        self.worker = worker
        self.pending: list[str] = []
        self._scheduled = False
        self._file: IO[str] | None = None
        self._own = False
        self._open()

    def _open(self) -> None:
        if self.target == "stdout":
            self._file, self._own = sys.stdout, False
        elif self.target == "stderr":
            self._file, self._own = sys.stderr, False
        else:
            f = open(self.target, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115  (kept open)
            self._file, self._own = f, True

    def reopen(self) -> None:
        """SIGUSR1: write what is pending, then reopen the file by its path (logrotate renamed it)."""
        self.flush()
        if self._own and self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            try:
                self._open()
            except OSError as e:
                self._file = None
                log.warning("access log %s cannot be reopened: %s", self.target, e.strerror or e)

    def record(
        self,
        peer: bytes,
        method: bytes,
        host: bytes,
        target: bytes,
        status: int,
        nbytes: int,
        t0: float,
        cache_status: bytes,
        upstream: str | None,
        upstream_t0: float,
        tenant: str | None = None,
    ) -> None:
        now = time.time()
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="milliseconds"),
            "client": _text(peer),
            "method": _text(method),
            "host": _text(host),
            "target": _text(target),
            "status": status,
            "bytes": nbytes,
            "duration_ms": round((now - t0) * 1000, 3) if t0 else 0.0,
            "cache_status": _text(cache_status),
            "upstream": upstream,
            "upstream_ms": round((now - upstream_t0) * 1000, 3)
            if upstream is not None and upstream_t0
            else None,
            "tenant": tenant,
            "worker": self.worker,
        }
        self.pending.append(json.dumps(line, separators=(",", ":")))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the batch: one write (and one flush) per loop iteration."""
        self._scheduled = False
        lines = self.pending
        if not lines:
            return
        self.pending = []
        f = self._file
        if f is None:
            return
        try:
            f.write("\n".join(lines) + "\n")
            f.flush()
        except (OSError, ValueError) as e:
            log.warning("access log %s: %d lines lost: %s", self.target, len(lines), e)

    def close(self) -> None:
        self.flush()
        if self._own and self._file is not None:
            self._file.close()
            self._file = None


def open_access_log(target: str, loop: asyncio.AbstractEventLoop, worker: int) -> AccessLog | None:
    """The worker's access log for the `access_log` key (None: "off")."""
    if target == "off":
        return None
    return AccessLog(target, loop, worker)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "pid": record.process,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def json_formatter() -> logging.Formatter:
    return _JsonFormatter()


TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"  # the process log's text lines


def set_process_format(fmt: str) -> None:
    """`log_format = json`: every handler of the root logger writes one JSON object per line; `text` (a
    reload back from json) puts the text lines back on the handlers json had."""
    for h in logging.getLogger().handlers:
        if fmt == "json" and not isinstance(h.formatter, _JsonFormatter):
            h.setFormatter(_JsonFormatter())
        elif fmt != "json" and isinstance(h.formatter, _JsonFormatter):
            h.setFormatter(logging.Formatter(TEXT_FORMAT))


def apply_process_log(log_format: str, log_level: str) -> None:
    """The process log's settings (at start and on a reload, in every process)."""
    set_process_format(log_format)
    logging.getLogger().setLevel(getattr(logging, log_level.upper(), logging.INFO))
