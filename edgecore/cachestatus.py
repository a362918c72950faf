"""TEMPORARY stand-in until the sans-IO split lands (helper branch sansio)."""

from __future__ import annotations


def render(
    *,
    hit: bool = False,
    fwd: bytes | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: int | None = None,
    collapsed: bool = False,
    detail: bytes | None = None,
) -> bytes:
    parts = [b"edgecore"]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd)
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if ttl is not None:
        parts.append(b"ttl=%d" % ttl)
    if detail:
        parts.append(b"detail=" + detail)
    return b"; ".join(parts)
