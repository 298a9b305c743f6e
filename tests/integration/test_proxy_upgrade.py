"""Upgrades: 101 turns the connection into a byte tunnel; h2c is stripped, not tunnelled."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from backends import Client, Pod, WebSocketPod, render_request, snapshot, start_proxy

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.uvloop,
]


async def test_websocket_echo_through_the_proxy() -> None:
    pod = await WebSocketPod("127.0.0.4").start()
    proxy = await start_proxy(snapshot({"ns/ws/80": [(pod.host, pod.port)]}))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"http://127.0.0.1:{proxy.http_port}/ws", headers={"Host": "ws.test"}
            ) as ws,
        ):
            for i in range(5):
                await ws.send_str(f"hello {i}")
                msg = await ws.receive(timeout=5)
                assert msg.data == f"echo:hello {i}"
            big = bytes(range(256)) * 4096  # 1 MiB in one frame: backpressure both ways
            await ws.send_bytes(big)
            msg = await ws.receive(timeout=10)
            assert msg.data == big
            assert len(proxy.tunnels) == 1
            assert len(proxy.clients) == 0  # the tunnel owns the connection now
        await asyncio.sleep(0.1)
        assert len(proxy.tunnels) == 0
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_raw_upgrade_tunnel_and_bytes_after_the_request() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(
            render_request("GET", "/upgrade", [("Connection", "Upgrade"), ("Upgrade", "echo")])
            + b"early bytes;"
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: echo" in head and b"Connection: upgrade" in head
        assert b"X-Pod: 127.0.0.2" in head
        assert await asyncio.wait_for(client.reader.readexactly(12), 5) == b"early bytes;"
        client.send(b"ping")
        assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"ping"
        # Half close from the client reaches the pod, which closes: the tunnel ends.
        client.writer.write_eof()
        assert await client.closed()
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_tunnel_idle_timeout() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(
        snapshot({"ns/svc/80": [(pod.host, pod.port)]}), tunnel_idle_timeout=0.3
    )
    try:
        client = await Client.connect(proxy.http_port)
        client.send(
            render_request("GET", "/upgrade", [("Connection", "upgrade"), ("Upgrade", "echo")])
        )
        await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        client.send(b"x")
        assert await asyncio.wait_for(client.reader.readexactly(1), 5) == b"x"
        assert await client.closed(timeout=5)
        assert len(proxy.tunnels) == 0
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_h2c_upgrade_is_stripped_and_served_as_http11() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        client.send(
            render_request(
                "GET",
                "/echo",
                [
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
            )
        )
        resp = await client.response()
        assert resp.status == 200
        names = {n.lower() for n, _ in resp.json()["headers"]}
        assert "upgrade" not in names and "http2-settings" not in names
        assert "connection" not in names
        # The connection goes on as HTTP/1.1.
        assert (await client.request("GET", "/echo?again")).status == 200
        await client.close()
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()


async def test_upgrade_refused_by_upstream_is_answered_then_closed() -> None:
    pod = await Pod("127.0.0.2").start()
    proxy = await start_proxy(snapshot({"ns/svc/80": [(pod.host, pod.port)]}))
    try:
        client = await Client.connect(proxy.http_port)
        resp = await client.request(
            "GET", "/echo", [("Connection", "upgrade"), ("Upgrade", "websocket")]
        )
        assert resp.status == 200
        assert resp.header("Connection") == "close"
        assert await client.closed()
    finally:
        await proxy.shutdown(0.5)
        await pod.stop()
