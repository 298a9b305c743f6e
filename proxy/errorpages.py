"""A route's default backend as it runs: custom error pages and the no-endpoint fallback.

ingress-nginx's `default-backend`, `custom-http-errors` and `disable-proxy-intercept-errors`
annotations reach the proxy as one `ErrorPages` step (proxy/config.py). `Route` (proxy/route.py)
builds an `ErrorBackend` from it, plus a `Route` for the default backend itself (its cluster and
timeouts); the exchange (proxy/exchange.py) consults them at two moments only, so a route
without them pays one attribute test per response:

- a pod's response head whose status is listed (`codes`; nginx's `proxy_intercept_errors` and
  `error_page`): the pod's response is dropped (its connection closed, as nginx finalizes the
  upstream request: its body is never read) and the exchange sends `error_request(...)` to the
  default backend instead: `GET /` (`HEAD /` for HEAD; the body is not sent again) with the
  client's fields and X-Code, X-Format, X-Original-URI, X-Namespace, X-Ingress-Name,
  X-Service-Name, X-Service-Port (X-Request-ID is already there). Its answer, status included,
  is what the client gets, as with nginx's `error_page 404 = @custom_...`. When the default
  backend has no endpoint, the pod's own response is relayed unchanged.
- the route has no endpoint (Service, port or endpoints missing) and `fallback` is set (the
  `default-backend` annotation): the request goes to the default backend as it is, with
  X-Code: 503 and the same identification fields, but not X-Original-URI (ingress-nginx's
  `custom-default-backend-` location).

The heads are built here per diverted request (rare by nature); the fields that only depend on
the route are rendered once.
"""

from __future__ import annotations

from typing import Final

from proxy.cluster import Cluster
from proxy.config import ErrorPages, PathRule
from proxy.headers import RequestHead

# The fields the default backend is told; a client's fields of these names are not passed on
# (nginx's proxy_set_header replaces the client's field of the same name).
_ERROR_FIELDS: Final = frozenset(
    {
        b"x-code",
        b"x-format",
        b"x-original-uri",
        b"x-namespace",
        b"x-ingress-name",
        b"x-service-name",
        b"x-service-port",
    }
)
# An error page is fetched without the request's body: its framing fields go too.
_ERROR_DROP: Final = _ERROR_FIELDS | {b"content-length", b"transfer-encoding"}


def _field(name: bytes, value: str) -> bytes:
    """One rendered field; nginx sends no field for an empty value. Kubernetes names and
    numbers only, but never a byte that could end the field early."""
    if not value or not value.isprintable() or not value.isascii():
        return b""
    return name + b": " + value.encode() + b"\r\n"


def _accept(head: RequestHead) -> bytes:
    """The client's Accept value (nginx's $http_accept: the first such field), or b""."""
    data = head.upstream_head if head.upstream_head is not None else head.upstream_rest
    for line in data.split(b"\r\n"):  # (the request line has no "accept:" name)
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"accept":
            return value.strip()
    return b""


def _copy(head: RequestHead) -> RequestHead:
    """A head to send elsewhere; the client's (method, target, host, id) stays for the log."""
    new = RequestHead()
    new.method = head.method
    new.target = head.target
    new.path = head.path
    new.host = head.host
    new.content_length = head.content_length
    new.chunked = head.chunked
    new.keep_alive = head.keep_alive
    new.version_11 = head.version_11
    new.expect_continue = head.expect_continue
    new.upgrade = head.upgrade
    new.request_id = head.request_id
    new.forwarded_for = head.forwarded_for
    new.upstream_head = head.upstream_head
    new.upstream_rest = head.upstream_rest
    new.upstream_target = head.upstream_target
    return new


class ErrorBackend:
    """A route's `ErrorPages` step, built once per snapshot (see the module docstring)."""

    __slots__ = ("codes", "fallback", "host", "identity")

    def __init__(self, spec: ErrorPages, rule: PathRule) -> None:
        self.codes = frozenset(spec.codes)
        self.fallback = spec.fallback
        namespace, _, ingress = rule.ingress.partition("/")
        service = (rule.service or "").partition("/")[2]
        port = "" if rule.port is None else str(rule.port)
        # Which Ingress, Service and port the request was for (ingress-nginx's $namespace,
        # $ingress_name, $service_name, $service_port: the port as written in the Ingress).
        self.identity = b"".join(
            (
                _field(b"X-Namespace", namespace),
                _field(b"X-Ingress-Name", ingress),
                _field(b"X-Service-Name", service),
                _field(b"X-Service-Port", port),
            )
        )
        # The Host of a request that came without one (HTTP/1.0): the default backend's
        # in-cluster name, as nginx would send its server name.
        error_namespace, _, error_service = spec.service.partition("/")
        self.host = f"{error_service}.{error_namespace}.svc".encode()

    def error_request(self, head: RequestHead, status: int) -> RequestHead:
        """What the default backend is asked when the pod answered `status`."""
        new = _copy(head)
        accept = _accept(head)
        fields = b"".join(
            (
                b"X-Code: %d\r\n" % status,
                b"X-Format: " + accept + b"\r\n" if accept else b"",
                b"X-Original-URI: " + head.target + b"\r\n",
                self.identity,
            )
        )
        new.content_length = -1
        new.chunked = False
        new.expect_continue = False
        new.upgrade = None
        new.reshape(
            target=b"/",
            host=self.host if head.upstream_head is None else None,
            fields=fields,
            drop=_ERROR_DROP,
        )
        if head.method != b"HEAD":
            data = new.upstream_head
            assert data is not None  # reshape with a Host renders the whole head
            new.upstream_head = b"GET" + data[len(head.method) :]
        return new

    def fallback_request(self, head: RequestHead) -> RequestHead:
        """The request as it is, for the default backend of a route without endpoints."""
        new = _copy(head)
        accept = _accept(head)
        fields = b"".join(
            (
                b"X-Code: 503\r\n",
                b"X-Format: " + accept + b"\r\n" if accept else b"",
                self.identity,
            )
        )
        new.reshape(fields=fields, drop=_ERROR_FIELDS)
        return new


def serves(cluster: Cluster | None) -> bool:
    """Whether a default backend can answer at all (it has an endpoint)."""
    return cluster is not None and len(cluster.endpoints) > 0
