"""One hop-by-hop set everywhere (RFC 9110 7.6.1, 11.7): what a client gets from the cache carries the same
fields as what it got on the miss, less Age, Date and Cache-Status, whichever path answered the miss (the
small body stored first, or the large one streamed while stored) and the hit; hop-by-hop fields, those the
origin's Connection names, and Proxy-Authenticate (meant for the next hop only) never reach the client."""

from __future__ import annotations

import pytest
from client import get

_HOP = [
    "Proxy-Authenticate: Basic realm=origin",
    "Keep-Alive: timeout=5",
    "Upgrade: h2c",
    "Trailer: x-checksum",
    "Connection: x-private",
    "X-Private: only-for-the-next-hop",
    "X-Kept: yes",
]
_NEVER = {"proxy-authenticate", "keep-alive", "upgrade", "trailer", "x-private"}
_DYNAMIC = {"age", "date", "cache-status"}


def _fields(r) -> list[tuple[str, str]]:
    return sorted((n.lower(), v) for n, v in r.headers if n.lower() not in _DYNAMIC)


@pytest.mark.parametrize("size", [512, 200_000], ids=["stored-first", "streamed-and-stored"])
def test_hit_carries_the_fields_of_the_miss_and_no_hop_by_hop_field(edge, origin, uniq, size):
    hdrs = "".join(f"&hdr={h.replace(' ', '%20')}" for h in _HOP)
    target = f"{uniq}?cc=max-age=60&size={size}{hdrs}"
    miss = get(edge.port, target)
    hit = get(edge.port, target)
    assert miss.status == hit.status == 200
    assert "stored" in miss.cache_status and hit.cache_status.startswith("edgecore; hit")
    assert origin.count(uniq) == 1
    assert miss.body == hit.body and len(hit.body) == size
    for r in (miss, hit):
        names = {n.lower() for n, _ in r.headers}
        assert not names & _NEVER, f"hop-by-hop field relayed: {sorted(names & _NEVER)}"
        assert r.header("x-kept") == "yes"
        assert r.header("connection") is None  # HTTP/1.1 keep-alive: nothing to say
    assert _fields(hit) == _fields(miss)
