"""Redirects as policy steps: HTTP -> HTTPS for a route whose host has TLS.

A route whose policy holds `config.HTTPSRedirect` (the compiler adds it for hosts listed under
an Ingress's `tls`, unless `ssl-redirect: "false"`) answers a request on the plain-HTTP
listener with `308 Permanent Redirect` to `https://<host><target>` (as ingress-nginx does: 308
keeps the method and body). The port is left out of the Location on purpose: behind a load
balancer mapping 443 to the listener's port the public port is 443, and the request's own port
is the plain-HTTP one. As in ingress-nginx (rootfs/etc/nginx/lua/lua_ingress.lua, without
`preserve-trailing-slash`), a target ending in "/" loses that one "/": `/` goes to
`https://host`, `/a/` to `https://host/a`, `/a/?q` keeps its query and its "/". With
`preserve-trailing-slash` (`HTTPSRedirect.preserve_trailing_slash`) the target is kept whole.
"""

from __future__ import annotations

from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.steps import PLAIN, RequestStep


def _hostname(host: bytes) -> bytes | None:
    """The host without its port; None if it is not safe to put in a header."""
    if host.startswith(b"["):
        end = host.find(b"]")
        name = host[: end + 1] if end > 0 else b""
    else:
        name = host.partition(b":")[0]
    if not name or any(c <= 0x20 or c >= 0x7F for c in name):
        return None
    return name


def location(host: bytes, target: bytes, keep_trailing_slash: bool = False) -> bytes | None:
    """`https://host/target` for a request, None when the host cannot be used."""
    name = _hostname(host)
    if name is None:
        return None
    if target[:1] != b"/":
        target = b"/"
    if target[-1:] == b"/" and not keep_trailing_slash:
        target = target[:-1]
    return b"https://" + name + target


INVALID_HOST: Final = Answer(400, "InvalidHost", close=True)


class RedirectToHTTPS(RequestStep):
    """config.HTTPSRedirect, on the plain-HTTP listener only."""

    __slots__ = ("keep_trailing_slash", "status")

    def __init__(self, status: int = 308, keep_trailing_slash: bool = False) -> None:
        super().__init__(PLAIN)
        self.status = status
        self.keep_trailing_slash = keep_trailing_slash

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        url = location(head.host, head.target, self.keep_trailing_slash)
        if url is None:
            return INVALID_HOST
        return Answer(self.status, "SSLRedirect", b"Location: " + url + b"\r\n")
