"""Tables for edgecore.entry: the stored form never carries a hop-by-hop field (RFC 9110 7.6.1, 11.7;
RFC 9111 3.1), and the layout constants the C paths are handed agree with the META struct."""

from __future__ import annotations

import struct

import pytest

from edgecore import entry
from edgecore.fields import HOP_BY_HOP
from edgecore.policy import Freshness

T = 1_700_000_000.0
F = Freshness(lifetime=60.0, initial_age=2.0, response_time=T, stale_while_revalidate=5.0, stale_if_error=7.0)


def _stored(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, entry.Meta]:
    value, _, _, _ = entry.encode(200, b"OK", headers, b"body", F)
    return value, entry.meta(value)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_no_hop_by_hop_field_is_stored(name: bytes) -> None:
    # RFC 9110 7.6.1, 11.7.1 (a hit must never carry Proxy-Authenticate), RFC 9111 3.1
    value, m = _stored([(b"content-type", b"text/plain"), (name, b"x"), (b"x-a", b"1")])
    assert entry.headers(value, m) == [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    assert b"\r\n" + name + b":" not in value[entry.M : entry.M + m.head_len].lower()


NEVER_STORED = [
    (b"age", b"5"),  # RFC 9111 5.1: written when serving
    (b"cache-status", b"upstream; hit"),  # RFC 9211 2: ours is written when serving
    (b"content-length", b"999"),  # RFC 9110 8.6: written from the stored body's length when serving
]


@pytest.mark.parametrize("field", NEVER_STORED)
def test_own_fields_are_not_stored(field: tuple[bytes, bytes]) -> None:
    value, m = _stored([field, (b"x-a", b"1")])
    assert entry.headers(value, m) == [(b"x-a", b"1")]
    head = value[entry.M : entry.M + m.head_len]
    assert b"content-length:" not in head and head == b"x-a: 1\r\n\r\n"
    assert entry.content_length(len(value) - entry.M - m.head_len) == b"content-length: 4\r\n"


def test_skip_store_is_hop_by_hop_plus_our_own() -> None:
    assert HOP_BY_HOP | {b"age", b"cache-status", b"content-length"} == entry.SKIP_STORE


OFFSETS = [
    # (constant, META field, its struct code)
    ("OFF_STATUSLINE_LEN", "statusline_len", "H"),
    ("OFF_HEAD_LEN", "head_len", "I"),
    ("OFF_FRESH_UNTIL", "fresh_until", "d"),
    ("OFF_BIRTH", "birth", "d"),
]


@pytest.mark.parametrize(("const", "field", "code"), OFFSETS)
def test_offsets_match_the_struct(const: str, field: str, code: str) -> None:
    fmt = entry.META.format
    assert fmt[0] == "<"  # no padding: an offset is the sum of the sizes of the fields before it
    i = entry.Meta._fields.index(field)
    off = getattr(entry, const)
    assert off == struct.calcsize(fmt[: i + 1]) == sum(struct.calcsize("<" + c) for c in fmt[1 : i + 1])
    assert fmt[i + 1] == code
    value, _, fresh_until, _ = entry.encode(200, b"OK", [(b"x-a", b"1")], b"body", F)
    (got,) = struct.unpack_from("<" + code, value, off)
    assert got == getattr(entry.meta(value), field)
    if field == "fresh_until":
        assert got == fresh_until


def test_meta_size() -> None:
    assert entry.META_SIZE == entry.M == entry.META.size == struct.calcsize(entry.META.format)
    # the values ext/hitpath.pyx restates today (DEF OFF_SL = 4, ...) until it is handed these
    offsets = (entry.OFF_STATUSLINE_LEN, entry.OFF_HEAD_LEN, entry.OFF_FRESH_UNTIL, entry.OFF_BIRTH)
    assert offsets == (4, 6, 10, 18)


def test_hit_struct_is_gone() -> None:
    assert not hasattr(entry, "HIT")  # it restated the layout; the OFF_* constants replace it


@pytest.mark.parametrize(
    "fresh",
    [
        F,
        # a heuristic lifetime (RFC 9111 4.2.2) with a fractional initial age (RFC 9111 4.2.3)
        Freshness(lifetime=8640.4, initial_age=0.0375, response_time=T + 0.25),
        # must-revalidate and no-cache survive, as eflags (RFC 9111 5.2.2.2, 5.2.2.4)
        Freshness(lifetime=0.0, initial_age=0.0, response_time=T, must_revalidate=True, no_cache=True),
        # an Age far larger than the lifetime: stored already stale (RFC 9111 4.2.3)
        Freshness(lifetime=10.0, initial_age=86400.0, response_time=T),
    ],
)
def test_freshness_round_trips_through_the_stored_meta(fresh: Freshness) -> None:
    # the lifetime and the response time are derived from fresh_until, birth and the initial age (one source)
    value, birth, fresh_until, _ = entry.encode(200, b"OK", [], b"x", fresh)
    got = entry.freshness(entry.meta(value))
    assert birth == fresh.response_time - fresh.initial_age and fresh_until == birth + fresh.lifetime
    for field in ("lifetime", "initial_age", "response_time", "stale_while_revalidate", "stale_if_error"):
        assert getattr(got, field) == pytest.approx(getattr(fresh, field), abs=1e-6), field
    assert (got.must_revalidate, got.no_cache) == (fresh.must_revalidate, fresh.no_cache)


def test_meta_is_compact() -> None:
    # 10 bytes of lengths and flags, the two times the C hit path reads, three float32 spans: nothing derived
    assert entry.META_SIZE == 38
    assert "response_time" not in entry.Meta._fields and "lifetime" not in entry.Meta._fields


@pytest.mark.parametrize(
    ("status", "reason", "implied"),
    [
        (200, b"OK", True),  # the common status line is implied (E_STATUS_200), not stored
        (200, b"Fine", False),  # RFC 9112 4: the reason phrase is kept as received
        (404, b"Not Found", False),
        (301, b"", False),  # RFC 9112 4: an empty reason phrase
    ],
)
def test_status_line_is_stored_unless_it_is_200_ok(status: int, reason: bytes, implied: bool) -> None:
    value, _, _, _ = entry.encode(status, reason, [(b"x-a", b"1")], b"body", F)
    m = entry.meta(value)
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    assert bool(m.eflags & entry.E_STATUS_200) is implied
    assert m.statusline_len == (0 if implied else len(line))
    assert entry.status_line(value, m) == line and entry.reason(value, m) == reason
    assert entry.headers(value, m) == [(b"x-a", b"1")]
    assert value.endswith(b"x-a: 1\r\n\r\nbody")


@pytest.mark.parametrize("own_via", [True, False])
def test_our_via_is_implied_not_stored(own_via: bool) -> None:
    # RFC 9110 7.6.3: every response we send has our Via; when the response had none, it is not stored
    headers = [(b"x-a", b"1")] if own_via else [(b"via", b"1.0 lb, " + entry.VIA)]
    value, _, _, _ = entry.encode(200, b"OK", headers, b"body", F, own_via)
    m = entry.meta(value)
    assert bool(m.eflags & entry.E_OWN_VIA) is own_via
    assert entry.dynamic_via(m) == (b"via: 1.1 edgecore\r\n" if own_via else b"")
    assert value.count(b"via:") == (0 if own_via else 1)
