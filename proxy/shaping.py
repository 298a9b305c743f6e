"""Upstream request shaping as policy steps: the Host, fields and Connection the pod is sent, and
the fixed response fields of a route.

`config.ShapeRequest` becomes a `ShapeRequestStep`: built once per snapshot with its fields
rendered (`Name: value\r\n`...) and the lower-case names it replaces, it changes the upstream
head through `RequestHead.reshape` (one slice of the head, the client's request kept for
routing, redirects and the access log) and lets the request go on. Set fields replace the
client's fields of the same name, as nginx's `proxy_set_header` does; an empty value only
removes the field. `connection` is sent as `Connection`, except on an upgrade request, whose
`Connection: upgrade` the tunnel needs (ingress-nginx would replace it and break the upgrade);
after "close" the exchange does not reuse the connection (`Policy.upstream_close`), whatever the
pod answers (RFC 9112 §9.6).

`config.ResponseHeaders` becomes a fixed-field `ResponseStep` (rendered once) whose names the
pod's own fields of those names give way to (`ResponseStep.replaces`; `Policy.dropped`).
"""

from __future__ import annotations

from proxy.headers import ClientContext, RequestHead
from proxy.replies import Answer
from proxy.steps import BOTH, RequestStep, ResponseStep


def render_fields(names: tuple[str, ...], values: tuple[str, ...]) -> bytes:
    """`Name: value\r\n` per field with a value (the config step validated both)."""
    return b"".join(
        b"%s: %s\r\n" % (name.encode("ascii"), value.encode("ascii"))
        for name, value in zip(names, values, strict=True)
        if value
    )


class ShapeRequestStep(RequestStep):
    """config.ShapeRequest (see the module docstring)."""

    __slots__ = ("drop", "fields", "host", "upgrade_fields")

    def __init__(
        self, host: str, names: tuple[str, ...], values: tuple[str, ...], connection: str
    ) -> None:
        super().__init__(BOTH)
        self.host = host.encode("ascii") if host else None
        self.drop = frozenset(name.lower().encode("ascii") for name in names)
        # An upgrade request keeps the Connection: upgrade its tunnel needs.
        self.upgrade_fields = render_fields(names, values)
        self.fields = self.upgrade_fields
        if connection:
            self.fields += b"Connection: " + connection.encode("ascii") + b"\r\n"

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        head.reshape(
            host=self.host,
            fields=self.fields if head.upgrade is None else self.upgrade_fields,
            drop=self.drop,
        )
        return None


def response_headers_step(names: tuple[str, ...], values: tuple[str, ...]) -> ResponseStep:
    """config.ResponseHeaders: fixed fields on every response, replacing the pod's."""
    replaces = frozenset(name.lower().encode("ascii") for name in names)
    return ResponseStep(render_fields(names, values), replaces, BOTH)
