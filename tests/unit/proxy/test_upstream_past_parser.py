"""Content-Length bodies read past the parser: same bytes out, exact framing, strict ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fakes import CLIENT, REQUEST, RecordingTransport, build

BODY = bytes(range(256)) * 300  # 76800 bytes


def _head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (len(BODY), extra)
    )


def _setup() -> tuple[Any, Any, RecordingTransport]:
    rec = RecordingTransport(CLIENT)
    down, up = build(asyncio.get_running_loop(), client=rec)
    return down, up, rec


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1 << 20, 65536, 9000, 1000])
async def test_body_bytes_and_reuse_do_not_depend_on_read_sizes(size: int) -> None:
    down, up, rec = _setup()
    for _ in range(3):
        rec.data.clear()
        down.data_received(REQUEST)
        for piece in _split(_head() + BODY, size):
            up.data_received(piece)
        out = bytes(rec.data)
        head, _, body = out.partition(b"\r\n\r\n")
        assert body == BODY
        assert b"Content-Length: 76800" in head
        assert up.exchange is None and down.active is None
        assert not up.closed  # back in the pool, reused by the next round
        assert up.remaining == 0


async def test_connection_close_from_the_pod_is_not_pooled() -> None:
    down, up, rec = _setup()
    down.data_received(REQUEST)
    for piece in _split(_head(b"Connection: close\r\n") + BODY, 20000):
        up.data_received(piece)
    assert rec.data.endswith(BODY)
    assert up.closed


async def test_bytes_past_the_body_close_the_connection() -> None:
    down, up, rec = _setup()
    down.data_received(REQUEST)
    pieces = _split(_head() + BODY, 30000)
    pieces[-1] += b"HTTP/1.1 200 OK\r\n"  # nobody asked for this
    for piece in pieces:
        up.data_received(piece)
    assert rec.data.endswith(BODY)
    assert down.active is None
    assert up.closed


async def test_pod_closing_mid_body_cuts_the_client() -> None:
    down, up, _rec = _setup()
    down.data_received(REQUEST)
    data = _head() + BODY
    up.data_received(data[:20000])
    up.data_received(data[20000:40000])
    assert up.remaining > 0
    up.connection_lost(None)
    assert down.closing  # aborted: the client must not take a short body for a whole one
