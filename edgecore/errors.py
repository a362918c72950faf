"""The one exception tree of edgecore.

Owns: every error type that may cross a module boundary, and the HTTP status each maps to.
Invariant: the protocol is the only place that turns an EdgeError into a response (`status`, `reason`);
nothing else writes error responses ad hoc.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of all edgecore errors. `status` is the HTTP status a client sees for it."""

    status = 500
    reason = "Internal Server Error"


class ConfigError(EdgeError):
    """A configuration problem: names the key and the reason."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


class ConfigErrors(EdgeError):
    """Several configuration problems at once (check-config prints one line each)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class BadRequest(EdgeError):
    status = 400
    reason = "Bad Request"


class HeaderTooLarge(BadRequest):
    status = 431
    reason = "Request Header Fields Too Large"


class UpstreamError(EdgeError):
    """The upstream could not be reached or broke the exchange."""

    status = 502
    reason = "Bad Gateway"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "Gateway Timeout"


class UpstreamIncomplete(UpstreamError):
    """The upstream body ended early or errored after the head was sent to the client."""


class CacheError(EdgeError):
    """Raised by the slab cache for misuse that is not MemoryError/ValueError."""
