"""CORS as policy steps: the preflight answer and the Access-Control-* response fields.

`config.Cors` (ingress-nginx's enable-cors and cors-* annotations) becomes, once per snapshot,
an `Origins` matcher and two steps, as ingress-nginx's template does it with `if` blocks in the
location's rewrite phase:

- `Preflight` (a request step): an OPTIONS request whose Origin is allowed is answered 204 by
  the proxy and never reaches the pod (nginx's `return 204`); any other request goes on (an
  OPTIONS request from an origin not allowed is the pod's to answer).
- the response step adds Access-Control-Allow-Origin and the configured fields to every
  response of the route, the pod's or a local answer's (the preflight's 204, a redirect, a
  refusal), replacing the pod's fields of those names, as `more_set_headers` does. With every
  origin allowed ("*") the fields are fixed and rendered once (Access-Control-Allow-Origin: *,
  whatever the request); otherwise `CorsFields` is a dynamic step echoing the request's Origin
  when it is allowed and adding nothing (the pod's own fields kept) when it is not.

Origins are matched case-insensitively (nginx's `~*`) and whole: the exact origins are one set
lookup, and an origin with a wildcard ("https://*.example.com") matches one label, letters,
digits and "-", in place of the "*". The Origin is read from the request head as received
(`request_field`); only routes with CORS pay for it.
"""

from __future__ import annotations

from typing import Final

from proxy.config import Cors
from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.steps import BOTH, RequestStep, ResponseStep

# The fields a CORS response step sets, replacing the pod's (lower-case).
CORS_FIELDS: Final = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
# ingress-nginx answers the preflight with `return 204`; its Content-Type and Content-Length
# fields are removed by nginx for a 204 (its header filter), so the answer has no body fields.
PREFLIGHT: Final = Answer(204, "CorsPreflight")
_OPTIONS: Final = b"OPTIONS"
_LABEL: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")


def request_field(head: RequestHead, lname: bytes) -> bytes | None:
    """The value of the request's first field named `lname` (lower-case, with its colon:
    b"origin:"), as the client sent it, or None. It scans the head rendered for the pod: only
    the steps of routes that need a field pay for this."""
    text = head.upstream_head
    if text is None:
        text = b"\r\n" + head.upstream_rest
    at = text.lower().find(b"\r\n" + lname)
    if at < 0:
        return None
    start = at + 2 + len(lname)
    end = text.find(b"\r\n", start)
    return text[start:end].strip(b" \t")


class Origins:
    """The origins one Cors step allows, compiled once per snapshot."""

    __slots__ = ("any", "exact", "wildcards")

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = origins == ("*",)
        exact: set[bytes] = set()
        wildcards: list[tuple[bytes, bytes]] = []
        for origin in origins:
            text = origin.lower().encode("ascii")
            star = text.find(b"*")
            if star < 0:
                exact.add(text)
            else:
                wildcards.append((text[:star], text[star + 1 :]))
        self.exact = frozenset(exact)
        self.wildcards = tuple(wildcards)

    def allowed(self, head: RequestHead) -> bytes | None:
        """The Access-Control-Allow-Origin value for this request, None: not allowed."""
        if self.any:
            return b"*"
        origin = request_field(head, b"origin:")
        if not origin:
            return None
        lowered = origin.lower()
        if lowered in self.exact:
            return origin
        for prefix, suffix in self.wildcards:
            if (
                len(lowered) > len(prefix) + len(suffix)
                and lowered.startswith(prefix)
                and lowered.endswith(suffix)
                and all(c in _LABEL for c in lowered[len(prefix) : len(lowered) - len(suffix)])
            ):
                return origin
        return None


class Preflight(RequestStep):
    """An OPTIONS request from an allowed origin is answered 204 (see the module docstring)."""

    __slots__ = ("origins",)

    def __init__(self, origins: Origins) -> None:
        super().__init__(BOTH)
        self.origins = origins

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        if head.method != _OPTIONS or self.origins.allowed(head) is None:
            return None
        return PREFLIGHT


class CorsFields(ResponseStep):
    """The Access-Control-* fields of a response whose request's Origin is allowed."""

    __slots__ = ("origins", "rest")

    def __init__(self, origins: Origins, rest: bytes) -> None:
        super().__init__(b"", CORS_FIELDS, BOTH, dynamic=True)
        self.origins = origins
        # The fields after Access-Control-Allow-Origin, rendered once.
        self.rest = rest

    def response(self, head: RequestHead | None, status: int) -> bytes:
        if head is None:
            return b""
        origin = self.origins.allowed(head)
        if origin is None:
            return b""
        return b"Access-Control-Allow-Origin: " + origin + b"\r\n" + self.rest


def cors_steps(spec: Cors) -> tuple[RequestStep, ResponseStep]:
    """The preflight step and the response step of one config.Cors."""
    origins = Origins(spec.origins)
    # In ingress-nginx's order (its template's more_set_headers lines).
    rest = b""
    if spec.credentials:
        rest += b"Access-Control-Allow-Credentials: true\r\n"
    rest += b"Access-Control-Allow-Methods: " + spec.methods.encode("ascii") + b"\r\n"
    if spec.headers:
        rest += b"Access-Control-Allow-Headers: " + spec.headers.encode("ascii") + b"\r\n"
    if spec.expose_headers:
        rest += b"Access-Control-Expose-Headers: " + spec.expose_headers.encode("ascii") + b"\r\n"
    rest += b"Access-Control-Max-Age: %d\r\n" % spec.max_age
    response: ResponseStep
    if origins.any:
        # Every request is allowed: the fields do not depend on it.
        response = ResponseStep(b"Access-Control-Allow-Origin: *\r\n" + rest, CORS_FIELDS, BOTH)
    else:
        response = CorsFields(origins, rest)
    return Preflight(origins), response
