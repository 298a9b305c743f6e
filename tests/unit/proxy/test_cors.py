"""The CORS steps (proxy/cors.py) on request heads built by hand: how the Origin is read from the
head, how origins match (nginx.tmpl's buildCorsOriginRegex: `~*`, one wildcard label), and the
fields of a response. What a client sees through sockets: tests/integration/test_cors.py.
"""

from __future__ import annotations

import pytest

from proxy.config import Cors
from proxy.cors import PREFLIGHT, Origins, cors_steps, request_field
from proxy.headers import ClientContext, RequestHead


def _head(fields: bytes, method: bytes = b"GET", with_host: bool = True) -> RequestHead:
    head = RequestHead()
    head.method = method
    if with_host:
        head.upstream_head = b"GET / HTTP/1.1\r\nHost: a.test\r\n" + fields + b"\r\n"
        head.upstream_rest = b""
    else:  # HTTP/1.0 without Host: the fields after the request line, Host added when sent
        head.upstream_head = None
        head.upstream_rest = fields + b"\r\n"
    return head


@pytest.mark.parametrize(
    ("fields", "with_host", "origin"),
    [
        (b"Origin: https://a.test\r\n", True, b"https://a.test"),
        (b"origin:https://a.test \r\n", True, b"https://a.test"),  # OWS trimmed
        (b"X-Origin: x\r\nORIGIN: https://b.test\r\n", True, b"https://b.test"),
        # nginx's $http_origin is the first Origin field.
        (b"Origin: https://a.test\r\nOrigin: https://b.test\r\n", True, b"https://a.test"),
        (b"Origin: https://a.test\r\n", False, b"https://a.test"),
        (b"X-Not-Origin: https://a.test\r\n", True, None),
        (b"", False, None),
    ],
)
def test_request_field(fields: bytes, with_host: bool, origin: bytes | None) -> None:
    assert request_field(_head(fields, with_host=with_host), b"origin:") == origin


ORIGINS = ("https://origin.cors.com:8080", "http://*.origin.com:8080", "null", "test://localhost")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        # cors.go "should allow origin for cors"; nginx's ~* ignores case, echoes as sent.
        (b"https://origin.cors.com:8080", True),
        (b"HTTPS://ORIGIN.cors.com:8080", True),
        # cors.go "should not allow - single origin with port and origin without port".
        (b"https://origin.cors.com", False),
        # cors.go "should allow - matching origin+port with wildcard origin".
        (b"http://abc.origin.com:8080", True),
        (b"http://a-b-1.origin.com:8080", True),
        # cors.go "should not allow - unmatching origin with wildcard origin (2 subdomains)".
        (b"http://a.b.origin.com:8080", False),
        # cors.go "should not allow - portless origin with wildcard origin".
        (b"http://abc.origin.com", False),
        (b"http://.origin.com:8080", False),
        (b"http://a_b.origin.com:8080", False),
        (b"null", True),
        (b"test://localhost", True),
        # Matched whole (ingress-nginx's regex, anchored only at its end, would allow these).
        (b"xhttps://origin.cors.com:8080", False),
        (b"evil.test/https://origin.cors.com:8080", False),
        (b"", False),
    ],
)
def test_origins(origin: bytes, allowed: bool) -> None:
    head = _head(b"Origin: " + origin + b"\r\n")
    assert Origins(ORIGINS).allowed(head) == (origin if allowed else None)


def test_no_origin_allowed_without_a_list() -> None:
    assert Origins(()).allowed(_head(b"Origin: https://a.test\r\n")) is None
    assert Origins(("*",)).allowed(_head(b"")) == b"*"


def test_fields_in_ingress_nginx_order() -> None:
    spec = Cors(("https://a.test",), "GET, POST", "X-A", "X-B", True, 60)
    preflight, response = cors_steps(spec)
    assert response.dynamic
    head = _head(b"Origin: https://a.test\r\n", b"OPTIONS")
    ctx = ClientContext("192.0.2.1", "https", 443, ())
    assert preflight.request(head, ctx) is PREFLIGHT
    assert response.response(head, 204) == (
        b"Access-Control-Allow-Origin: https://a.test\r\n"
        b"Access-Control-Allow-Credentials: true\r\n"
        b"Access-Control-Allow-Methods: GET, POST\r\n"
        b"Access-Control-Allow-Headers: X-A\r\n"
        b"Access-Control-Expose-Headers: X-B\r\n"
        b"Access-Control-Max-Age: 60\r\n"
    )
    other = _head(b"Origin: https://b.test\r\n", b"OPTIONS")
    assert preflight.request(other, ctx) is None
    assert response.response(other, 200) == b""
    # Not OPTIONS: forwarded.
    assert preflight.request(_head(b"Origin: https://a.test\r\n"), ctx) is None


def test_every_origin_is_one_fixed_step() -> None:
    _, response = cors_steps(Cors(("*",), "GET", "", "", False, 5))
    assert not response.dynamic
    assert response.fields == (
        b"Access-Control-Allow-Origin: *\r\n"
        b"Access-Control-Allow-Methods: GET\r\n"
        b"Access-Control-Max-Age: 5\r\n"
    )
