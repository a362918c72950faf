"""The one exception tree of edgecore.

Owns: every error type that may cross a module boundary, and the HTTP status each maps to.
Invariants: the protocol is the only place that turns an EdgeError into a response (`status`, `reason`,
`detail`, the Cache-Status detail token, and `headers`, extra response fields such as Retry-After); nothing
else writes error responses ad hoc. Each class carries its own status: a status is never changed on an
instance (raise the class that has it).
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of all edgecore errors. `status` is the HTTP status a client sees for it."""

    status = 500
    reason = "Internal Server Error"
    detail = "error"
    headers: tuple[tuple[bytes, bytes], ...] = ()  # extra fields of the error response (lower-case names)


class InternalError(EdgeError):
    """A bug in edgecore met while answering a request (logged with its traceback)."""

    detail = "internal-error"


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
    detail = "bad-request"


class HeaderTooLarge(BadRequest):
    status = 431
    reason = "Request Header Fields Too Large"
    detail = "header-too-large"


class URITooLong(BadRequest):
    """The request target is over max_request_line (RFC 9112 3, RFC 9110 15.5.15)."""

    status = 414
    reason = "URI Too Long"
    detail = "uri-too-long"


class MethodNotAllowed(BadRequest):
    """A method this proxy never forwards (CONNECT: not a forward proxy); the response names Allow."""

    status = 405
    reason = "Method Not Allowed"
    detail = "method-not-allowed"
    headers = ((b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)  # RFC 9110 15.5.6


class RequestTimeout(BadRequest):
    """A request head not complete within client_header_timeout (RFC 9110 15.5.9)."""

    status = 408
    reason = "Request Timeout"
    detail = "request-timeout"


class ContentTooLarge(BadRequest):
    status = 413
    reason = "Content Too Large"
    detail = "content-too-large"


class NotCached(EdgeError):
    """only-if-cached and nothing stored may answer (RFC 9111 5.2.1.7)."""

    status = 504
    reason = "Gateway Timeout"
    detail = "only-if-cached"


class UpstreamError(EdgeError):
    """The upstream could not be reached or broke the exchange."""

    status = 502
    reason = "Bad Gateway"
    detail = "upstream-error"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "Gateway Timeout"
    detail = "upstream-timeout"


class UpstreamIncomplete(UpstreamError):
    """The upstream body ended early or errored after the head was sent to the client."""

    detail = "upstream-incomplete"


class UpstreamOverloaded(UpstreamError):
    """max_upstream_requests are in flight to the chosen server (a circuit breaker, Envoy's overflow):
    refused at once rather than queued; the client may retry shortly."""

    status = 503
    reason = "Service Unavailable"
    detail = "upstream-overloaded"
    headers = ((b"retry-after", b"1"),)


class CacheError(EdgeError):
    """Raised by the slab cache for misuse that is not MemoryError/ValueError."""
