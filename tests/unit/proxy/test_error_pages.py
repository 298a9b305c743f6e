"""proxy/errorpages.py: the heads a route's default backend is sent, byte for byte.

Rows follow nginx.tmpl's CUSTOM_ERRORS location (`rewrite (.*) / break`; proxy_set_header
X-Code, X-Format $http_accept, X-Original-URI $request_uri, X-Namespace, X-Ingress-Name,
X-Service-Name, X-Service-Port, X-Request-ID) and its custom-default-backend- headers (the
request as it is, X-Code 503, no X-Original-URI); docs/user-guide/custom-errors.md.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from proxy.config import ErrorPages, PathRule
from proxy.errorpages import ErrorBackend
from proxy.headers import ClientContext, RequestHead, parse_request

RULE = PathRule("/", "prefix", "shop/web/http", "shop/store", "shop/web", "http", "Prefix")
BACKEND = ErrorBackend(ErrorPages("shop/errors/0", "shop/errors", (404,), fallback=True), RULE)


def _head(
    method: bytes,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    special: list[tuple[bytes, bytes]],
    version: str = "1.1",
) -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    ctx = ClientContext("198.51.100.7", "http", 80, ())
    return parse_request(method, target, version, parts, special, ctx)


def _lines(data: bytes | None) -> list[bytes]:
    assert data is not None and data.endswith(b"\r\n\r\n")
    return data.split(b"\r\n")[:-2]


HOST = [(b"host", b"shop.example")]
IDENTITY = [
    b"X-Namespace: shop",
    b"X-Ingress-Name: store",
    b"X-Service-Name: web",
    b"X-Service-Port: http",  # the port as written in the Ingress: a name here
]

ERROR_ROWS = {
    # id: (method, target, fields, special, request line, fields present, names absent)
    "get: GET / with every field": (
        b"GET",
        b"/cart?id=7",
        [(b"Accept", b"text/html"), (b"Cookie", b"a=1")],
        HOST,
        b"GET / HTTP/1.1",
        [
            b"Host: shop.example",
            b"Cookie: a=1",  # the client's fields go along (proxy_pass_request_headers)
            b"X-Code: 404",
            b"X-Format: text/html",
            b"X-Original-URI: /cart?id=7",
            *IDENTITY,
        ],
        [],
    ),
    "no Accept: no X-Format": (
        b"GET",
        b"/",
        [],
        HOST,
        b"GET / HTTP/1.1",
        [b"X-Code: 404"],
        [b"x-format"],
    ),
    "post: GET without the body's framing": (
        b"POST",
        b"/form",
        [],
        [*HOST, (b"content-length", b"5")],
        b"GET / HTTP/1.1",
        [b"X-Original-URI: /form"],
        [b"content-length", b"transfer-encoding"],
    ),
    "chunked post: no Transfer-Encoding either": (
        b"PUT",
        b"/x",
        [],
        [*HOST, (b"transfer-encoding", b"chunked")],
        b"GET / HTTP/1.1",
        [b"X-Code: 404"],
        [b"content-length", b"transfer-encoding"],
    ),
    "head stays HEAD": (b"HEAD", b"/x", [], HOST, b"HEAD / HTTP/1.1", [b"X-Code: 404"], []),
    "a client's X-Code is replaced": (
        b"GET",
        b"/",
        [(b"X-Code", b"200"), (b"X-Service-Name", b"other")],
        HOST,
        b"GET / HTTP/1.1",
        [b"X-Code: 404", b"X-Service-Name: web"],
        [],
    ),
    "HTTP/1.0 without Host: the default backend's name": (
        b"GET",
        b"/old",
        [],
        [],
        b"GET / HTTP/1.1",
        [b"Host: errors.shop.svc", b"X-Original-URI: /old"],
        [],
    ),
}


class Row(NamedTuple):
    method: bytes
    target: bytes
    fields: list[tuple[bytes, bytes]]
    special: list[tuple[bytes, bytes]]
    line: bytes  # the request line the default backend gets
    present: list[bytes]  # fields it gets
    absent: list[bytes]  # lower-case names it does not get


@pytest.mark.parametrize("row", [Row(*r) for r in ERROR_ROWS.values()], ids=list(ERROR_ROWS))
def test_error_request(row: Row) -> None:
    method, target, fields, special, line, present, absent = row
    version = "1.1" if special else "1.0"
    head = _head(method, target, fields, special, version)
    sent = BACKEND.error_request(head, 404)
    lines = _lines(sent.upstream_head)
    assert lines[0] == line
    for field in present:
        assert field in lines, (field, lines)
    names = [x.partition(b":")[0].lower() for x in lines[1:]]
    for name in absent:
        assert name not in names
    for name in (b"x-code", b"x-service-name", b"host", b"x-request-id"):
        assert names.count(name) == 1
    assert f"X-Request-ID: {head.request_id.decode()}".encode() in lines
    # The client's request stays for the access log.
    assert (sent.method, sent.target) == (head.method, head.target)
    assert sent.upgrade is None and sent.content_length == -1 and not sent.chunked


def test_fallback_request_is_the_request_as_it_is() -> None:
    head = _head(
        b"POST",
        b"/pay?x=1",
        [(b"Accept", b"application/json"), (b"X-Code", b"1")],
        [*HOST, (b"content-length", b"3")],
    )
    sent = BACKEND.fallback_request(head)
    lines = _lines(sent.upstream_head)
    assert lines[0] == b"POST /pay?x=1 HTTP/1.1"
    assert b"Content-Length: 3" in lines
    for field in (b"X-Code: 503", b"X-Format: application/json", *IDENTITY):
        assert field in lines
    assert not [x for x in lines if x.lower().startswith((b"x-original-uri", b"x-code: 1"))]
    assert head.upstream_head is not None and b"X-Code: 1" in head.upstream_head  # untouched


def test_codes_and_fallback() -> None:
    assert 404 in BACKEND.codes and 503 not in BACKEND.codes
    assert BACKEND.fallback
