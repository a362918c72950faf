"""Cache keys: request -> primary key bytes, Vary -> secondary key bytes (RFC 9111 2, 4.1; RFC 9110 4.2.3).

Owns: the method class, host and target normalisation, query options (sort, drop), the secondary key built
from the request fields a response's Vary names (plus a route's key_headers: variant_names), and the list
of request fields that must not reach the origin because they are not keyed (cache poisoning).
Invariants: the encoding is unambiguous (every variable part is length-prefixed, or the last one; a secondary
key starts with b"V" and a primary key never does), so two requests that differ in a keyed part never share a
key; two requests that are equivalent per RFC 9110 4.2.3 (host case, default port, percent-encoding of
unreserved characters, empty path, dot segments) share one; absent and empty field values are distinct in a
secondary key. `request_form` is the normalised (Host, origin-form target) the key is built from, and the one
the upstream request is rendered from (upstream.request_head via cachepath.upstream_head): two requests that
share a key send the same request line and Host upstream. Dot segments (RFC 3986 5.2.4) are removed from the
path in both; with key_sort_query or key_drop_params, both "&" and ";" separate query parameters (some
frameworks split on ";"), and the query is rejoined with "&", so a dropped parameter never reaches the origin.
Never: I/O, clocks, asyncio, or imports from edgecore modules other than errors and fields; never a regex
on the plain path of primary_key (it runs on every request).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .fields import Headers, split_list

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "Headers",
    "KeyOptions",
    "UNKEYED_REQUEST_FIELDS",
    "normalise_host",
    "normalise_target",
    "primary_key",
    "request_form",
    "remove_dot_segments",
    "parse_vary",
    "normalise_field_value",
    "normalise_weighted",
    "secondary_key",
    "variant_names",
]


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """How the target's query takes part in the key. Default: verbatim (after RFC 3986 normalisation)."""

    sort_query: bool = False  # stable sort of parameters by name (values of one name keep their order)
    drop_params: tuple[bytes, ...] = ()  # parameter names left out of the key (e.g. b"utm_source")
    default_ports: tuple[bytes, ...] = (b"80",)  # ports that equal "no port" for the host
    # request fields added to the key (a route's key_headers; lower-case, sorted): keyed like Vary names,
    # under the URL's Vary marker, so that a purge of the URL removes every variant (variant_names)
    headers: tuple[bytes, ...] = ()


_DEFAULT_OPTS = KeyOptions()


def options_for(cfg: Config) -> KeyOptions:
    """The key options a configuration asks for (key_sort_query, key_drop_params)."""
    return KeyOptions(
        sort_query=cfg.key_sort_query, drop_params=tuple(p.encode() for p in cfg.key_drop_params)
    )


# Request fields that some origins and frameworks use to build absolute URLs, pick a host, a scheme, a path or
# a method. None of them is in the key, so letting them through would let one client poison the entry every
# other client gets (the "unkeyed input" class of cache poisoning). The proxy sets its own X-Forwarded-* /
# Forwarded after this filter.
UNKEYED_REQUEST_FIELDS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-host",
        b"x-forwarded-server",
        b"x-forwarded-proto",
        b"x-forwarded-scheme",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-forwarded-for",
        b"x-real-ip",
        b"x-host",
        b"x-original-host",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-method",
        b"x-http-method",
        b"x-http-method-override",
        b"x-method-override",
        b"front-end-https",
        b"x-url-scheme",
    }
)

_OWS = b" \t"
_HEX = b"0123456789ABCDEFabcdef"
# RFC 3986 2.3 unreserved characters: percent-encoded forms are equivalent to the character itself.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_GET_CLASS = b"GET"
_GET_PREFIX = b"0:3:GET"  # no tenant, GET/HEAD: the common prefix
_DEFAULT_PORTS = _DEFAULT_OPTS.default_ports
_HOST_ODD_LAST = (0x2E, 0x20, 0x09)  # ".", SP, HTAB: a host ending so goes through normalise_host
_OWS_FIRST = (0x20, 0x09)
# b"0:3:GET<n>:" for hosts of n < 256 bytes: the key up to the host, precomputed
_GET_HOST_PREFIXES = tuple(b"%s%d:" % (_GET_PREFIX, n) for n in range(256))


