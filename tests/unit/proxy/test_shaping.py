"""Upstream request shaping as it runs: the head the pod is sent (proxy/shaping.py), the policy's
flags (`upstream_close`, `dropped`), and what the exchange does with them on a real upstream
connection: no reuse after `Connection: close` even when the pod offers to keep the connection,
and the pod's fields a custom header replaces removed.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import HSTS, ResponseHeaders, ShapeRequest
from proxy.headers import ClientContext, RequestHead, ResponseHead, parse_request
from proxy.policy import Policies, Policy
from proxy.settings import ProxySettings
from proxy.shaping import ShapeRequestStep, response_headers_step
from tests.unit.proxy.test_client_side import StreamClient, _open, _proxy

CTX = ClientContext("198.51.100.7", "http", 80, ())


def _head(special: list[tuple[bytes, bytes]], fields: list[tuple[bytes, bytes]]) -> RequestHead:
    parts: list[bytes] = [b"", b" ", b"", b""]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    return parse_request(b"GET", b"/a?b", "1.1", parts, special, CTX)


def _lines(head: RequestHead) -> list[bytes]:
    return head.render(b"unused:80").split(b"\r\n")


# (what, the step, client fields, lines the pod sees, lines it does not)
ROWS = [
    (
        "upstream-vhost: Host replaced, X-Forwarded-Host kept",
        ShapeRequest(host="b.internal:8080"),
        [],
        [b"Host: b.internal:8080", b"X-Forwarded-Host: a.test"],
        [b"Host: a.test"],
    ),
    (
        "connection-proxy-header",
        ShapeRequest(connection="keep-alive"),
        [],
        [b"Connection: keep-alive", b"Host: a.test"],
        [],
    ),
    (
        "proxy-set-headers replace the client's field, an empty value removes it",
        ShapeRequest(names=("X-Set", "X-Gone"), values=("ours", "")),
        [(b"x-set", b"theirs"), (b"X-Gone", b"1"), (b"Accept", b"*/*")],
        [b"X-Set: ours", b"Accept: */*"],
        [b"x-set: theirs", b"X-Gone: 1", b"X-Gone: "],
    ),
]


@pytest.mark.parametrize(
    ("step", "fields", "present", "absent"), [pytest.param(*r[1:], id=r[0]) for r in ROWS]
)
def test_shaped_head(
    step: ShapeRequest,
    fields: list[tuple[bytes, bytes]],
    present: list[bytes],
    absent: list[bytes],
) -> None:
    head = _head([(b"host", b"a.test")], fields)
    shaper = ShapeRequestStep(step.host, step.names, step.values, step.connection)
    assert shaper.request(head, CTX) is None
    lines = _lines(head)
    assert lines[0] == b"GET /a?b HTTP/1.1"
    for line in present:
        assert line in lines, line
    for line in absent:
        assert line not in lines, line
    assert head.host == b"a.test"  # the client's, for routing and logs


def test_an_upgrade_keeps_its_connection_field() -> None:
    # A WebSocket handshake needs `Connection: upgrade`; ingress-nginx would replace it.
    special = [(b"host", b"a.test"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    head = _head(special, [])
    ShapeRequestStep("", (), (), "close").request(head, CTX)
    lines = _lines(head)
    assert b"Connection: upgrade" in lines and b"Connection: close" not in lines


def test_policy_flags() -> None:
    policies = Policies(ProxySettings(access_log=False, hsts=False, max_body_bytes=0))
    plain, secure = policies.for_steps(
        (ShapeRequest(connection="close"), ResponseHeaders(("Content-Type", "X-A"), ("t", "1")))
    )
    assert plain.upstream_close and secure.upstream_close
    assert plain.dropped == frozenset({b"content-type", b"x-a"})
    assert plain.replaced == frozenset()
    assert plain.added == b"Content-Type: t\r\nX-A: 1\r\n"
    plain, _ = policies.for_steps((ShapeRequest(connection="keep-alive"), HSTS()))
    assert not plain.upstream_close and plain.dropped == frozenset()


@pytest.mark.parametrize(("connection", "reused"), [("close", False), ("keep-alive", True)])
async def test_a_pod_offering_keep_alive_is_not_reused_after_close(
    connection: str, reused: bool
) -> None:
    # RFC 9112 §9.6: a client that sent "close" sends no further request on that connection.
    server, conn, _ = _proxy(asyncio.get_running_loop())
    exchange = _open(server, StreamClient())
    exchange.policy = Policies(ProxySettings(access_log=False)).for_steps(
        (ShapeRequest(connection=connection),)
    )[0]
    exchange.begin()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # keep-alive
    assert (conn in server.pool.idle.get(conn.pool_key, [])) == reused
    assert conn.closed != reused


async def test_replaced_pod_fields_are_removed() -> None:
    server, conn, _ = _proxy(asyncio.get_running_loop())
    heads: list[bytes] = []

    class Recording(StreamClient):
        def send_head(  # noqa: PLR0917 (the interface's signature)
            self,
            status: int,
            parts: list[bytes],
            special: list[tuple[bytes, bytes, bytes]],
            head: RequestHead,
            added: bytes,
            replaced: frozenset[bytes],
        ) -> ResponseHead:
            response = super().send_head(status, parts, special, head, added, replaced)
            heads.append(response.data)
            return response

    exchange = _open(server, Recording())
    step = response_headers_step(("Content-Type",), ("application/vnd.test",))
    exchange.policy = Policy(response=(step,))
    exchange.begin()
    conn.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n"
    )
    (head,) = heads
    assert b"content-type: text/plain" not in head
    assert b"Content-Type: application/vnd.test\r\n" in head and b"X-Kept: 1\r\n" in head
