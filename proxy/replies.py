"""Local replies: the small canned responses the proxy answers by itself.

No route (404), no usable backend (503), upstream failures (502/504), limits (408/413/414/431)
and rejected input (400/405/417/505). Each is a tiny text body with `Server: portico`; the
internal reason (e.g. `ServiceNotFound`) goes to the access log, never to the client. The bytes
are rendered once per (status, close) pair; the client side adds an answer's extra fields
(a redirect's Location, the route's response fields) after the status line.
"""

from __future__ import annotations

import http
from typing import Final

REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    204: b"No Content",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Answer:
    """A local answer decided before forwarding (by routing, or a route's policy step).

    `reason` goes to the access log, metrics and logs; `fields` are extra header fields,
    rendered (`Location: ...\r\n`); `close`: the request is refused outright, so nothing more
    is read from the connection and it closes after the answer. Constant answers are built
    once and shared."""

    __slots__ = ("close", "fields", "reason", "status")

    def __init__(self, status: int, reason: str, fields: bytes = b"", close: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.close = close


NO_ROUTE: Final = Answer(404, "NoRoute")

_cache: dict[tuple[int, bool, bool], bytes] = {}


def _phrase(status: int) -> bytes:
    """The standard reason phrase of a status a policy step answers with (403, 429, ...)."""
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


def local_reply(status: int, *, close: bool, head_only: bool = False) -> bytes:
    """The full response bytes for a local reply."""
    key = (status, close, head_only)
    data = _cache.get(key)
    if data is None:
        reason = REASONS.get(status) or _phrase(status)
        body = b"%d %s\n" % (status, reason)
        extra = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" if status == 405 else b""
        data = (
            b"HTTP/1.1 %d %s\r\nServer: portico\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%s%s\r\n"
            % (
                status,
                reason,
                len(body),
                extra,
                b"Connection: close\r\n" if close else b"",
            )
        )
        if not head_only:
            data += body
        if status == 204:
            # No body, so no body fields (RFC 9110 §8.6: no Content-Length in a 204).
            data = b"HTTP/1.1 204 No Content\r\nServer: portico\r\n%s\r\n" % (
                b"Connection: close\r\n" if close else b""
            )
        _cache[key] = data
    return data
