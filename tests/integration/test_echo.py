"""The echo backend over a real socket on 127.0.0.2: JSON echo, ?status, ?bytes, ?sleep_ms,
WebSocket, HTTPS and a per-backend delay, and the `portico echo` command."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from conformance.certificate import generate_ca, issue
from controller.echo import parse_listen, server_context, start_echo
from tests.integration.serving import echo_pods, free_port

HOST = "127.0.0.2"


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async with echo_pods((HOST, "web", "web-0")) as port:
        yield f"http://{HOST}:{port}"


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


async def test_sleep_query_answers_late(echo_url: str) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        started = loop.time()
        async with session.get(f"{echo_url}/x?sleep_ms=200") as response:
            assert response.status == 200
            assert (await response.json())["query"] == "sleep_ms=200"
        assert loop.time() - started >= 0.2
        async with session.get(f"{echo_url}/x?sleep_ms=-1") as response:
            assert response.status == 400


def _issued(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """CA file, certificate file and key file of a server certificate for `name`."""
    ca = generate_ca("test CA")
    leaf = issue(ca, [name])
    paths = (tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key")
    for path, pem in zip(paths, (ca.cert_pem, leaf.cert_pem, leaf.key_pem), strict=True):
        path.write_bytes(pem)
    return paths


def _verifying(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_https_and_delay(tmp_path: Path) -> None:
    ca, cert, key = _issued(tmp_path, "web.ns.svc")
    port = free_port(HOST)
    runner = await start_echo(
        HOST, port, "web", "web-0", delay_ms=150, ssl_context=server_context(str(cert), str(key))
    )
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=_verifying(ca), server_hostname="web.ns.svc"
        )
        writer.write(b"GET /tls HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"X-Echo-Pod: web-0" in answer
        assert loop.time() - started >= 0.15
    finally:
        await runner.cleanup()


async def test_echo_command_serves_https(tmp_path: Path) -> None:
    ca, cert, key = _issued(tmp_path, "api.ns.svc")
    port = free_port(HOST)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "echo",
        f"--listen={HOST}:{port}",
        "--service=api",
        "--pod=api-7",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        "--delay-ms=10",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection(HOST, port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
        connector = aiohttp.TCPConnector(ssl=_verifying(ca))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://{HOST}:{port}/", server_hostname="api.ns.svc") as response,
        ):
            assert response.status == 200
            assert response.headers["X-Echo-Service"] == "api"
            assert response.headers["X-Echo-Pod"] == "api-7"
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tls-cert=/x.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-cert=/missing.crt", "--tls-key=/missing.key"], "--tls-cert/--tls-key:"),
        (["--delay-ms=-1"], "--delay-ms must not be negative"),
    ],
)
def test_echo_command_rejects(args: list[str], says: str) -> None:
    # A process of its own: the command configures the process's logging.
    result = subprocess.run(
        [sys.executable, "-m", "controller", "echo", "--listen=127.0.0.2:1", "--service=s", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert says in result.stderr
