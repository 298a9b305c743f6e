"""HTTP -> HTTPS redirects: the local answer to a plain-HTTP request on an `ssl_redirect` route.

`Routing.open_exchange` creates a `Redirect` instead of an `Exchange` when the matched
route has `RouteOptions.ssl_redirect` and the request came in on the plain-HTTP listener; in
its turn on the connection it answers `308 Permanent Redirect` to `https://<host><target>`
(as ingress-nginx does: 308 keeps the method and body). The port is left out of the Location on
purpose: behind a load balancer mapping 443 to the listener's port the public port is 443, and
the request's own port is the plain-HTTP one.
"""

from __future__ import annotations

from proxy.exchange import Exchange


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


def location(host: bytes, target: bytes) -> bytes | None:
    """`https://host/target` for a request, None when the host cannot be used."""
    name = _hostname(host)
    if name is None:
        return None
    if target[:1] != b"/":
        target = b"/"
    return b"https://" + name + target


class Redirect(Exchange):
    """A 308 to the HTTPS URL of the request, answered in its turn on the connection."""

    __slots__ = ()

    def begin(self) -> None:
        head = self.head
        url = None if head is None else location(head.host, head.target)
        if head is None or url is None:
            self._local(400, "InvalidHost", close=True)
            return
        # A request body still on its way would be read as the next request: close instead.
        close = not self.request_done or not head.keep_alive
        self.status = 308
        self.fwd.telemetry.stats.local_replies += 1
        keep = self.client.send_answer(
            308, b"Location: " + url + b"\r\n", close, head.method == b"HEAD"
        )
        self._finish(keep)
