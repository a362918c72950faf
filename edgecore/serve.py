"""Writing a stored response to a client: as stored, as 304 to the client's conditionals (RFC 9110 13), or as
206/416 for a single byte range (RFC 9110 14), with Age (RFC 9111 4.2.3) and Cache-Status spliced in after
the status line (and our Via, when the entry implies it: entry.E_OWN_VIA, and Content-Length: entry.py never
stores it).

Owns: the Python twin of the C hit path's write (ext/hitpath.pyx `_write_value`): both splice the same
dynamic fields into the same stored bytes (entry.py's layout).
Invariants: counted (and, when the access log is on, logged) before it is written (whoever has the response
can already see it in the metrics); a large body is written as views, never copied again: from the
shared mapping when the lookup pinned it (a `Pinned`, cache.lookup_pinned: GET without conditionals or
ranges), sent straight into the client's socket when nothing is buffered (Client.write_pinned: the kernel
copies it during the call) and what the socket did not take as views (the pin lasts until the transport
drops them), else views of the lookup's private copy.
Never: decide whether the stored response may be used (policy did).
"""

from __future__ import annotations

import time

from . import conditional, entry
from .cache import Pinned
from .context import LARGE_BODY, Client, Request
from .fields import first
from .metrics import Outcome

Headers = list[tuple[bytes, bytes]]
_CACHEABLE_METHODS = frozenset((b"GET", b"HEAD"))


def serve_stored(
    c: Client,
    r: Request,
    value: bytes | Pinned,
    m: entry.Meta,
    now: float,
    outcome: Outcome,
    cache_status: bytes,
    detail: bytes | None = None,
) -> None:
    """A stored response to the client, with conditional (RFC 9110 13) and range (RFC 9110 14)
    handling when the request asks for them. Counted before it is written: whoever has the response
    can already see it in the metrics (with `detail`, the Cache-Status detail, when it has one)."""
    age = max(0, int(now - m.birth))
    conn = r.connection_field()
    mo = entry.M
    head_end = mo + m.head_len
    if not isinstance(value, bytes):
        # pinned in the shared mapping (cache.lookup_pinned): a plain GET is written from it in place;
        # anything else (HEAD, conditionals, ranges) from a copy
        if not r.slow and r.method == b"GET":
            _serve_pinned(c, r, value, m, age, cache_status, conn, outcome, detail)
            return
        value = value.tobytes()
    status_line = entry.status_line(value, m)
    rest_head = value[mo + m.statusline_len : head_end]
    dyn = _dynamic(age, cache_status, m, conn)
    if r.slow and m.status == 200 and r.method in _CACHEABLE_METHODS:
        stored = entry.headers(value, m)
        if conditional.client_not_modified(r.headers, stored):
            _account(c, r, outcome, detail, 304, 0, cache_status)
            c.write(_head_304(stored, dyn))
            _close_unless_keep_alive(c, r)
            return
        rng = first(r.headers, b"range")
        ir = first(r.headers, b"if-range")
        if (
            rng is not None
            and r.method == b"GET"
            and (ir is None or conditional.if_range_matches(ir, stored))
        ):
            total = len(value) - head_end
            span = conditional.parse_range(rng, total)
            if span is None:
                if conditional.range_not_satisfiable(rng, total):  # else: the full 200 (RFC 9110 14.2)
                    _account(c, r, outcome, detail, 416, 0, cache_status)
                    c.write(
                        b"HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */%d\r\n"
                        b"content-length: 0\r\n%s\r\n" % (total, dyn)
                    )
                    _close_unless_keep_alive(c, r)
                    return
            else:
                lo, hi = span
                _account(c, r, outcome, detail, 206, hi - lo + 1, cache_status)
                fields = b"".join(n + b": " + v + b"\r\n" for n, v in stored)
                c.write(
                    b"".join(
                        (
                            b"HTTP/1.1 206 Partial Content\r\n",
                            fields,
                            b"content-range: bytes %d-%d/%d\r\ncontent-length: %d\r\n"
                            % (lo, hi, total, hi - lo + 1),
                            dyn,
                            b"\r\n",
                            value[head_end + lo : head_end + hi + 1],
                        )
                    )
                )
                _close_unless_keep_alive(c, r)
                return
    nbytes = 0 if r.method == b"HEAD" else len(value) - head_end
    _account(c, r, outcome, detail, m.status, nbytes, cache_status)
    dyn = _dynamic(age, cache_status, m, conn, entry.content_length(len(value) - head_end))
    if r.method == b"HEAD":
        c.write(b"".join((status_line, dyn, rest_head)))
    elif len(value) > LARGE_BODY:  # no second copy of a large body: views of the private lookup copy
        c.writelines((status_line, dyn, memoryview(value)[mo + m.statusline_len :]))
    else:
        c.write(b"".join((status_line, dyn, value[mo + m.statusline_len :])))
    _close_unless_keep_alive(c, r)


def _account(
    c: Client,
    r: Request,
    outcome: Outcome,
    detail: bytes | None,
    status: int,
    nbytes: int,
    cache_status: bytes,
) -> None:
    """The response about to be written, to the metrics and (when it is on) the access log."""
    c.ctx.counters.request(outcome, time.time() - r.t0, detail, status)
    if c.ctx.access is not None:
        c.ctx.log_response(c.peer, r, status, nbytes, cache_status)


def _serve_pinned(
    c: Client,
    r: Request,
    value: Pinned,
    m: entry.Meta,
    age: int,
    cache_status: bytes,
    conn: bytes,
    outcome: Outcome,
    detail: bytes | None,
) -> None:
    """The Python twin of ext/hitpath.pyx's pinned write: status line, dynamic fields, then the rest of the
    stored response from the shared mapping (ClientProtocol.write_pinned: sent straight into the socket,
    the rest as views pinned while they live)."""
    mo = entry.M
    _account(c, r, outcome, detail, m.status, len(value) - mo - m.head_len, cache_status)
    status_line = entry.status_line(value.head(mo + m.statusline_len), m)
    dyn = _dynamic(age, cache_status, m, conn, entry.content_length(len(value) - mo - m.head_len))
    c.write_pinned(status_line + dyn, value, mo + m.statusline_len)
    _close_unless_keep_alive(c, r)


def _dynamic(age: int, cache_status: bytes, m: entry.Meta, conn: bytes, length: bytes = b"") -> bytes:
    """The fields written after the status line: Age, Cache-Status, our Via when the entry implies it
    (entry.E_OWN_VIA), Content-Length for the stored response itself (`length`: entry.content_length; not
    for a 304, 206 or 416), Connection; the C hit path writes the same in the same order."""
    return b"age: %d\r\ncache-status: %s\r\n%s%s%s" % (age, cache_status, entry.dynamic_via(m), length, conn)


def _head_304(stored: Headers, dyn: bytes) -> bytes:
    fields = b"".join(n + b": " + v + b"\r\n" for n, v in conditional.not_modified_headers(stored))
    return b"HTTP/1.1 304 Not Modified\r\n" + fields + dyn + b"\r\n"


def _close_unless_keep_alive(c: Client, r: Request) -> None:
    if not r.keep_alive:
        c.finish()
