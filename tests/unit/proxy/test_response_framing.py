"""Response heads towards the client keep their framing whatever the pod's Connection says."""

from __future__ import annotations

import asyncio

from tests.fakes import CLIENT, REQUEST, RecordingTransport, build


async def _relay(head: bytes, body: bytes) -> bytes:
    rec = RecordingTransport(CLIENT)
    down, up = build(asyncio.get_running_loop(), client=rec)
    down.data_received(REQUEST)
    up.data_received(head + body)
    return bytes(rec.data)


async def test_connection_naming_content_length_keeps_it() -> None:
    out = await _relay(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Drop: 1\r\n"
        b"Connection: content-length, x-drop\r\n\r\n",
        b"hello",
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head
    assert b"X-Drop" not in head
    assert body == b"hello"


async def test_fields_named_by_connection_are_dropped() -> None:
    out = await _relay(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-B: 2\r\nConnection: X-A\r\n\r\n",
        b"ok",
    )
    head = out.partition(b"\r\n\r\n")[0]
    assert b"X-A" not in head
    assert b"X-B: 2" in head
    assert b"Server: portico" in head
