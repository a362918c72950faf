# Stub of the C fast paths (ext/hitpath.pyx), so mypy checks their callers.
from collections.abc import Sequence
from typing import Any, Literal, Protocol

Headers = list[tuple[bytes, bytes]]

class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def writelines(self, parts: Any, /) -> object: ...

class _Transport(_Writer, Protocol):
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...  # called only with an fd

class _Lookup(Protocol):
    def lookup(self, key: bytes, now: float, /) -> tuple[bytes, float, int] | None: ...
    def lookup_pinned(self, key: bytes, now: float, min_len: int, /) -> tuple[Any, float, int] | None: ...

class PlainRequest:
    @property
    def key(self) -> bytes: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def keep(self) -> int: ...
    @property
    def head_only(self) -> bool: ...
    @property
    def http10(self) -> bool: ...

class HitPath:
    enabled: bool
    draining: bool
    def __init__(
        self,
        cache: _Lookup,
        *,
        words: Any,
        counter_index: tuple[int, int, int, int, int],
        bounds: Sequence[float],
        max_head: int,
        layout: tuple[int, int, int, int, int, int, int],
        flag_plain: int,
        key_prefix: bytes,
        bail_fields: Sequence[bytes],
        fetch_drop: Sequence[bytes],
        large_body: int,
        hit_status: bytes,
        max_line: int,
        underscores: bool,
        write_high: int,
        implied: tuple[tuple[int, bytes], tuple[int, bytes]],
        lease_index: int = -1,
        enabled: bool = True,
        routes: tuple[tuple[bytes, bool, bytes], ...] = (),
    ) -> None: ...
    @property
    def facts(self) -> dict[str, Any]: ...
    def key_for(self, head: bytes) -> bytes | None: ...
    def serve(
        self, data: bytes, transport: _Transport, fd: int = -1
    ) -> tuple[int, bool, PlainRequest | None]: ...
    def respond(
        self, value: bytes, transport: _Writer, keep: int, head_only: bool, cache_status: bytes
    ) -> bool: ...
    def upstream_head(self, data: bytes, start: int, end: int, peer: bytes, via: bytes) -> bytes | None: ...
    def request_fields(self, data: bytes, start: int, end: int) -> tuple[bytes, bytes, Headers]: ...
    def parse_response(
        self, buf: bytes
    ) -> tuple[int, bytes, Headers, int, int, bool] | Literal[False] | None: ...
