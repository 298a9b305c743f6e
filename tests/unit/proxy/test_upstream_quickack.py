"""Upstream reads that leave a response body unfinished acknowledge at once (TCP_QUICKACK)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.fakes import REQUEST, build, response

QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


class RecordingSock:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.calls.append((level, name, value))


@pytest.mark.parametrize(
    ("kind", "whole", "want"),
    [
        ("small", False, 0),
        ("64k", False, 1),
        ("chunked", False, 1),
        ("64k", True, 0),  # head and whole body in one read: nothing left to acknowledge early
        ("chunked", True, 0),
    ],
)
async def test_quickack_while_a_body_is_unfinished(kind: str, whole: bool, want: int) -> None:
    import asyncio

    down, up = build(asyncio.get_running_loop())
    sock: Any = RecordingSock()
    up.sock = sock
    transport: Any = down.transport
    for _ in range(2):
        before = transport.written
        down.data_received(REQUEST)
        pieces = response(kind)
        for piece in [b"".join(pieces)] if whole else pieces:
            up.data_received(piece)
        assert up.exchange is None and down.active is None
        assert transport.written > before
    quick = [c for c in sock.calls if c[1] == QUICKACK]
    # Once per response with an unfinished body, after the read that held its head.
    assert len(quick) == 2 * want
