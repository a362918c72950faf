"""RFC 9110 field helpers every layer shares, sans-IO: the one hop-by-hop set, list splitting,
Connection-listed names, the first line of a field, HTTP-dates, entity-tag comparison, the syntax of
Cache-Control and of targeted cache fields.

Standards: RFC 9110 (5.6.1 lists, 5.6.4 quoted strings, 5.6.7 dates, 7.6.1 Connection, 8.8.3 entity tags,
11.7 proxy authentication), RFC 9111 5.2 (Cache-Control syntax), RFC 9213 2.1 with RFC 8941 (targeted fields
as Structured Fields dictionaries).

Owns: HOP_BY_HOP, THE hop-by-hop set (other modules add to it, never restate it), and the syntax of the
fields above: what a value means for caching is policy's business, not this module's.
Invariants: field names are the lower-case bytes the parsers hand over; every function is pure (memoised
parses return shared results that callers treat as read-only); a malformed value parses to "absent" or is
reported invalid, it never raises.
Never: I/O, clocks, asyncio, caching decisions, or imports from any edgecore module; never a regex on the
per-request path (only the HTTP-date parser has one, memoised for the common IMF-fixdate length).
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from email.utils import formatdate

VIA = b"1.1 edgecore"  # our Via field value (RFC 9110 7.6.3): upstream requests and the responses we send

Headers = list[tuple[bytes, bytes]]

__all__ = [
    "Headers",
    "Directives",
    "HOP_BY_HOP",
    "MEMO_MAX_LEN",
    "split_list",
    "connection_tokens",
    "connection_listed",
    "first",
    "http_date",
    "parse_http_date",
    "etag_parts",
    "etag_weak_match",
    "etag_strong_match",
    "parse_cache_control",
    "cache_control",
    "cache_control_line",
    "parse_targeted",
]

# RFC 9110 7.6.1 (Connection, TE, Transfer-Encoding, Upgrade; plus the fields Connection lists, see
# connection_listed), the classic Keep-Alive and Proxy-Connection, and RFC 9110 11.7.1 / 11.7.2
# (Proxy-Authenticate, Proxy-Authorization: for the next proxy on the chain only). Meaningful for one
# connection: never forwarded either way, never stored.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

_OWS = b" \t"


# --------------------------------------------------------------------------------------------------------
# Lists (RFC 9110 5.6.1), Connection (7.6.1), singletons (5.5)
# --------------------------------------------------------------------------------------------------------


def split_list(value: bytes) -> list[bytes]:
    """Split a list field value (RFC 9110 5.6.1), commas in quoted strings kept; strip OWS, drop empties."""
    if 0x22 not in value:  # no '"' (int needles: `0x22 in b` is a memchr, `b'"' in b` several times slower)
        out = []
        for e in value.split(b","):
            e = e.strip(_OWS)
            if e:
                out.append(e)
        return out
    items: list[bytes] = []
    start = 0
    in_q = False
    esc = False
    for i, c in enumerate(value):
        if in_q:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:
                in_q = False
        elif c == 0x22:
            in_q = True
        elif c == 0x2C:  # comma
            e = value[start:i].strip(_OWS)
            if e:
                items.append(e)
            start = i + 1
    e = value[start:].strip(_OWS)
    if e:
        items.append(e)
    return items


def connection_tokens(value: bytes) -> list[bytes]:
    """The connection options of one Connection field line (RFC 9110 7.6.1), lower-cased (they are
    case-insensitive), empty members dropped."""
    if value == b"close" or value == b"keep-alive":  # the usual values: no split, no lower()
        return [value]
    return [t.lower() for t in split_list(value)]


_NONE_LISTED: frozenset[bytes] = frozenset()


def connection_listed(headers: Headers) -> frozenset[bytes]:
    """Every name the Connection lines of `headers` list (RFC 9110 7.6.1), lower-cased: the fields to drop
    with the HOP_BY_HOP ones when forwarding or storing a message."""
    listed: list[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if listed is None:
                listed = connection_tokens(value)
            else:
                listed.extend(connection_tokens(value))
    return _NONE_LISTED if listed is None else frozenset(listed)


def first(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first `name` line (a lower-case name), None when absent: for singleton fields
    (RFC 9110 5.5 lets a recipient of several use one; the first is the one an upstream wrote)."""
    for n, v in headers:
        if n == name:
            return v
    return None


# --------------------------------------------------------------------------------------------------------
# Cache-Control (RFC 9111 5.2) and targeted fields (RFC 9213 2.1, RFC 8941 dictionaries)
# --------------------------------------------------------------------------------------------------------

Directives = dict[bytes, bytes | None]


