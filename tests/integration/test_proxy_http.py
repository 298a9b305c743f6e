"""HTTP/1.1 behaviour of the proxy over real sockets: keep-alive, pipelining, framing, headers.

A ProxyServer runs in the test's event loop (uvloop, as in the workers) in front of test pods
on 127.0.0.2/127.0.0.3 (see backends.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from backends import Client, Pod, pattern, render_request, snapshot, start_proxy

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.uvloop,
]


class Stack:
    def __init__(self, proxy: Any, pods: list[Pod]) -> None:
        self.proxy = proxy
        self.pods = pods

    @property
    def port(self) -> int:
        port: int = self.proxy.http_port
        return port

    async def client(self) -> Client:
        return await Client.connect(self.port)


@pytest.fixture
async def stack(pod: Pod) -> AsyncIterator[Stack]:
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    yield Stack(proxy, [pod])
    await proxy.shutdown(0.5)


def headers_of(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in doc["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_pod(handler: Handler) -> AsyncIterator[Any]:
    """A proxy in front of one hand-written pod on 127.0.0.3 (exact bytes on the wire)."""
    server = await asyncio.start_server(handler, "127.0.0.3", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy(snapshot({"ns/svc/80": [("127.0.0.3", port)]}))
    try:
        yield proxy
    finally:
        await proxy.shutdown(0.5)
        server.close()


async def test_keepalive_reuses_both_sides(stack: Stack) -> None:
    clients = [await stack.client() for _ in range(3)]
    for _ in range(4):
        for client in clients:
            resp = await client.request("GET", "/echo")
            assert resp.status == 200
            assert resp.header("Connection") is None
    pod = stack.pods[0]
    assert pod.requests == 12
    # At most one upstream connection per concurrent client, reused across requests.
    assert pod.connections <= 3
    assert stack.proxy.stats.connections_total == 3
    for client in clients:
        await client.close()


async def test_pipelined_requests_answered_in_order(stack: Stack) -> None:
    client = await stack.client()
    batch = b"".join(
        render_request("GET", f"/slow?delay={0.05 if i % 2 == 0 else 0}&i={i}") for i in range(6)
    )
    batch += render_request("POST", "/echo?i=6", body=b"x" * 1000)
    batch += render_request("GET", "/missing-route-is-still-routed?i=7")
    client.send(batch)
    for i in range(8):
        resp = await client.response()
        assert resp.status == 200
        assert resp.json()["target"].endswith(f"i={i}")
    await client.close()


async def test_request_target_and_end_to_end_headers_forwarded_unchanged(stack: Stack) -> None:
    client = await stack.client()
    target = "/echo/a%2Fb/../c?x=1&y=%20z&x=2"
    resp = await client.request(
        "GET",
        target,
        [("X-Custom", "  spaced value"), ("Accept", "*/*"), ("x-lower", "v")],
        host="Svc.Test:8080",
    )
    doc = resp.json()
    assert doc["target"] == target
    assert doc["version"] == "1.1"
    h = headers_of(doc)
    assert h["host"] == ["Svc.Test:8080"]
    assert h["x-custom"] == ["spaced value"]
    assert h["x-lower"] == ["v"]
    await client.close()


async def test_hop_by_hop_headers_removed(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request(
        "GET",
        "/echo",
        [
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Upgrade", "h2c"),
            ("X-Public", "yes"),
        ],
    )
    h = headers_of(resp.json())
    for name in ("connection", "x-private", "keep-alive", "proxy-connection", "te", "trailer"):
        assert name not in h, name
    assert "upgrade" not in h
    assert h["x-public"] == ["yes"]
    await client.close()


async def test_forwarded_headers_overwritten_for_untrusted_clients(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request(
        "GET",
        "/echo",
        [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Forwarded-Port", "1"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    )
    h = headers_of(resp.json())
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["svc.test"]
    assert h["x-forwarded-port"] == [str(stack.port)]
    assert len(h["x-request-id"][0]) == 32
    await client.close()


async def test_forwarded_headers_extended_for_trusted_proxies() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), trusted_proxies=("127.0.0.0/8",)
    )
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request(
            "GET",
            "/echo",
            [
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "public.test"),
                ("X-Real-IP", "203.0.113.9"),
                ("X-Request-ID", "abc-123"),
            ],
        )
        h = headers_of(resp.json())
        assert h["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
        assert h["x-forwarded-proto"] == ["https"]
        assert h["x-forwarded-host"] == ["public.test"]
        assert h["x-real-ip"] == ["203.0.113.9"]
        assert h["x-request-id"] == ["abc-123"]
        # Without incoming values the proxy sets its own.
        resp = await client.request("GET", "/echo")
        h = headers_of(resp.json())
        assert h["x-forwarded-for"] == ["127.0.0.1"]
        assert h["x-forwarded-proto"] == ["http"]
        await client.close()
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_request_id_kept_from_any_client_and_generated_unique(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("GET", "/echo", [("X-Request-ID", "given-1")])
    assert headers_of(resp.json())["x-request-id"] == ["given-1"]
    ids = set()
    for _ in range(5):
        ids.add(headers_of((await client.request("GET", "/echo")).json())["x-request-id"][0])
    assert len(ids) == 5
    await client.close()


async def test_response_headers_server_date_length_type_kept(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("GET", "/echo")
    assert resp.header("Server") == "portico"  # the pod sends none
    assert resp.header("Content-Type") == "application/json"
    assert resp.header("Content-Length") == str(len(resp.body))
    assert resp.header("Transfer-Encoding") is None
    await client.close()


async def test_backend_server_header_passed_through() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nServer: pod/1.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Pod: 1\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    async with raw_pod(handler) as proxy:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("GET", "/")
        assert resp.body == b"ok"
        assert resp.header_all("Server") == ["pod/1.0"]
        assert resp.header("Date") == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert resp.header("Keep-Alive") is None
        assert resp.header("Connection") is None
        assert resp.header("X-Pod") == "1"
        await client.close()


async def test_chunked_response_rechunked_and_length_response_not(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("GET", "/stream?n=200000&chunked=1")
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.body == pattern(200000)
    resp = await client.request("GET", "/stream?n=200000")
    assert resp.header("Content-Length") == "200000"
    assert resp.header("Transfer-Encoding") is None
    assert resp.chunked_frames == 0
    assert resp.body == pattern(200000)
    await client.close()


async def test_request_bodies_content_length_and_chunked(stack: Stack) -> None:
    client = await stack.client()
    body = pattern(300_000)
    resp = await client.request("POST", "/sink", body=body)
    doc = resp.json()
    assert doc["length"] == len(body)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:1000], body[1000:]))
    chunked += b"0\r\nX-Trailer: dropped\r\n\r\n"
    client.send(render_request("PUT", "/echo", [("Transfer-Encoding", "chunked")]) + chunked)
    resp = await client.response()
    doc = resp.json()
    assert doc["length"] == len(body)
    h = headers_of(doc)
    assert h["transfer-encoding"] == ["chunked"]
    assert "content-length" not in h
    assert "x-trailer" not in h
    await client.close()


async def test_expect_100_continue(stack: Stack) -> None:
    client = await stack.client()
    client.send(
        render_request("POST", "/sink", [("Expect", "100-continue"), ("Content-Length", "5")])
    )
    line = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert line.startswith(b"HTTP/1.1 100 Continue")
    client.send(b"hello")
    resp = await client.response()
    assert resp.status == 200
    assert resp.json()["length"] == 5
    await client.close()


async def test_expect_100_continue_refused_when_too_large() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}), max_body_bytes=10)
    try:
        client = await Client.connect(proxy.http_port)
        client.send(
            render_request("POST", "/sink", [("Expect", "100-continue"), ("Content-Length", "50")])
        )
        resp = await client.response()
        assert resp.status == 413
        assert await client.closed()
        assert pod.requests == 0
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_head_204_304_have_no_body(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("HEAD", "/stream?n=5000")
    assert resp.status == 200
    assert resp.header("Content-Length") == "5000"
    for code in (204, 304):
        resp = await client.request("GET", f"/status?code={code}")
        assert resp.status == code
        assert resp.body == b""
    # The connection is still in sync after all of them.
    resp = await client.request("HEAD", "/echo")
    assert resp.status == 200
    resp = await client.request("GET", "/echo?after")
    assert resp.json()["target"] == "/echo?after"
    assert stack.pods[0].connections == 1
    await client.close()


async def test_informational_responses_relayed(stack: Stack) -> None:
    client = await stack.client()
    client.send(render_request("GET", "/early-hints"))
    raw = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert raw.startswith(b"HTTP/1.1 103 ")
    assert b"Link: </s.css>; rel=preload" in raw
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == b"after hints"
    await client.close()


async def test_response_without_length_read_to_close(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("GET", "/nolength?n=100000")
    assert resp.status == 200
    assert resp.body == pattern(100000)
    assert resp.header("Transfer-Encoding") == "chunked"  # re-framed for an HTTP/1.1 client
    # The client connection survives; the upstream one was closed by the pod.
    resp = await client.request("GET", "/echo")
    assert resp.status == 200
    await client.close()


async def test_http10_client_without_keepalive_and_read_to_close(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"GET /nolength?n=3000 HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # until the proxy closes
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body == pattern(3000)
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"GET /echo HTTP/1.0\r\nHost: svc.test\r\nConnection: keep-alive\r\n\r\n")
    client = Client(reader, writer)
    resp = await client.response()
    assert resp.status == 200
    assert resp.header("Connection") == "keep-alive"
    assert headers_of(resp.json())["host"] == ["svc.test"]
    writer.write(b"GET /echo?2 HTTP/1.0\r\nHost: svc.test\r\n\r\n")
    resp = await client.response()
    assert resp.header("Connection") == "close"
    assert await client.closed()


async def test_connection_close_honoured_both_ways(stack: Stack) -> None:
    client = await stack.client()
    resp = await client.request("GET", "/echo", [("Connection", "close")])
    assert resp.status == 200
    assert resp.header("Connection") == "close"
    assert await client.closed()
    # The pod closing after its response does not close the client connection.
    client = await stack.client()
    resp = await client.request("GET", "/echo")
    pods_before = stack.pods[0].connections
    resp = await client.request("GET", "/nolength?n=10")
    assert resp.status == 200
    resp = await client.request("GET", "/echo")
    assert resp.status == 200
    assert stack.pods[0].connections == pods_before + 1
    await client.close()


async def test_absolute_form_target_uses_its_authority(stack: Stack) -> None:
    client = await stack.client()
    client.send(b"GET http://Other.Test:81/echo?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n")
    resp = await client.response()
    doc = resp.json()
    assert doc["target"] == "/echo?q=1"
    assert headers_of(doc)["host"] == ["Other.Test:81"]
    await client.close()


async def test_access_log_line_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}), access_log=True)
    try:
        client = await Client.connect(proxy.http_port)
        await client.request("GET", "/echo?log=1")
        client.send(
            b"GET /x HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        await client.closed()
        proxy.access.flush()
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    ok = [x for x in lines if x["target"] == "/echo?log=1"]
    assert ok and ok[0]["status"] == 200 and ok[0]["upstream"].startswith("127.0.0.2:")
    assert any(x["status"] == 400 and x.get("reason") for x in lines)


async def test_client_half_close_after_request_gets_answer_then_close(stack: Stack) -> None:
    client = await stack.client()
    client.send(render_request("GET", "/slow?delay=0.1"))
    client.writer.write_eof()
    resp = await client.response()
    assert resp.status == 200
    assert await client.closed(timeout=2)  # not kept open until the keep-alive timeout


# Responses a pod writes in one piece: head and a large body arrive in one read, which the
# upstream protocol splits at the end of the head (see UpstreamProtocol.data_received).
_BIG = pattern(40000)
_ONE_READ_RESPONSES = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + _BIG, _BIG, id="content-length"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9c40\r\n" + _BIG + b"\r\n0\r\n\r\n",
        _BIG,
        id="chunked",
    ),
    pytest.param(
        b"HTTP/1.1 100 Continue\r\n\r\n"  # not relayed: the proxy answers Expect itself
        b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + _BIG,
        _BIG,
        id="1xx-then-final",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + _BIG[:20000],
        _BIG[:20000],
        id="just-over-split",
    ),
]


@pytest.mark.parametrize(("wire", "body"), _ONE_READ_RESPONSES)
async def test_head_and_large_body_in_one_read(wire: bytes, body: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: the same answer to every request
                await reader.readuntil(b"\r\n\r\n")
                writer.write(wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with raw_pod(handler) as proxy:
        client = await Client.connect(proxy.http_port)
        for _ in range(3):  # the pooled connection reads the next response correctly
            resp = await client.request("GET", "/")
            assert resp.status == 200
            assert resp.body == body
        await client.close()
        assert proxy.pool.connects == 1


async def test_bytes_after_a_one_read_response_close_the_upstream() -> None:
    """A pod that sends more than its Content-Length is broken: the extra bytes never reach
    the client as a response, and its connection is not pooled."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n"
            + _BIG[:20000]
            + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
        )
        await writer.drain()
        await reader.read()  # until the proxy closes
        writer.close()

    async with raw_pod(handler) as proxy:
        client = await Client.connect(proxy.http_port)
        resp = await client.request("GET", "/")
        assert resp.body == _BIG[:20000]
        resp = await client.request("GET", "/")  # a fresh upstream connection answers
        assert resp.body == _BIG[:20000]
        assert proxy.pool.connects == 2
        await client.close()


async def test_upstream_connections_leave_no_descriptor_behind() -> None:
    """Every upstream connection's descriptors (uvloop's and the one kept for socket options)
    are closed with it: pods closing after each response, and the pool closing on shutdown."""
    import os

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\nConnection: close\r\n\r\n")
        writer.write(_BIG[:20000])
        await writer.drain()
        writer.close()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async with raw_pod(handler) as proxy:
        client = await Client.connect(proxy.http_port)
        await client.request("GET", "/")  # everything lazily opened is open now
        baseline = open_fds()
        for _ in range(30):
            resp = await client.request("GET", "/")
            assert resp.body == _BIG[:20000]
        assert proxy.pool.connects == 31
        async with asyncio.timeout(5):
            while open_fds() > baseline:
                await asyncio.sleep(0.01)
        await client.close()
