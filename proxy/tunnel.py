"""Byte pump between a client and a pod after `101 Switching Protocols` (WebSocket and others).

Both transports get a `_Side` protocol (`transport.set_protocol`): whatever one side reads is
written to the other, a full write buffer on one side pauses reading on the other, a half close
is passed on, and a close on either side closes both. The tunnel has its own idle timeout
(ProxySettings.tunnel_idle_timeout), checked by the server's timer sweep; it registers itself
with the worker's `Connections` (shutdown waits for it) while open.
"""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.connections import Connections


class _Side(asyncio.Protocol):
    __slots__ = ("eof", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.BaseTransport) -> None:
        self.tunnel = tunnel
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.peer: _Side | None = None
        self.eof = False

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.write(data)
        self.tunnel.touch()

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if peer is None or peer.eof or not peer.transport.can_write_eof():
            self.tunnel.close()
            return False
        peer.transport.write_eof()
        return True  # keep the other direction open (half close)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    __slots__ = ("client", "closed", "connections", "deadline", "idle_timeout", "loop", "upstream")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        connections: Connections,
        client: asyncio.BaseTransport,
        upstream: asyncio.BaseTransport,
    ) -> None:
        self.connections = connections
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.closed = False
        self.client = _Side(self, client)
        self.upstream = _Side(self, upstream)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        client.set_protocol(self.client)
        upstream.set_protocol(self.upstream)
        self.deadline = 0.0
        self.touch()
        connections.tunnel_opened(self)
        # The client transport may be paused (it was waiting for the upgrade's answer).
        self.client.transport.resume_reading()
        self.upstream.transport.resume_reading()

    def touch(self) -> None:
        self.deadline = self.loop.time() + self.idle_timeout

    def timeout(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = 0.0
        self.connections.tunnel_closed(self)
        self.client.transport.close()
        self.upstream.transport.close()
