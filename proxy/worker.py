"""Worker process entry: one uvloop event loop serving traffic from the snapshots it is sent.

Started by the controller's supervisor as
`python -m proxy.worker --channel-fd N --index I --parent-pid P` with one end of a socketpair
(and `--limits-fd F`, the rate-limit counters shared by all workers: proxy/ratelimit.py).
The worker reads its settings, waits for its first snapshot, applies it, and only then binds
its own `SO_REUSEPORT` listeners, so it never accepts a connection it cannot route. Every later
snapshot or endpoints update is applied and ACKed (or NACKed, keeping the last good
generation). `DRAIN` starts a graceful shutdown; if the channel breaks the worker keeps serving
its last snapshot (it still dies with its parent, through PR_SET_PDEATHSIG).

Signals: the supervisor runs the shutdown (readiness off, the shutdown delay, then `DRAIN`), so
a SIGTERM or SIGINT that reaches the whole process group (a terminal, `timeout`, an init that
signals the group) is left to it: the worker keeps serving through the delay. SIGTERM stops the
worker only once its parent is gone (PR_SET_PDEATHSIG sends it then). A worker whose parent
died before it could arm that signal (`--parent-pid` no longer its parent) exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from proxy import native
from proxy.channel import (
    ChannelClosed,
    Message,
    MessageType,
    Reply,
    read_message,
    send_message,
)
from proxy.config import SnapshotError, decode_endpoints_update, decode_snapshot
from proxy.logs import configure_logging
from proxy.ratelimit import attach as attach_limits
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

logger = logging.getLogger("portico.worker")

_PR_SET_PDEATHSIG = 1
STATS_INTERVAL = 1.0  # seconds between STATS messages


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the controller dies, so no orphan holds the ports."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the channel EOF is all we get
        pass


def listener_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listening socket with SO_REUSEPORT, so every worker binds its own."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Worker:
    def __init__(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parent: int | None = None,
    ) -> None:
        self.index = index
        self._reader = reader
        self._writer = writer
        self._server: ProxyServer | None = None
        self._settings = ProxySettings()
        self._listening = False
        self._stop = asyncio.Event()
        # The supervisor's pid: a SIGTERM while it lives is its business (see _on_sigterm).
        self._parent = os.getppid() if parent is None else parent

    def _on_sigterm(self) -> None:
        if os.getppid() == self._parent:
            # A signal to the whole group while the supervisor lives: it sends DRAIN after its
            # shutdown delay; stopping now would close the listeners during that delay.
            logger.info("worker.sigterm_left_to_supervisor", extra={"worker": self.index})
            return
        self._stop.set()  # the parent died (PR_SET_PDEATHSIG): nobody else will stop us

    async def run(self) -> int:
        first = await read_message(self._reader)
        if first.type is not MessageType.SETTINGS:
            logger.error("worker.protocol_error", extra={"got": first.type.name})
            return 2
        self._settings = ProxySettings.from_json(first.payload)
        self._server = ProxyServer(self._settings)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        # SIGINT from a terminal reaches the whole process group; the supervisor coordinates the
        # shutdown and tells us through DRAIN.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        channel = asyncio.create_task(self._serve_channel())
        heartbeat = asyncio.create_task(self._report_stats())
        await self._stop.wait()
        channel.cancel()
        heartbeat.cancel()
        logger.info("worker.draining", extra={"worker": self.index})
        if self._listening:
            await self._server.shutdown(self._settings.drain_timeout)
        logger.info("worker.stopped", extra={"worker": self.index})
        return 0

    async def _report_stats(self) -> None:
        """Send the server's counters every second once listening; also the loop's heartbeat."""
        assert self._server is not None
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if not self._listening:
                continue
            payload = self._server.worker_stats().encode()
            try:
                await send_message(self._writer, Message(MessageType.STATS, payload))
            except (ConnectionError, OSError):
                return  # the channel is gone; keep serving, as without a controller

    async def _serve_channel(self) -> None:
        try:
            while True:
                message = await read_message(self._reader)
                if message.type is MessageType.DRAIN:
                    self._stop.set()
                    return
                if message.type in (MessageType.SNAPSHOT, MessageType.ENDPOINTS):
                    await self._apply(message)
        except ChannelClosed:
            if not self._listening:
                self._stop.set()  # never configured: nothing to keep serving
            else:
                logger.warning("worker.channel_lost", extra={"worker": self.index})

    async def _apply(self, message: Message) -> None:
        assert self._server is not None
        version = -1
        try:
            if message.type is MessageType.SNAPSHOT:
                snapshot = decode_snapshot(message.payload)
                version = snapshot.version
                self._server.apply(snapshot)
            else:
                update = decode_endpoints_update(message.payload)
                version = update.version
                self._server.apply_endpoints(update)
        except (SnapshotError, ValueError) as exc:
            logger.error(
                "snapshot.rejected",
                extra={"worker": self.index, "version": version, "reason": str(exc)},
            )
            await send_message(
                self._writer, Message(MessageType.NACK, Reply(version, str(exc)).encode())
            )
            return
        await send_message(self._writer, Message(MessageType.ACK, Reply(version).encode()))
        if not self._listening:
            await self._listen()
            # READY carries what this process's request path runs (compiled, or why not): the
            # controller reports what the workers really run, not what it runs itself.
            ready = json.dumps(native.report()).encode()
            await send_message(self._writer, Message(MessageType.READY, ready))

    async def _listen(self) -> None:
        assert self._server is not None
        settings = self._settings
        http = (
            listener_socket(settings.bind_address, settings.http_port)
            if settings.http_port
            else None
        )
        https = (
            listener_socket(settings.bind_address, settings.https_port)
            if settings.https_port
            else None
        )
        # The HTTPS listener's TLS state (self-signed default certificate, contexts for the
        # current snapshot) is built here, once, before the first handshake.
        await self._server.start(http_sock=http, http=http is not None, https_sock=https)
        self._listening = True
        logger.info(
            "worker.listening",
            extra={
                "worker": self.index,
                "address": settings.bind_address,
                "http_port": settings.http_port,
                "https_port": settings.https_port,
                **native.report(),  # compiled, or python and why the sources run
            },
        )


async def _main(fd: int, index: int, parent: int | None = None) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        return await Worker(index, reader, writer, parent).run()
    except ChannelClosed:
        return 0


def command(
    channel_fd: int,
    parent_pid: int,
    index: int = 0,
    log_level: str = "info",
    limits_fd: int = -1,
) -> list[str]:
    """The command line that starts a worker on `channel_fd` for the supervisor `parent_pid`
    (`limits_fd`: the shared rate-limit segment, -1 none)."""
    limits = ["--limits-fd", str(limits_fd)] if limits_fd >= 0 else []
    return [
        sys.executable,
        "-m",
        "proxy.worker",
        "--channel-fd",
        str(channel_fd),
        "--index",
        str(index),
        "--log-level",
        log_level,
        "--parent-pid",
        str(parent_pid),
        *limits,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portico-worker")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default=os.environ.get("PORTICO_LOG_LEVEL", "info"))
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--limits-fd", type=int, default=-1)
    args = parser.parse_args(argv)
    if args.limits_fd >= 0:
        # Before any snapshot builds a rate-limit step: they all count in the shared segment.
        attach_limits(args.limits_fd)
    _die_with_parent()
    configure_logging(args.log_level)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        # The supervisor died before the death signal was armed: no signal will come, and an
        # orphan would keep serving (and holding the ports) with SIGTERM left to nobody.
        logger.warning("worker.orphaned", extra={"index": args.index, "parent": args.parent_pid})
        return 0
    import uvloop

    return uvloop.run(_main(args.channel_fd, args.index, args.parent_pid))


if __name__ == "__main__":
    sys.exit(main())