def _unquote(q: bytes) -> bytes | None:
    """A quoted-string (RFC 9110 5.6.4) -> its content, None when malformed."""
    if len(q) < 2 or q[:1] != b'"' or q[-1:] != b'"':
        return None
    inner = q[1:-1]
    if 0x5C not in inner:  # no backslash (int needles: see primary_key in keys)
        return None if 0x22 in inner else inner
    out = bytearray()
    it = iter(inner)
    for c in it:
        if c == 0x5C:
            nxt = next(it, None)
            if nxt is None:
                return None
            out.append(nxt)
        elif c == 0x22:
            return None
        else:
            out.append(c)
    return bytes(out)


def parse_cache_control(lines: list[bytes]) -> tuple[Directives, frozenset[bytes]]:
    """Cache-Control field lines -> ({name: value or None}, names seen with invalid syntax).

    RFC 9111 5.2: names are case-insensitive; token or quoted-string arguments (both accepted, 5.2);
    no whitespace around "=" ("max-age =5" and "max-age= 5" are invalid); a quoted phrase never counts as a
    directive; the first occurrence of a directive wins (4.2.1).
    """
    d, bad = cache_control(lines)
    return dict(d), bad


# Field values repeat heavily across responses ("public, max-age=3600"): a bounded memo of short ones.
# Memoised results are shared: callers of cache_control / cache_control_line treat them as read-only.
MEMO_MAX_LEN = 256


def cache_control(lines: list[bytes]) -> tuple[Directives, frozenset[bytes]]:
    """parse_cache_control without the copy: memoised for one short line, the result shared (read-only)."""
    if len(lines) == 1 and len(lines[0]) <= MEMO_MAX_LEN:
        return cache_control_line(lines[0])
    return _parse_cc(lines)


@functools.lru_cache(maxsize=1024)
def cache_control_line(line: bytes) -> tuple[Directives, frozenset[bytes]]:
    """One Cache-Control line (at most MEMO_MAX_LEN bytes: the caller checks), memoised; read-only result."""
    return _parse_cc((line,))


def _parse_cc(lines: list[bytes] | tuple[bytes, ...]) -> tuple[Directives, frozenset[bytes]]:
    d: Directives = {}
    bad: set[bytes] = set()
    for line in lines:
        for elem in split_list(line):
            eq = elem.find(b"=")
            raw_name = elem if eq == -1 else elem[:eq]
            words = raw_name.split()
            if not words:
                continue
            name = words[0].lower()
            if name in d or name in bad:  # 4.2.1: the first occurrence wins
                continue
            if len(words) != 1 or raw_name[-1:] in (b" ", b"\t") or 0x22 in raw_name:
                bad.add(name)  # "max-age =5", "max-age 5", a stray quote
                continue
            if eq == -1:
                d[name] = None
                continue
            value = elem[eq + 1 :]
            if value[:1] in (b" ", b"\t", b""):  # "max-age= 5", "max-age="
                bad.add(name)
            elif value[:1] == b'"':
                uq = _unquote(value)
                if uq is None:
                    bad.add(name)
                else:
                    d[name] = uq
            elif 0x22 in value or 0x20 in value or 0x09 in value:  # '"', SP, HTAB
                bad.add(name)
            else:
                d[name] = value
    return d, frozenset(bad)


_SF_KEY_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyz*")
_SF_KEY = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-.*")
_SF_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:/")
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset(b"0123456789")
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class _SFError(ValueError):
    pass


def _sf_key(s: bytes, i: int) -> tuple[bytes, int]:
    if i >= len(s) or s[i] not in _SF_KEY_FIRST:
        raise _SFError("key")
    j = i + 1
    while j < len(s) and s[j] in _SF_KEY:
        j += 1
    return s[i:j], j


