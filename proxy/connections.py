"""The client connections and tunnels one worker holds: admission, release, drain.

Each accepted client connection asks `admit` (refused past `max_connections`, or once the
worker drains) and calls `release` when it ends or becomes a tunnel; tunnels register
themselves the same way. The server sweeps both sets for expired deadlines and, on shutdown,
waits for them to empty (`drained`) before cutting what is left.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from proxy.telemetry import ServerStats


class Timed(Protocol):
    """Something the server's timer sweep checks: its deadline (0.0: none) and what to do
    when it passes."""

    @property
    def deadline(self) -> float: ...

    def timeout(self) -> None: ...


class Client(Timed, Protocol):
    """A client connection as the server sees it at shutdown."""

    def drain(self) -> None: ...

    def abort(self) -> None: ...


class Pipe(Timed, Protocol):
    """A tunnel as the server sees it at shutdown."""

    def close(self) -> None: ...


class Connections:
    __slots__ = ("_drained", "clients", "draining", "max_connections", "stats", "tunnels")

    def __init__(self, max_connections: int, stats: ServerStats) -> None:
        self.max_connections = max_connections
        self.stats = stats
        self.clients: set[Client] = set()
        self.tunnels: set[Pipe] = set()
        # Set once shutdown starts: no new connection, no keep-alive after the current answer.
        self.draining = False
        self._drained: asyncio.Event | None = None  # set during shutdown

    def admit(self, client: Client) -> bool:
        if len(self.clients) >= self.max_connections or self.draining:
            self.stats.connections_refused += 1
            return False
        self.clients.add(client)
        self.stats.connections_total += 1
        return True

    def release(self, client: Client) -> None:
        self.clients.discard(client)
        if self._drained is not None:
            self._check_drained()

    def tunnel_opened(self, tunnel: Pipe) -> None:
        self.tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: Pipe) -> None:
        self.tunnels.discard(tunnel)
        if self._drained is not None:
            self._check_drained()

    def drain(self) -> asyncio.Event:
        """Start draining: refuse new connections, close idle ones; the event is set once no
        connection or tunnel is left."""
        self.draining = True
        for client in list(self.clients):
            client.drain()
        self._drained = asyncio.Event()
        self._check_drained()
        return self._drained

    def _check_drained(self) -> None:
        if self._drained is not None and not self.clients and not self.tunnels:
            self._drained.set()
