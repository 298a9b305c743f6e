"""Redirects as policy steps: HTTP -> HTTPS, a fixed URL, another host name.

A route whose policy holds `config.HTTPSRedirect` (the compiler adds it for hosts listed under
an Ingress's `tls`, unless `ssl-redirect: "false"`) answers a request on the plain-HTTP
listener with `308 Permanent Redirect` to `https://<host><target>` (as ingress-nginx does: 308
keeps the method and body). The port is left out of the Location on purpose: behind a load
balancer mapping 443 to the listener's port the public port is 443, and the request's own port
is the plain-HTTP one. As in ingress-nginx (rootfs/etc/nginx/lua/lua_ingress.lua, without
`preserve-trailing-slash`), a target ending in "/" loses that one "/": `/` goes to
`https://host`, `/a/` to `https://host/a`, `/a/?q` keeps its query and its "/".

`config.Redirect` (permanent-redirect, temporal-redirect) answers every request of its routes,
on both listeners, with one fixed answer built when the snapshot is applied: its status and the
annotation's URL as written, nothing of the request appended (nginx `return 301 <url>`).

`config.HostRedirect` (from-to-www-redirect) answers every request for the other name of a host
(`www.example.com` for `example.com` and the reverse) with `<scheme>://<host><target>`: the
listener's scheme, the request's target with the same one-"/" trim (ingress-nginx's
ngx_srv_redirect.lua). One step per listener, each with its scheme and host rendered once, so a
request only joins two byte strings. Unlike ingress-nginx the Location has no port, as the HTTPS
redirect: nginx writes the port it listens on, which is `:80`/`:443` in ingress-nginx's own
deployment but would be Portico's container port (8080) behind a Service.
`https://host`, `/a/` to `https://host/a`, `/a/?q` keeps its query and its "/". With
`preserve-trailing-slash` (`HTTPSRedirect.preserve_trailing_slash`) the target is kept whole.
"""

from __future__ import annotations

from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.steps import BOTH, PLAIN, RequestStep


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


def _trimmed(target: bytes) -> bytes:
    """The target as ingress-nginx's redirects append it: one trailing "/" dropped ("/" gives
    ""); a target that is not a path (`*`) counts as "/"."""
    if target[:1] != b"/":
        target = b"/"
    if target[-1:] == b"/":
        target = target[:-1]
    return target


def location(host: bytes, target: bytes, keep_trailing_slash: bool = False) -> bytes | None:
    """`https://host/target` for a request, None when the host cannot be used."""
    name = _hostname(host)
    if name is None:
        return None
    if keep_trailing_slash and target[:1] == b"/":
        return b"https://" + name + target
    return b"https://" + name + _trimmed(target)


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


class RedirectAll(RequestStep):
    """config.Redirect: the same answer for every request, on both listeners."""

    __slots__ = ("answer",)

    def __init__(self, url: str, status: int) -> None:
        super().__init__(BOTH)
        self.answer = Answer(status, "Redirect", b"Location: " + url.encode() + b"\r\n")

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        return self.answer


class RedirectToHost(RequestStep):
    """config.HostRedirect on one listener: `origin` is `<scheme>://<host>`, rendered once."""

    __slots__ = ("origin", "status")

    def __init__(self, scheme: str, host: str, status: int, schemes: int) -> None:
        super().__init__(schemes)
        self.origin = b"Location: " + scheme.encode() + b"://" + host.encode()
        self.status = status

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        return Answer(
            self.status, "FromToWWWRedirect", self.origin + _trimmed(head.target) + b"\r\n"
        )
