"""The echo backend, `portico echo`: a stand-in pod for the demo, the tests and the conformance
runner (which import it from here: the product never imports the conformance package).

It answers any method and path with a JSON description of the request it received, as the proxy
forwarded it, so a test can check routing (`service`, `pod`) and forwarding (`host`, `path`,
`headers`, `body_bytes`) in one look. `?status=N` answers with status N, `?bytes=N` with N bytes
of payload, `?sleep_ms=N` answers N milliseconds late (upstream timeouts), each
`?response_header=Name: value` adds that response field (a Location, a Set-Cookie to rewrite),
and `GET /ws`
upgrades to a WebSocket that echoes every message. A backend can also be slow on every request
(`delay_ms`: a pod the least-request balancer should avoid) and serve HTTPS (an `ssl.SSLContext`:
HTTPS backends). Not on the hot path, so aiohttp.web is fine here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any, Final

from aiohttp import WSMsgType, web

logger = logging.getLogger(__name__)

_CHUNK: Final = 64 * 1024
_MAX_PAYLOAD: Final = 1 << 34  # a sanity bound for ?bytes=N
_NO_BODY: Final = frozenset({204, 304})
MAX_SLEEP_MS: Final = 60_000

SERVICE_KEY: Final = web.AppKey("service", str)
POD_KEY: Final = web.AppKey("pod", str)
DELAY_KEY: Final = web.AppKey("delay_ms", int)


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None


def _identity(request: web.Request) -> dict[str, str]:
    return {"X-Echo-Service": request.app[SERVICE_KEY], "X-Echo-Pod": request.app[POD_KEY]}


_TOKEN: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _response_fields(request: web.Request) -> list[tuple[str, str]]:
    """The identity fields plus each `?response_header=Name: value`, in order."""
    fields = list(_identity(request).items())
    for raw in request.query.getall("response_header", []):
        name, colon, value = raw.partition(":")
        value = value.strip(" \t")
        if not colon or not name or not set(name) <= _TOKEN or not value.isprintable():
            raise web.HTTPBadRequest(text='response_header must be "Name: value"\n')
        fields.append((name, value))
    return fields


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    ws.headers.update(_identity(request))
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def _handle(request: web.Request) -> web.StreamResponse:
    if request.path == "/ws" and web.WebSocketResponse().can_prepare(request).ok:
        return await _websocket(request)

    status = _int_query(request, "status") or 200
    if not 200 <= status <= 599:
        raise web.HTTPBadRequest(text="status must be between 200 and 599\n")
    size = _int_query(request, "bytes")
    if size is not None and not 0 <= size <= _MAX_PAYLOAD:
        raise web.HTTPBadRequest(text="bytes out of range\n")
    sleep_ms = _int_query(request, "sleep_ms") or 0
    if not 0 <= sleep_ms <= MAX_SLEEP_MS:
        raise web.HTTPBadRequest(text=f"sleep_ms must be between 0 and {MAX_SLEEP_MS}\n")

    # Read the whole body so keep-alive works and the client learns how much arrived.
    body_bytes = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        body_bytes += len(chunk)
    # Late answers are late before the head, which is what an upstream read timeout measures.
    delay_ms = request.app[DELAY_KEY] + sleep_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)

    headers = _response_fields(request)
    if size is not None and status not in _NO_BODY:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = size
        await response.prepare(request)
        block = b"x" * _CHUNK
        remaining = size
        while remaining > 0:
            piece = block if remaining >= _CHUNK else block[:remaining]
            await response.write(piece)
            remaining -= len(piece)
        await response.write_eof()
        return response

    if status in _NO_BODY:
        return web.Response(status=status, headers=headers)

    merged: dict[str, str] = {}
    for name, value in request.headers.items():
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    doc: dict[str, Any] = {
        "service": request.app[SERVICE_KEY],
        "pod": request.app[POD_KEY],
        "host": request.headers.get("Host"),
        "path": request.path,
        "query": request.query_string,
        "method": request.method,
        "headers": merged,
        "body_bytes": body_bytes,
    }
    return web.json_response(doc, status=status, headers=headers, dumps=json.dumps)


def make_app(service: str, pod: str, delay_ms: int = 0) -> web.Application:
    app = web.Application()
    app[SERVICE_KEY] = service
    app[POD_KEY] = pod
    app[DELAY_KEY] = delay_ms
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The TLS context of an HTTPS echo backend (PEM files; raises OSError or ssl.SSLError)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start_echo(
    host: str,
    port: int,
    service: str,
    pod: str,
    *,
    delay_ms: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Serve the echo app on host:port (HTTPS with `ssl_context`), every answer `delay_ms`
    late; the caller stops it with `await runner.cleanup()`."""
    app = make_app(service, pod, delay_ms)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    logger.info(
        "echo.started",
        extra={
            "address": f"{host}:{port}",
            "service": service,
            "pod": pod,
            "tls": ssl_context is not None,
            "delay_ms": delay_ms,
        },
    )
    return runner


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) -> (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host.strip("[]"), number


async def run_echo(
    host: str,
    port: int,
    service: str,
    pod: str,
    *,
    delay_ms: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until cancelled (the CLI entry: `portico echo`)."""
    runner = await start_echo(host, port, service, pod, delay_ms=delay_ms, ssl_context=ssl_context)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