def normalise_host(host: bytes, default_ports: tuple[bytes, ...] = (b"80",)) -> bytes:
    """Lower-case host without a default or empty port and without a trailing dot (RFC 9110 4.2.3)."""
    h = host.strip(_OWS).lower()
    if b":" in h:
        if h[:1] == b"[":  # IPv6 literal: "[::1]:8080"
            end = h.find(b"]")
            if end != -1:
                name, rest = h[: end + 1], h[end + 1 :]
                if rest[:1] == b":" and (rest[1:] == b"" or rest[1:] in default_ports):
                    return name
                return h
            return h
        name, _, port = h.rpartition(b":")
        if port == b"" or port in default_ports:
            h = name
    if h.endswith(b".") and len(h) > 1:
        h = h[:-1]
    return h


def _normalise_pct(part: bytes) -> bytes:
    """Percent-encodings: upper-case hex digits, decode unreserved characters (RFC 3986 6.2.2.1, 6.2.2.2)."""
    out = bytearray()
    i = 0
    n = len(part)
    while i < n:
        c = part[i]
        if c == 0x25 and i + 2 < n and part[i + 1] in _HEX and part[i + 2] in _HEX:  # "%XX"
            val = int(part[i + 1 : i + 3], 16)
            if val in _UNRESERVED:
                out.append(val)
            else:
                out += b"%" + part[i + 1 : i + 3].upper()
            i += 3
            continue
        out.append(c)
        i += 1
    return bytes(out)


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4: "." and ".." segments resolved (a ".." above the root stays at the root)."""
    out: list[bytes] = []
    segs = path.split(b"/")
    last = len(segs) - 1
    for i, seg in enumerate(segs[1:], 1):
        if seg == b".":
            if i == last:
                out.append(b"")
        elif seg == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")
        else:
            out.append(seg)
    return b"/" + b"/".join(out)


def _has_dot_segment(path: bytes) -> bool:
    """Whether an origin-form path (no query) has a "." or ".." segment."""
    i = path.find(b"/.")
    while i != -1:
        rest = path[i + 2 : i + 4]
        if rest[:1] in (b"", b"/") or (rest[:1] == b"." and rest[1:2] in (b"", b"/")):
            return True
        i = path.find(b"/.", i + 2)
    return False


def _query(query: bytes, opts: KeyOptions) -> bytes:
    # "&" and ";" both separate parameters (RFC 3986 3.4 leaves the syntax to the origin; some frameworks
    # split on ";"): a parameter left out of the key must not reach the origin behind a ";"
    params = [p for p in query.replace(b";", b"&").split(b"&") if p]
    if opts.drop_params:
        drop = opts.drop_params
        params = [p for p in params if p.partition(b"=")[0] not in drop]
    if opts.sort_query:
        params.sort(key=lambda p: p.partition(b"=")[0])  # stable: same-name values keep their order
    return b"&".join(params)


def normalise_target(target: bytes, opts: KeyOptions = _DEFAULT_OPTS) -> tuple[bytes | None, bytes]:
    """(authority or None, path?query) of a request target; absolute-form gives its own authority."""
    authority: bytes | None = None
    t = target
    if t[:1] != b"/":
        low = t[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            rest = t[t.find(b"//") + 2 :]
            cut = len(rest)
            for sep in (b"/", b"?", b"#"):
                j = rest.find(sep)
                if j != -1 and j < cut:
                    cut = j
            authority = rest[:cut].rpartition(b"@")[2]
            t = rest[cut:]
            if t[:1] != b"/":
                t = b"/" + t
        elif t == b"*":
            return None, t
    hash_at = t.find(b"#")
    if hash_at != -1:
        t = t[:hash_at]
    if not t:
        t = b"/"
    if b"%" in t:
        t = _normalise_pct(t)
    if b"/." in t:
        path, q, query = t.partition(b"?")
        if _has_dot_segment(path):
            t = remove_dot_segments(path) + q + query
    if opts.sort_query or opts.drop_params:
        path, q, query = t.partition(b"?")
        if q:
            query = _query(query, opts)
            t = path + b"?" + query if query else path
    return authority, t


def request_form(host: bytes, target: bytes, opts: KeyOptions = _DEFAULT_OPTS) -> tuple[bytes, bytes]:
    """(Host, target) as the key sees them: the host normalised (RFC 9110 4.2.3), the absolute-form's own
    authority replacing Host (RFC 9112 3.2.2), the target in origin-form with percent-encoding, dot segments
    and the query options applied. The upstream request is rendered from exactly this."""
    authority, t = normalise_target(target, opts)
    return normalise_host(host if authority is None else authority, opts.default_ports), t


def primary_key(
    method: bytes, host: bytes, target: bytes, opts: KeyOptions = _DEFAULT_OPTS, tenant: bytes = b""
) -> bytes:
    """The primary cache key (RFC 9111 2): tenant, method class (GET and HEAD share one), host, target.

    Unambiguous: tenant, method and host are length-prefixed, the target is the remainder.
    """
    # Fast path: default options (the object itself or an equal one, as options_for builds), origin-form,
    # nothing to normalise. Exactly what the general path gives: normalise_target leaves such a target as is,
    # and normalise_host only changes a lower-cased host with a port, a trailing dot or surrounding OWS.
    # (Byte membership is tested with int needles: `0x25 in b` is a memchr, `b"%" in b` is several times
    # slower on CPython 3.11.)
    if (
        target[:1] == b"/"
        and 0x25 not in target  # "%"
        and 0x23 not in target  # "#"
        and b"/." not in target  # a possible dot segment (RFC 3986 5.2.4)
        and (
            opts is _DEFAULT_OPTS
            or (opts.default_ports == _DEFAULT_PORTS and not opts.sort_query and not opts.drop_params)
        )
    ):
        t = target
        h = host.lower()
        if not h or 0x3A in h or h[-1] in _HOST_ODD_LAST or h[0] in _OWS_FIRST:  # ":", "." or OWS
            h = normalise_host(h)
    else:
        h, t = request_form(host, target, opts)
    if not tenant and (method == b"GET" or method == b"HEAD"):
        if len(h) < 256:
            return b"".join((_GET_HOST_PREFIXES[len(h)], h, t))
        return b"%s%d:%s%s" % (_GET_PREFIX, len(h), h, t)
    cls = _GET_CLASS if method == b"GET" or method == b"HEAD" else method
    return b"%d:%s%d:%s%d:%s%s" % (len(tenant), tenant, len(cls), cls, len(h), h, t)


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _is_token(b: bytes) -> bool:
    return bool(b) and all(c in _TCHAR for c in b)


def parse_vary(values: list[bytes]) -> tuple[bytes, ...] | None:
    """Vary field lines -> sorted, de-duplicated, lower-cased field names; None for "*" (RFC 9111 4.1).

    A member that is not a field name (not a token) is treated like "*": such a response never matches.
    """
    if len(values) == 1 and len(values[0]) <= _MEMO_MAX_LEN:
        return _parse_vary_memo(values[0])
    return _parse_vary(values)


def _parse_vary(values: list[bytes] | tuple[bytes, ...]) -> tuple[bytes, ...] | None:
    names: set[bytes] = set()
    for v in values:
        for e in split_list(v):
            if e == b"*" or not _is_token(e):
                return None
            names.add(e.lower())
    return tuple(sorted(names))


# Vary values repeat across responses: a bounded memo of short single-line values (results are immutable).
_MEMO_MAX_LEN = 256


@functools.lru_cache(maxsize=1024)
def _parse_vary_memo(value: bytes) -> tuple[bytes, ...] | None:
    return _parse_vary((value,))


def _collapse_ws(e: bytes) -> bytes:
    """Collapse runs of SP/HTAB outside quoted strings into one SP."""
    if b"  " not in e and b"\t" not in e:
        return e
    out = bytearray()
    in_q = False
    esc = False
    prev_ws = False
    for c in e:
        if in_q:
            out.append(c)
            if esc:
                esc = False
            elif c == 0x5C:
                esc = True
            elif c == 0x22:
                in_q = False
            continue
        if c == 0x20 or c == 0x09:
            if not prev_ws:
                out.append(0x20)
            prev_ws = True
            continue
        prev_ws = False
        if c == 0x22:
            in_q = True
        out.append(c)
    return bytes(out)


def normalise_field_value(lines: list[bytes]) -> bytes:
    """One selecting field's value for Vary matching (RFC 9111 4.1): lines combined, list members stripped
    of surrounding whitespace, inner whitespace collapsed (outside quoted strings), joined with ", "."""
    if len(lines) == 1:
        v = lines[0]
        if b"," not in v and b"  " not in v and b"\t" not in v:
            return v.strip(_OWS)
    return b", ".join(_collapse_ws(e) for e in split_list(b",".join(lines)))


# Selecting fields whose members are case-insensitive names with an optional weight, where equally weighted
# members carry no order of preference (RFC 9110 12.4.2): Accept-Encoding (12.5.3, content codings are
# case-insensitive, 8.4.1) and Accept-Language (12.5.4, language ranges are case-insensitive, RFC 4647 2).
_WEIGHTED = frozenset((b"accept-encoding", b"accept-language"))
_QDIGITS = frozenset(b"0123456789")


def _qvalue(v: bytes) -> bytes | None:
    """A weight (RFC 9110 12.4.2: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]) in canonical form, else None."""
    whole, dot, frac = v.partition(b".")
    if (
        whole not in (b"0", b"1")
        or len(frac) > 3
        or any(c not in _QDIGITS for c in frac)
        or (dot and not frac)
    ):
        return None
    frac = frac.rstrip(b"0")
    if whole == b"1":
        return None if frac else b"1"
    return b"0." + frac if frac else b"0"


def normalise_weighted(lines: list[bytes]) -> bytes | None:
    """Accept-Language / Accept-Encoding for Vary matching (RFC 9111 4.1 allows normalising selecting values
    "in a way that is known to have identical semantics"): members lower-cased, weights canonical, sorted by
    weight (highest first) then name. None when a member has parameters other than a valid q."""
    members: list[tuple[bytes, bytes]] = []
    for e in split_list(b",".join(lines)):
        name, semi, params = e.partition(b";")
        name = name.strip(_OWS).lower()
        q = b"1"
        if semi:
            p = params.strip(_OWS).lower()
            if p[:2] != b"q=" or b";" in p:
                return None
            canon = _qvalue(p[2:].strip(_OWS))
            if canon is None:
                return None
            q = canon
        members.append((q, name))
    members.sort(key=lambda m: (-float(m[0]), m[1]))
    return b", ".join(n if q == b"1" else n + b";q=" + q for q, n in members)


def variant_names(vary: tuple[bytes, ...], opts: KeyOptions) -> tuple[bytes, ...]:
    """The request fields a stored response is keyed by beyond its primary key: its Vary names (parse_vary)
    and the options' `headers` (a route's key_headers), lower-cased, sorted, each once."""
    if not opts.headers:
        return vary
    return tuple(sorted(set(vary).union(opts.headers)))


def secondary_key(primary: bytes, vary: tuple[bytes, ...], req_headers: Headers) -> bytes:
    """The variant key (RFC 9111 4.1): the primary key plus each Vary-named request field, normalised.

    `vary` comes from parse_vary (lower-cased, sorted). An absent field is encoded differently from an empty
    one. With an empty `vary` the primary key itself is returned.
    """
    if not vary:
        return primary
    found: dict[bytes, list[bytes]] = {}
    for name, value in req_headers:
        if name in vary:
            lst = found.get(name)
            if lst is None:
                found[name] = [value]
            else:
                lst.append(value)
    parts = [b"V%d:%s" % (len(primary), primary)]
    for name in vary:
        lines = found.get(name)
        if lines is None:
            parts.append(b"%d:%s-" % (len(name), name))
        else:
            w = normalise_weighted(lines) if name in _WEIGHTED else None
            v = w if w is not None else normalise_field_value(lines)
            parts.append(b"%d:%s=%d:%s" % (len(name), name, len(v), v))
    return b"".join(parts)
