"""Path rewrites and the app-root redirect as policy steps (ingress-nginx's `rewrite-target`,
`x-forwarded-prefix` and `app-root`).

`RewritePath` (config.Rewrite) changes what the pod is sent: the route's path expression is
matched at the start of the request path (compiled once per snapshot, proxy/regex.py) and the
target template is filled with its captures, as nginx's `rewrite "(?i)<path>" <target> break;`
does. The request's query follows the new path (nginx appends the arguments when the
replacement has none; the annotation's grammar allows none). The new target goes to the pod
through `RequestHead.reshape`; the client's target stays for routing, redirects and the access
log. Captures are slices of the raw request path (Portico matches paths undecoded), which
`parse_request` has validated, and the template's own characters are path characters, so the
result is an origin-form target whenever it starts with "/"; it is checked anyway (fail closed):
a result not starting with "/", or holding a byte outside the visible ASCII range, is answered
500 InvalidRewrite and never forwarded (nginx would send the pod whatever the rewrite made).

`RedirectAppRoot` (config.AppRoot) answers a request for exactly "/" with 302 to the app root
on the same scheme and Host (nginx `return 302 $scheme://$http_host<app-root>;`).
"""

from __future__ import annotations

from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.regex import compile_path
from proxy.replies import Answer
from proxy.steps import BOTH, RequestStep

INVALID_REWRITE: Final = Answer(500, "InvalidRewrite")
INVALID_HOST: Final = Answer(400, "InvalidHost", close=True)
FORWARDED_PREFIX: Final = frozenset((b"x-forwarded-prefix",))
# Bytes a rewritten target may hold: visible ASCII (no controls, space or DEL).
_VISIBLE: Final = bytes(range(0x21, 0x7F))


def template_parts(template: str) -> tuple[tuple[bytes, int], ...]:
    """A template ("/new/$1/x") as (literal, capture) pairs, capture -1 for none: "$N" is the
    N-th capture (nginx reads one digit: "$12" is $1 then "2")."""
    parts: list[tuple[bytes, int]] = []
    literal = b""
    raw = template.encode("ascii")
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"$" and raw[i + 1 : i + 2].isdigit():
            parts.append((literal, raw[i + 1] - 0x30))
            literal = b""
            i += 2
        else:
            literal += raw[i : i + 1]
            i += 1
    if literal:
        parts.append((literal, -1))
    return tuple(parts)


def expand(parts: tuple[tuple[bytes, int], ...], captures: list[bytes]) -> bytes:
    """A template filled with captures ("" for a capture the expression does not have)."""
    out = b""
    for literal, index in parts:
        out += literal
        if 0 <= index < len(captures):
            out += captures[index]
    return out


class RewritePath(RequestStep):
    """config.Rewrite: the pod gets the rewritten target (and X-Forwarded-Prefix)."""

    __slots__ = ("pattern", "prefix", "target")

    def __init__(self, pattern: str, target: str, forwarded_prefix: str = "") -> None:
        super().__init__(BOTH)
        self.pattern = compile_path(pattern)
        self.target = template_parts(target)
        self.prefix = template_parts(forwarded_prefix)

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        captures = self.pattern.captures(head.path.encode("latin-1"))
        if captures is None:
            # nginx leaves the URI as it is when the rewrite's expression does not match (the
            # route's expression matched, so only a fallback route gets here); the prefix field
            # is set all the same.
            captures = []
            path = None
        else:
            path = expand(self.target, captures)
            if path[:1] != b"/" or path.translate(None, _VISIBLE):
                return INVALID_REWRITE
            target = head.target
            query = target.find(b"?")
            if 0 <= query < len(target) - 1:
                path += target[query:]
        if self.prefix:
            # The client's field is replaced (nginx's proxy_set_header); an empty value (its
            # captures took no part) sends none, as nginx does with an empty header value.
            value = expand(self.prefix, captures)
            head.reshape(
                target=path,
                fields=b"X-Forwarded-Prefix: " + value + b"\r\n" if value else b"",
                drop=FORWARDED_PREFIX,
            )
        elif path is not None:
            head.reshape(target=path)
        return None


class RedirectAppRoot(RequestStep):
    """config.AppRoot: "/" is redirected (302) to the application's root path."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        super().__init__(BOTH)
        self.path = path.encode("ascii")

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        if head.path != "/":
            return None
        host = head.host
        if not host or host.translate(None, _VISIBLE):
            return INVALID_HOST
        location = client.scheme + b"://" + host + self.path
        return Answer(302, "AppRoot", b"Location: " + location + b"\r\n")
