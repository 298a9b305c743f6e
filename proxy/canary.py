"""The canary choice of a route: whether one request goes to the canary's backend.

ingress-nginx pairs a canary Ingress with the main Ingress of the same host and path; its Lua
balancer (`route_to_alternative_balancer`) then decides per request. The compiler writes the
pairing as a `Canary` step in the main rule's policy (proxy/config.py); `proxy/route.py` builds
a `CanaryChoice` from it, once per snapshot, with a `Route` for the canary's backend, and
`Routing.open_exchange` asks `chooses` after the route's request steps ran (a redirect or an
access check of the main rule answers first: ingress-nginx's location is the main Ingress's;
only the upstream differs). Routes without a canary pay one attribute test per request.

The request fields are read from the head as rendered for the pod (`RequestHead` keeps no
parsed fields), only on the routes that have a canary:

- the header as nginx's `$http_<name>`: the name case-insensitively ("_" in the annotation is
  "-"), several lines joined with ", ";
- the cookie as nginx's `$cookie_<name>`: the first pair of that name (case-insensitive) in the
  Cookie fields;
- the weight as `math.random(total) <= weight`: a uniform draw per request.
"""

from __future__ import annotations

from random import random
from typing import Final

from proxy.config import Canary
from proxy.headers import RequestHead
from proxy.regex import HeaderPattern, compile_header_pattern

_ALWAYS: Final = b"always"
_NEVER: Final = b"never"
_COOKIE: Final = b"cookie"


def _fields(head: RequestHead) -> list[bytes]:
    """The head's field lines ("Name: value"), after the request line."""
    data = head.upstream_head
    rest = head.upstream_rest if data is None else data[data.index(b"\r\n") + 2 :]
    return rest.split(b"\r\n")


def field_value(head: RequestHead, name: bytes) -> bytes | None:
    """The value of a request field (`name` lower-case), lines joined with ", "; None if
    absent."""
    found: list[bytes] = []
    for line in _fields(head):
        if not line:
            break
        field, colon, value = line.partition(b":")
        if colon and field.lower() == name:
            found.append(value.strip(b" \t"))
    if not found:
        return None
    return found[0] if len(found) == 1 else b", ".join(found)


def cookie_value(head: RequestHead, name: bytes) -> bytes | None:
    """The value of the first cookie `name` (lower-case) in the Cookie fields, or None."""
    for line in _fields(head):
        if not line:
            break
        field, colon, value = line.partition(b":")
        if not colon or field.lower() != _COOKIE:
            continue
        for pair in value.split(b";"):
            key, equals, text = pair.partition(b"=")
            if equals and key.strip(b" \t").lower() == name:
                return text.strip(b" \t")
    return None


class CanaryChoice:
    """One route's canary rules, as ingress-nginx's balancer applies them."""

    __slots__ = ("cookie", "header", "header_invalid", "header_value", "pattern", "share", "total")

    def __init__(self, spec: Canary) -> None:
        self.header = spec.header.replace("_", "-").encode("latin-1")
        self.header_value = spec.header_value.encode("latin-1")
        self.pattern: HeaderPattern | None = None
        self.header_invalid = spec.header_invalid
        if spec.header_pattern and not spec.header_invalid:
            self.pattern = compile_header_pattern(spec.header_pattern)
        self.cookie = spec.cookie.lower().encode("latin-1")
        # A request goes to the canary when a uniform draw in [0, 1) is below this share.
        self.share = min(spec.weight, spec.weight_total) / spec.weight_total
        self.total = spec.weight_total

    def chooses(self, head: RequestHead) -> bool:
        """Whether this request goes to the canary."""
        if self.header:
            value = field_value(head, self.header)
            if value is not None:
                if self.header_value:
                    if value == self.header_value:
                        return True
                elif self.header_invalid:
                    # ingress-nginx: a regex error while matching keeps the main backend.
                    return False
                elif self.pattern is not None:
                    if self.pattern.search(value):
                        return True
                elif value == _ALWAYS:
                    return True
                elif value == _NEVER:
                    return False
        if self.cookie:
            value = cookie_value(head, self.cookie)
            if value == _ALWAYS:
                return True
            if value == _NEVER:
                return False
        share = self.share
        if share <= 0.0:
            return False
        return share >= 1.0 or random() < share
