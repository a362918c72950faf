"""TEMPORARY stand-in until the sans-IO split lands (helper branch sansio)."""

from __future__ import annotations

from .keys import HOP_BY_HOP as _H

Headers = list[tuple[bytes, bytes]]
HOP_BY_HOP = _H | {b"proxy-authenticate", b"proxy-authorization"}


def connection_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


def connection_listed(headers: Headers) -> frozenset[bytes]:
    listed = [v for n, v in headers if n == b"connection"]
    if not listed:
        return frozenset()
    return frozenset(t.strip().lower() for v in listed for t in v.split(b","))


def first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
