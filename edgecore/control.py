"""The control channel between the supervisor and its children (workers and the admin process): how a
reloaded config reaches every process, and how the admin process asks the supervisor for a reload.

Owns: the framing of both directions and the child's end. Supervisor -> child: a pipe per child, created
just before its fork; each message is a 4-byte length and a pickle: ("config", generation, Config, ...) to
apply, or ("result", request id, answer) for the admin process's reload request. Child -> supervisor: one
pipe shared by every child, fixed RECORD-byte records (atomic: below PIPE_BUF, so children never interleave):
`ack+`/`ack-` (pid, generation applied or failed) and `rld?` (pid, request id: the admin process's POST
/reload). A pickle rather than the config file: the supervisor alone loads and validates, so every process
applies the very Config it checked (a file edited meanwhile cannot split them).
Invariants: a child never blocks on the channel (its end is read by the event loop, add_reader); a message
that fails to apply is acknowledged as failed, never left unanswered; the supervisor gone (EOF) stops reading.
Never: load or validate a config (the supervisor does, config.load), or decide what a reload changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edgecore")

RECORD = struct.Struct("<4siq")  # kind, pid, value
ACK_OK = b"ack+"
ACK_FAILED = b"ack-"
RELOAD_REQUEST = b"rld?"
_LEN = struct.Struct("<I")


def frame(msg: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def record(kind: bytes, value: int) -> bytes:
    return RECORD.pack(kind, os.getpid(), value)


def parse_records(buf: bytearray) -> list[tuple[bytes, int, int]]:
    """The complete records at the start of buf (removed from it)."""
    out = []
    n = len(buf) // RECORD.size
    for i in range(n):
        kind, pid, value = RECORD.unpack_from(buf, i * RECORD.size)
        out.append((kind, pid, value))
    del buf[: n * RECORD.size]
    return out


class ChildChannel:
    """A child's end: reads the supervisor's messages on the loop and hands each to `on_message`; writes
    records back."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_fd: int,
        write_fd: int,
        on_message: Callable[[tuple[Any, ...]], None],
    ) -> None:
        self.loop = loop
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.on_message = on_message
        self._buf = bytearray()
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.read_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the supervisor is gone
            self.close()
            return
        self._buf += data
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if len(self._buf) < _LEN.size + n:
                break
            body = bytes(self._buf[_LEN.size : _LEN.size + n])
            del self._buf[: _LEN.size + n]
            try:
                msg = pickle.loads(body)
            except Exception:
                log.exception("control message could not be read")
                continue
            self.on_message(msg)

    def send(self, kind: bytes, value: int) -> None:
        with contextlib.suppress(OSError):  # (the supervisor is gone: nobody to tell)
            os.write(self.write_fd, record(kind, value))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.read_fd)
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
