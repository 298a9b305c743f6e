"""A publisher's other ends, for unit tests: fake workers on real channels, and a bounded wait.

`connect` attaches a `FakeWorker` to a real `Publisher` over a socket pair; the worker records
every message and ACKs (or NACKs) each version, as a worker process does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from controller.publisher import Publisher, WorkerLink
from proxy.channel import Message, MessageType, Reply, read_message, send_message
from proxy.config import (
    Backend,
    Endpoint,
    PathRule,
    RouteTable,
    Snapshot,
    VirtualHost,
    decode_endpoints_update,
    decode_snapshot,
)


def make_snapshot(*endpoints: str, host: str = "a.example") -> Snapshot:
    """One route (`host`, /) to Service default/web, its pods at `endpoints` (port 8080)."""
    rule = PathRule("/", "prefix", "default/web/80", "default/web", "default/web", 80, "Prefix")
    routes = RouteTable((VirtualHost(host, (rule,)),))
    backend = Backend("default/web/80", tuple(Endpoint(ip, 8080) for ip in endpoints))
    return Snapshot(routes=routes, backends=(backend,))


class FakeWorker:
    """The worker end of a channel: records messages and ACKs (or NACKs) every version."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: list[Message] = []
        self.refuse: set[int] = set()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            message = await read_message(self.reader)
            self.messages.append(message)
            if message.type is MessageType.SNAPSHOT:
                version = decode_snapshot(message.payload).version
            elif message.type is MessageType.ENDPOINTS:
                version = decode_endpoints_update(message.payload).version
            else:
                continue
            if version in self.refuse:
                reply = Message(MessageType.NACK, Reply(version, "refused").encode())
            else:
                reply = Message(MessageType.ACK, Reply(version).encode())
            await send_message(self.writer, reply)
            await send_message(self.writer, Message(MessageType.READY))


async def connect(publisher: Publisher) -> tuple[WorkerLink, FakeWorker]:
    a, b = socket.socketpair()
    r1, w1 = await asyncio.open_unix_connection(sock=a)
    r2, w2 = await asyncio.open_unix_connection(sock=b)
    link = WorkerLink(index=0, reader=r1, writer=w1)
    worker = FakeWorker(r2, w2)
    await publisher.attach(link, b"{}")
    return link, worker


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until `predicate()` holds, at most `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
