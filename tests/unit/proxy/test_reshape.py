"""RequestHead.reshape: what the pod is sent after a policy step changes it (target, Host,
fields), with the request as the client sent it kept for routing and logs."""

from __future__ import annotations

import pytest

from proxy.headers import ClientContext, RequestHead, parse_request


def _head(
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    special: list[tuple[bytes, bytes]],
    version: str = "1.1",
) -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    ctx = ClientContext("198.51.100.7", "http", 80, ())
    return parse_request(b"GET", target, version, parts, special, ctx)


def _fields(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


ROWS = [
    # (what, target, host, fields, drop, request line, Host value, present, absent)
    (
        "target only",
        b"/new?q=1",
        None,
        b"",
        frozenset(),
        b"GET /new?q=1 HTTP/1.1",
        b"a.example",
        [b"Accept: */*"],
        [],
    ),
    (
        "host only",
        None,
        b"b.internal",
        b"",
        frozenset(),
        b"GET /old/x?y HTTP/1.1",
        b"b.internal",
        [b"Accept: */*", b"X-Forwarded-Host: a.example"],
        [],
    ),
    (
        "fields added last",
        None,
        None,
        b"X-Forwarded-Prefix: /old\r\n",
        frozenset(),
        b"GET /old/x?y HTTP/1.1",
        b"a.example",
        [b"X-Forwarded-Prefix: /old"],
        [],
    ),
    (
        "field dropped by name, any case",
        None,
        None,
        b"",
        frozenset({b"accept"}),
        b"GET /old/x?y HTTP/1.1",
        b"a.example",
        [b"User-Agent: t"],
        [b"Accept: */*"],
    ),
    (
        "dropped then set again",
        None,
        None,
        b"Accept: text/html\r\n",
        frozenset({b"accept"}),
        b"GET /old/x?y HTTP/1.1",
        b"a.example",
        [b"Accept: text/html"],
        [b"Accept: */*"],
    ),
]


@pytest.mark.parametrize(
    ("what", "target", "host", "fields", "drop", "line", "host_value", "present", "absent"),
    ROWS,
    ids=[r[0] for r in ROWS],
)
def test_reshape(  # noqa: PLR0917 (one parameter per column of the table)
    what: str,
    target: bytes | None,
    host: bytes | None,
    fields: bytes,
    drop: frozenset[bytes],
    line: bytes,
    host_value: bytes,
    present: list[bytes],
    absent: list[bytes],
) -> None:
    head = _head(
        b"/old/x?y", [(b"Accept", b"*/*"), (b"User-Agent", b"t")], [(b"host", b"a.example")]
    )
    head.reshape(target, host, fields, drop)
    data = head.render(b"10.0.0.1:80")
    assert data.startswith(line + b"\r\nHost: " + host_value + b"\r\n")
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
    lines = _fields(data)
    assert [f for f in present if f not in lines] == []
    assert [f for f in absent if f in lines] == []
    assert lines.count(b"Host: " + host_value) == 1
    # The request as the client sent it stays for routing, redirects and the log.
    assert (head.target, head.host) == (b"/old/x?y", b"a.example")


def test_reshape_without_host_keeps_the_endpoint_authority() -> None:
    """An HTTP/1.0 request without Host gets the endpoint's authority at send time, with the
    rewritten target."""
    head = _head(b"/old", [(b"Accept", b"*/*")], [], version="1.0")
    head.reshape(b"/new", None, b"X-A: 1\r\n")
    data = head.render(b"10.0.0.1:80")
    assert data.startswith(b"GET /new HTTP/1.1\r\nHost: 10.0.0.1:80\r\n")
    assert b"X-A: 1\r\n\r\n" in data and data.endswith(b"\r\n\r\n")


def test_reshape_without_host_given_one() -> None:
    head = _head(b"/old", [], [], version="1.0")
    head.reshape(None, b"svc.internal")
    assert head.render(b"10.0.0.1:80").startswith(b"GET /old HTTP/1.1\r\nHost: svc.internal\r\n")
