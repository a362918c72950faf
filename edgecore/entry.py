"""The stored form of a cached response: what goes into a slab-cache value, and back.

Owns: the byte layout of cached values, and the layout constants the C paths use (META_SIZE and the OFF_*
offsets, computed from the META struct format: the C paths are handed them, they never restate them).
A value is META (fixed struct) + a complete HTTP/1.1 response (status line, stored header fields,
Content-Length, blank line, body) ready to be written to a client with `Age` and `Cache-Status` spliced in
right after the status line. What every cached response would repeat is not stored: Content-Length (the
body's length, written with the dynamic fields: content_length()), and, implied by META flags, the status
line "HTTP/1.1 200 OK" (E_STATUS_200: statusline_len is 0) and our own Via field line when the response had
no Via (E_OWN_VIA: written with the dynamic fields); status_line() and dynamic_via() give them back, and the C
hit path is handed the same bits and bytes (IMPLIED).
Invariants: only complete bodies are encoded (the caller checked); the stored head never carries a
fields.HOP_BY_HOP field (Transfer-Encoding and Proxy-Authenticate included), Age or Cache-Status; a
Vary marker entry is told apart by its cache flags, not by its bytes.
Never: I/O, clocks, policy decisions (what is storable and for how long is policy's), or a layout fact
written down twice.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from .fields import HOP_BY_HOP, VIA, Headers
from .policy import Freshness

# 2: META without the derived times and the unread request time; 3: the status line, our Via, Content-Length
# implied
VERSION = 3
# cache-level flags (the slab cache's `flags` int)
FLAG_PLAIN = 1  # a response that may be served while fresh without consulting policy
FLAG_VARY = 2  # a Vary marker: the value lists the field names, variants live at secondary keys
FLAG_RESPONSE = 4  # a response that needs policy on every use (no-cache, ...)

# entry flags (inside META)
E_MUST_REVALIDATE = 1
E_NO_CACHE = 2
E_STATUS_200 = 4  # the status line is STATUS_200, not stored (statusline_len 0)
E_OWN_VIA = 8  # VIA_LINE is not stored: written after Age and Cache-Status (the response had no Via)

STATUS_200 = b"HTTP/1.1 200 OK\r\n"
VIA_LINE = b"via: " + VIA + b"\r\n"
# What the C hit path writes for the two flags (HitPath's `implied`): (bit, status line), (bit, field line)
IMPLIED = ((E_STATUS_200, STATUS_200), (E_OWN_VIA, VIA_LINE))

# Never stored (RFC 9110 7.6.1, 11.7; RFC 9111 3.1): hop-by-hop fields, Age and Cache-Status (written when
# serving), Content-Length (written from the body).
SKIP_STORE = HOP_BY_HOP | {b"age", b"cache-status", b"content-length"}


class Meta(NamedTuple):
    """The stored fields. What a reader also needs is derived, one way, in freshness(): the freshness
    lifetime is fresh_until - birth and the response time birth + initial_age (birth is when the response's
    age was 0: response_time - initial_age), so no fact is stored twice and a soft purge, which lowers
    fresh_until to now, makes the lifetime the age at now by itself."""

    version: int
    eflags: int
    status: int
    statusline_len: int
    head_len: int
    fresh_until: float
    birth: float
    initial_age: float
    swr: float
    sie: float


# One struct code per Meta field, in order; little-endian, no padding ("<"). The two times the C hit path
# reads are doubles; the three spans are float32 (exact for whole seconds below 2**24 s, about 194 days, and
# within 6e-8 of the value otherwise: far below a second for any age or stale window a response carries).
_META_CODES = "BBHHIddfff"
META = struct.Struct("<" + _META_CODES)
META_SIZE = M = META.size
assert len(_META_CODES) == len(Meta._fields)


def _offset(field: str) -> int:
    """Byte offset of a META field: the size of the fields before it (no padding with "<")."""
    return struct.calcsize("<" + _META_CODES[: Meta._fields.index(field)])


# What the C fresh-hit path reads: statusline_len (u16), head_len (u32), fresh_until, birth (doubles), status
# (u16).
OFF_STATUSLINE_LEN = _offset("statusline_len")
OFF_HEAD_LEN = _offset("head_len")
OFF_FRESH_UNTIL = _offset("fresh_until")
OFF_BIRTH = _offset("birth")
OFF_STATUS = _offset("status")  # (u16) the C path counts hits by status class
OFF_EFLAGS = _offset("eflags")  # (u8) E_STATUS_200 and E_OWN_VIA tell the C path what is implied
# What a soft purge rewrites in place (SlabCache.soft_purge): fresh_until (a double), lowered to now at most;
# the lifetime follows (fresh_until - birth)
SOFT_PURGE_LAYOUT = (OFF_FRESH_UNTIL,)
SOFT_PURGE_FLAGS = FLAG_PLAIN | FLAG_RESPONSE  # stored responses (never Vary markers or lock entries)


def render_head(status: int, reason: bytes, headers: Headers, body_len: int) -> tuple[bytes, int]:
    """(head bytes ending in the blank line, length of the status line incl. CRLF): the whole head, as a
    client gets it (nothing implied)."""
    status_line, fields = _render(status, reason, headers)
    status_line = status_line or STATUS_200
    return status_line + fields[:-2] + content_length(body_len) + b"\r\n", len(status_line)


def content_length(body_len: int) -> bytes:
    """The Content-Length field line written with the dynamic fields (it is never stored)."""
    return b"content-length: %d\r\n" % body_len


def _render(status: int, reason: bytes, headers: Headers) -> tuple[bytes, bytes]:
    """(status line, header fields and the blank line): the head in two parts, so encode joins it once. The
    status line is b"" for 200 OK (STATUS_200, implied by E_STATUS_200)."""
    if status == 200 and reason == b"OK":
        status_line = b""
    else:
        status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"")
    lines = [b": ".join(field) for field in headers if field[0] not in SKIP_STORE]
    lines.append(b"\r\n")
    return status_line, b"\r\n".join(lines)


def encode(
    status: int, reason: bytes, headers: Headers, body: bytes, f: Freshness, own_via: bool = False
) -> tuple[bytes, float, float, int]:
    """-> (value, birth, fresh_until, cache_flags). `birth` is when the response's age was 0. With own_via,
    the response carries our Via field line (VIA_LINE) without storing it (the caller checked that it had no
    Via of its own: one with a Via stores it, ours appended)."""
    status_line, fields = _render(status, reason, headers)
    sl = len(status_line)
    birth = f.response_time - f.initial_age
    fresh_until = birth + f.lifetime
    no_cache = f.no_cache
    eflags = (
        (E_MUST_REVALIDATE if f.must_revalidate else 0)
        | (E_NO_CACHE if no_cache else 0)
        | (0 if sl else E_STATUS_200)
        | (E_OWN_VIA if own_via else 0)
    )
    meta = META.pack(
        VERSION,
        eflags,
        status,
        sl,
        sl + len(fields),  # head_len
        fresh_until,
        birth,
        f.initial_age,
        f.stale_while_revalidate,
        f.stale_if_error,
    )
    flags = FLAG_RESPONSE if no_cache else FLAG_PLAIN
    return b"".join((meta, status_line, fields, body)), birth, fresh_until, flags


def meta(value: bytes) -> Meta:
    return Meta._make(META.unpack_from(value, 0))


def freshness(m: Meta) -> Freshness:
    return Freshness(
        lifetime=m.fresh_until - m.birth,
        initial_age=m.initial_age,
        response_time=m.birth + m.initial_age,
        stale_while_revalidate=m.swr,
        stale_if_error=m.sie,
        must_revalidate=bool(m.eflags & E_MUST_REVALIDATE),
        no_cache=bool(m.eflags & E_NO_CACHE),
    )


def headers(value: bytes, m: Meta) -> Headers:
    """The stored header fields (without Content-Length), for the slow paths (validation, 304, ranges)."""
    out: Headers = []
    block = value[M + m.statusline_len : M + m.head_len - 2]
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, _, v = line.partition(b":")
        name = name.strip().lower()
        if name != b"content-length":
            out.append((name, v.strip()))
    return out


def status_line(value: bytes, m: Meta) -> bytes:
    """The stored response's status line (CRLF included), implied or stored."""
    return STATUS_200 if m.eflags & E_STATUS_200 else value[M : M + m.statusline_len]


def dynamic_via(m: Meta) -> bytes:
    """Our Via field line when it is implied (written after Age and Cache-Status), else b"" (stored)."""
    return VIA_LINE if m.eflags & E_OWN_VIA else b""


def reason(value: bytes, m: Meta) -> bytes:
    if m.eflags & E_STATUS_200:
        return b"OK"
    line = value[M : M + m.statusline_len - 2]
    parts = line.split(b" ", 2)
    return parts[2] if len(parts) > 2 else b""


def body(value: bytes, m: Meta) -> memoryview:
    return memoryview(value)[M + m.head_len :]


def encode_vary(names: tuple[bytes, ...]) -> bytes:
    """A Vary marker: a fresh random generation, then the field names. Variants are keyed under the
    generation, so once a marker is purged or replaced its old variants can never be reached again."""
    return os.urandom(8).hex().encode() + b"\n" + b"\n".join(names)


def decode_vary(value: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """-> (generation, field names)."""
    gen, _, names = value.partition(b"\n")
    return gen, tuple(names.split(b"\n")) if names else ()