def _sf_bare_item(s: bytes, i: int) -> tuple[tuple[str, bytes], int]:
    """RFC 8941 4.2.3.1 -> ((type, raw value), next index)."""
    if i >= len(s):
        raise _SFError("item")
    c = s[i]
    if c == 0x2D or c in _DIGITS:  # number
        j = i + 1 if c == 0x2D else i
        start = j
        while j < len(s) and s[j] in _DIGITS:
            j += 1
        if j == start:
            raise _SFError("number")
        if j < len(s) and s[j] == 0x2E:  # decimal
            if j - start > 12:
                raise _SFError("decimal")
            k = j + 1
            while k < len(s) and s[k] in _DIGITS:
                k += 1
            if k == j + 1 or k - j - 1 > 3:
                raise _SFError("decimal")
            return ("decimal", s[i:k]), k
        if j - start > 15:
            raise _SFError("integer")
        return ("integer", s[i:j]), j
    if c == 0x22:  # string
        out = bytearray()
        j = i + 1
        while j < len(s):
            ch = s[j]
            if ch == 0x5C:
                if j + 1 >= len(s) or s[j + 1] not in (0x22, 0x5C):
                    raise _SFError("escape")
                out.append(s[j + 1])
                j += 2
                continue
            if ch == 0x22:
                return ("string", bytes(out)), j + 1
            if ch < 0x20 or ch > 0x7E:
                raise _SFError("string")
            out.append(ch)
            j += 1
        raise _SFError("string")
    if c in _ALPHA or c == 0x2A:  # token
        j = i + 1
        while j < len(s) and s[j] in _SF_TOKEN:
            j += 1
        return ("token", s[i:j]), j
    if c == 0x3A:  # byte sequence
        end = s.find(b":", i + 1)
        if end == -1 or any(ch not in _B64 for ch in s[i + 1 : end]):
            raise _SFError("bytes")
        return ("bytes", s[i + 1 : end]), end + 1
    if c == 0x3F:  # boolean
        if s[i + 1 : i + 2] in (b"0", b"1"):
            return ("boolean", s[i + 1 : i + 2]), i + 2
        raise _SFError("boolean")
    raise _SFError("item")


def _sf_params(s: bytes, i: int) -> int:
    while i < len(s) and s[i] == 0x3B:  # ";"
        i += 1
        while i < len(s) and s[i] == 0x20:
            i += 1
        _, i = _sf_key(s, i)
        if i < len(s) and s[i] == 0x3D:
            _, i = _sf_bare_item(s, i + 1)
    return i


def _sf_dictionary(value: bytes) -> dict[bytes, tuple[str, bytes]]:
    """RFC 8941 4.2.2 (dictionary), parameters parsed and discarded; inner lists typed "list"."""
    s = value.strip(b" ")
    out: dict[bytes, tuple[str, bytes]] = {}
    i = 0
    n = len(s)
    if n == 0:
        raise _SFError("empty")
    while i < n:
        key, i = _sf_key(s, i)
        item: tuple[str, bytes]
        if i < n and s[i] == 0x3D:
            i += 1
            if i < n and s[i] == 0x28:  # inner list
                j = i + 1
                while True:
                    while j < n and s[j] == 0x20:
                        j += 1
                    if j >= n:
                        raise _SFError("list")
                    if s[j] == 0x29:
                        j += 1
                        break
                    _, j = _sf_bare_item(s, j)
                    j = _sf_params(s, j)
                    if j < n and s[j] not in (0x20, 0x29):
                        raise _SFError("list")
                item, i = ("list", s[i:j]), j
            else:
                item, i = _sf_bare_item(s, i)
        else:
            item = ("boolean", b"1")
        i = _sf_params(s, i)
        out[key] = item  # RFC 8941: a later duplicate key overwrites
        while i < n and s[i] in (0x20, 0x09):
            i += 1
        if i >= n:
            break
        if s[i] != 0x2C:
            raise _SFError("separator")
        i += 1
        while i < n and s[i] in (0x20, 0x09):
            i += 1
        if i >= n:
            raise _SFError("trailing comma")
    return out


_DELTA_DIRECTIVES = (b"max-age", b"s-maxage", b"stale-while-revalidate", b"stale-if-error")
_FLAG_DIRECTIVES = (
    b"no-store",
    b"public",
    b"must-revalidate",
    b"proxy-revalidate",
    b"must-understand",
    b"immutable",
    b"no-transform",
)


def parse_targeted(lines: list[bytes]) -> Directives | None:
    """A targeted field (RFC 9213 2.1) -> directives, or None when it must be ignored (empty, not a valid
    Structured Fields dictionary, or a known directive of the wrong type)."""
    try:
        sf = _sf_dictionary(b", ".join(lines))
    except _SFError:
        return None
    d: Directives = {}
    for key, (typ, raw) in sf.items():
        if key in _DELTA_DIRECTIVES:
            if typ != "integer" or raw[:1] == b"-":
                return None
            d[key] = raw
        elif key in _FLAG_DIRECTIVES:
            if typ != "boolean":
                return None
            if raw == b"1":
                d[key] = None
        elif key in (b"no-cache", b"private"):
            if typ == "boolean":
                if raw == b"1":
                    d[key] = None
            elif typ == "string":
                d[key] = raw
            else:
                return None
        elif typ == "boolean":
            if raw == b"1":
                d[key] = None
        else:
            d[key] = raw
    return d


# --------------------------------------------------------------------------------------------------------
# HTTP-date (RFC 9110 5.6.7)
# --------------------------------------------------------------------------------------------------------

