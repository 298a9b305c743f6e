"""The echo backend over a real socket on 127.0.0.2: JSON echo, ?status, ?bytes, WebSocket."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from conformance.echo import parse_listen, start_echo

HOST = "127.0.0.2"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    port = _free_port(HOST)
    runner = await start_echo(HOST, port, "web", "web-0")
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


async def test_echoes_the_request(echo_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{echo_url}/some/path?a=1&b=two",
            data=b"hello world",
            headers={"Host": "demo.local", "X-Test": "yes"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Echo-Pod"] == "web-0"
        doc = await response.json()
    assert doc["service"] == "web"
    assert doc["pod"] == "web-0"
    assert doc["host"] == "demo.local"
    assert doc["path"] == "/some/path"
    assert doc["query"] == "a=1&b=two"
    assert doc["method"] == "POST"
    assert doc["headers"]["X-Test"] == "yes"
    assert doc["body_bytes"] == len(b"hello world")


@pytest.mark.parametrize("status", [201, 404, 503])
async def test_status_query(echo_url: str, status: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{echo_url}/x?status={status}") as response,
    ):
        assert response.status == status
        assert (await response.json())["path"] == "/x"


@pytest.mark.parametrize("size", [0, 1, 200_000])
async def test_bytes_query(echo_url: str, size: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{echo_url}/blob?bytes={size}") as response,
    ):
        assert response.status == 200
        body = await response.read()
    assert len(body) == size
    assert set(body) <= {ord("x")}


async def test_bad_query_is_400(echo_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{echo_url}/?bytes=lots") as response,
    ):
        assert response.status == 400


async def test_websocket_echo(echo_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{echo_url}/ws") as ws:
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "ping"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"


async def test_plain_get_on_ws_path_is_echoed(echo_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{echo_url}/ws") as response:
        assert response.status == 200
        assert (await response.json())["path"] == "/ws"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.2:8081", ("127.0.0.2", 8081)), ("[::1]:80", ("::1", 80))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8081", "host:", ":80", "h:70000"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)
