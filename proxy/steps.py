"""Route policy steps as they run: the interface, and the steps that need no module of their own.

A step is built once per snapshot from its description in the snapshot (proxy/config.py) and
runs for every request of the routes that carry it (proxy/policy.py puts them in order):

- a `RequestStep` runs once the request head is routed, before anything goes to a pod. It sees
  the validated head (method, target, host, fields, X-Forwarded-For as received) and the
  client (address, whether it is a trusted proxy, listener), and returns None to let the
  request go on, or the `Answer` that ends it: a status, the reason logged with it, extra
  header fields (a Location, a WWW-Authenticate, ...), and whether to close the connection.
- a `ResponseStep` adds header fields to every response of the route, a pod's or a local
  answer's, and may replace the pod's own fields of the same name (`replaces`). Fields that do
  not depend on the request are rendered once (`fields`); a step whose fields do overrides
  `response` (e.g. CORS echoing the Origin), and is then called for each response.

Each step says on which listeners it applies (`schemes`: HTTPS redirects only on plain HTTP,
HSTS only on HTTPS): a route keeps one step list per listener, so no step tests the scheme per
request. A route without steps pays one empty-tuple test per request.

Base classes rather than typing.Protocols, as for proxy/clientside.py: compiled, calls through
them are native.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer

# Where a step applies: requests on the plain-HTTP listener, on the HTTPS one, or both.
PLAIN: Final = 1
SECURE: Final = 2
BOTH: Final = PLAIN | SECURE

STS: Final = b"strict-transport-security"


@mypyc_attr(allow_interpreted_subclasses=True)
class RequestStep:
    __slots__ = ("schemes", "waits")

    def __init__(self, schemes: int = BOTH) -> None:
        self.schemes = schemes
        # True: a WaitingStep, which routing leaves to the exchange (see WaitingStep).
        self.waits = False

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        """None: the request goes on; an Answer: it is answered with that, never forwarded."""
        raise NotImplementedError


# nginx's add_header (without `always`) adds to responses with these statuses only.
COOKIE_STATUSES: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


class Pass:
    """A WaitingStep's decision that the request goes on, with header fields added to the
    route's response (`fields`, rendered): on 2xx/3xx responses, or on every one with
    `always` (an external auth service's Set-Cookie, as nginx's `add_header [always]`)."""

    __slots__ = ("always", "fields")

    def __init__(self, fields: bytes, always: bool) -> None:
        self.fields = fields
        self.always = always


@mypyc_attr(allow_interpreted_subclasses=True)
class WaitingStep(RequestStep):
    """A request step that must wait for something (an external auth service) before it
    decides. Routing stops at it and the exchange runs it when it begins (proxy/exchange.py:
    the request body read meanwhile is held, with the usual backpressure, no pod chosen),
    then the steps after it. `check` returns None or a `Pass` to let the request go on, an
    `Answer` to end it; an exception ends it with 500, never lets it through."""

    __slots__ = ()

    def __init__(self, schemes: int = BOTH) -> None:
        super().__init__(schemes)
        self.waits = True

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        raise NotImplementedError  # never called: routing leaves a waiting step to `check`

    async def check(self, head: RequestHead, client: ClientContext) -> Answer | Pass | None:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseStep:
    __slots__ = ("dynamic", "fields", "replaces", "schemes")

    def __init__(
        self,
        fields: bytes = b"",
        replaces: frozenset[bytes] = frozenset(),
        schemes: int = BOTH,
        dynamic: bool = False,
    ) -> None:
        # The fields added to every response, rendered ("Name: value\r\n"...).
        self.fields = fields
        # Lower-case names of the pod's fields these replace (headers.RESPONSE_SPECIAL ones).
        self.replaces = replaces
        self.schemes = schemes
        # True: `response` computes the fields per response (then `fields` is not used).
        self.dynamic = dynamic

    def response(self, head: RequestHead | None, status: int) -> bytes:
        """The fields to add to one response (only called for a `dynamic` step)."""
        return self.fields


# ---- the steps of proxy/config.py that need nothing else ------------------------------------

TOO_LARGE: Final = Answer(413, "BodyTooLarge", close=True)


class LimitBody(RequestStep):
    """config.BodyLimit: a Content-Length above the limit is refused before forwarding (the
    connection closes: the body is not read). The limit of a body without Content-Length is
    checked by the exchange as it reads (Policy.max_body)."""

    __slots__ = ("max_bytes",)

    def __init__(self, max_bytes: int) -> None:
        super().__init__(BOTH)
        self.max_bytes = max_bytes

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        return TOO_LARGE if head.content_length > self.max_bytes else None


class RefuseAll(RequestStep):
    """config.Refuse: every request gets the same answer (e.g. 403 AccessControlNotEnforced
    for an Ingress whose access control Portico does not enforce)."""

    __slots__ = ("answer",)

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(BOTH)
        self.answer = Answer(status, reason)

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        return self.answer


def hsts_step(max_age: int, include_subdomains: bool, preload: bool) -> ResponseStep:
    """config.HSTS: Strict-Transport-Security on HTTPS responses, replacing the pod's."""
    value = b"max-age=%d" % max_age
    if include_subdomains:
        value += b"; includeSubDomains"
    if preload:
        value += b"; preload"
    return ResponseStep(b"Strict-Transport-Security: " + value + b"\r\n", frozenset((STS,)), SECURE)