_MONTHS = {
    b"jan": 1,
    b"feb": 2,
    b"mar": 3,
    b"apr": 4,
    b"may": 5,
    b"jun": 6,
    b"jul": 7,
    b"aug": 8,
    b"sep": 9,
    b"oct": 10,
    b"nov": 11,
    b"dec": 12,
}
_MON = rb"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_IMF_RE = re.compile(
    rb"(?:mon|tue|wed|thu|fri|sat|sun), (\d\d) " + _MON + rb" (\d{4}) (\d\d):(\d\d):(\d\d) gmt",
    re.IGNORECASE,
)
_RFC850_RE = re.compile(
    rb"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), (\d\d)-"
    + _MON
    + rb"-(\d\d) (\d\d):(\d\d):(\d\d) gmt",
    re.IGNORECASE,
)
_ASCTIME_RE = re.compile(
    rb"(?:mon|tue|wed|thu|fri|sat|sun) " + _MON + rb" ( \d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4})",
    re.IGNORECASE,
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def http_date(t: float) -> bytes:
    """IMF-fixdate (RFC 9110 5.6.7) of a POSIX time, e.g. b"Sun, 06 Nov 1994 08:49:37 GMT"."""
    return formatdate(t, usegmt=True).encode("ascii")


def parse_http_date(value: bytes, now: float | None = None) -> float | None:
    """An HTTP-date (IMF-fixdate, rfc850-date or asctime-date; names case-insensitive) -> epoch seconds.

    None when invalid (the caller treats an invalid Expires as already expired, RFC 9111 5.3). A two-digit
    rfc850 year more than 50 years ahead of `now` means the past century (RFC 9110 5.6.7).
    """
    if len(value) == 29:  # the IMF-fixdate length: the common case, memoised (no `now` dependence)
        return _imf_memo(value)
    return _parse_http_date(value, now)


@functools.lru_cache(maxsize=1024)
def _imf_memo(value: bytes) -> float | None:
    return _parse_http_date(value, None)


def _parse_http_date(value: bytes, now: float | None) -> float | None:
    v = value.strip(_OWS)
    m = _IMF_RE.fullmatch(v)
    if m is not None:
        day, mon, year, hh, mm, ss = (
            m.group(1),
            m.group(2),
            int(m.group(3)),
            m.group(4),
            m.group(5),
            m.group(6),
        )
    else:
        m = _RFC850_RE.fullmatch(v)
        if m is not None:
            day, mon, hh, mm, ss = m.group(1), m.group(2), m.group(4), m.group(5), m.group(6)
            yy = int(m.group(3))
            ref = time.gmtime(now).tm_year if now is not None else 2000
            year = ref - ref % 100 + yy
            if now is not None:
                if year > ref + 50:
                    year -= 100
            elif yy >= 70:
                year -= 100
        else:
            m = _ASCTIME_RE.fullmatch(v)
            if m is None:
                return None
            mon, day, hh, mm, ss, year = (
                m.group(1),
                m.group(2),
                m.group(3),
                m.group(4),
                m.group(5),
                int(m.group(6)),
            )
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    month = _MONTHS[mon.lower()]
    if not (1 <= d <= _DAYS_IN_MONTH[month - 1]) or h > 23 or mi > 59 or s > 60:
        return None
    if month == 2 and d == 29 and not calendar.isleap(year):
        return None
    return float(calendar.timegm((year, month, d, h, mi, min(s, 59), 0, 0, 0)))


# --------------------------------------------------------------------------------------------------------
# Entity tags (RFC 9110 8.8.3)
# --------------------------------------------------------------------------------------------------------


def etag_parts(tag: bytes) -> tuple[bool, bytes]:
    """(weak, opaque-tag) of an entity-tag (RFC 9110 8.8.3); lenient: an unquoted tag is quoted, a lower-case
    weakness flag accepted; anything else is compared as opaque bytes."""
    t = tag.strip(_OWS)
    weak = False
    if t[:2] in (b"W/", b"w/"):
        weak = True
        t = t[2:]
    if t[:1] != b'"' and b'"' not in t:
        t = b'"' + t + b'"'
    return weak, t


def etag_weak_match(a: bytes, b: bytes) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): opaque tags equal, weakness ignored."""
    return etag_parts(a)[1] == etag_parts(b)[1]


def etag_strong_match(a: bytes, b: bytes) -> bool:
    """Strong comparison (RFC 9110 8.8.3.2): both strong and opaque tags equal."""
    wa, ta = etag_parts(a)
    wb, tb = etag_parts(b)
    return not wa and not wb and ta == tb
