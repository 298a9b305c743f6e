"""The publisher: versions compiled snapshots and delivers them to every worker.

It sits between the reconciler (which yields `CompileResult`s) and the workers' channels. Each new
snapshot gets the next version; a snapshot equal to the current one is skipped. When only
endpoint data changed (same routes, same certificates), workers get a small `EndpointsUpdate`
with the changed backends instead of the whole snapshot. A full snapshot is encoded once and the
same bytes go to every worker. Workers ACK or NACK each version; readiness means every live
worker has ACKed a snapshot and is listening. A worker's READY says what its request path runs
(compiled or the Python sources, and why): logged once per kind, as a warning when not compiled.
Its STATS (`proxy.channel.WorkerStats`) go to a `StatsSink` (`controller.metrics.WorkerTotals`),
which is told when a worker is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from proxy import native
from proxy.channel import (
    ChannelClosed,
    Message,
    MessageType,
    Reply,
    WorkerStats,
    read_message,
    send_message,
)
from proxy.config import (
    EndpointsUpdate,
    Snapshot,
    encode_endpoints_update,
    encode_snapshot,
)

logger = logging.getLogger("portico.publisher")


@dataclass(eq=False)
class WorkerLink:
    """The controller's end of one worker's channel and what that worker has confirmed."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    acked_version: int = 0
    listening: bool = False
    alive: bool = True
    # The version the worker will hold once it has applied everything sent so far; an endpoints
    # update is only valid on top of exactly that version.
    sent_version: int = 0
    # Set by a NACK: the worker holds an older generation, so the next send must be a whole
    # snapshot rather than an endpoints update on top of a version it does not have.
    needs_full: bool = False
    last_sent_update: bool = False
    # What the worker's request path runs, from its READY (proxy.native.report()): "compiled" or
    # "python", the reason and the detail; empty until then.
    build: dict[str, str] = field(default_factory=dict)
    # When anything last came from the worker (monotonic).
    last_seen: float = field(default_factory=time.monotonic)
    reader_task: asyncio.Task[None] | None = field(default=None, repr=False)


def changed_backends(old: Snapshot, new: Snapshot) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Keys of backends that differ between two snapshots: (changed or added, removed)."""
    old_map = old.backend_map()
    changed = []
    for backend in new.backends:
        previous = old_map.pop(backend.key, None)
        # `is` first: the incremental compiler reuses unchanged Backend objects.
        if previous is None or (previous is not backend and previous != backend):
            changed.append(backend.key)
    return tuple(changed), tuple(old_map)


class StatsSink(Protocol):
    """Where the workers' STATS go."""

    def update(self, link: WorkerLink, stats: WorkerStats) -> None: ...

    def retire(self, link: WorkerLink) -> None:
        """The worker is gone (detached): nothing more will come from it."""


class Publisher:
    def __init__(self, stats: StatsSink | None = None) -> None:
        self._links: list[WorkerLink] = []
        self._current: Snapshot | None = None
        # The current snapshot encoded, made only when some worker needs the whole snapshot:
        # at 10,000 Ingresses encoding takes far longer than an endpoints-only update.
        self._encoded: bytes | None = None
        self._version = 0
        self._stats = stats
        self.last_nacked = 0  # newest version some worker refused
        self._builds_logged: set[str] = set()
        self._changed = asyncio.Condition()

    @property
    def current(self) -> Snapshot | None:
        return self._current

    @property
    def version(self) -> int:
        return self._version

    @property
    def links(self) -> tuple[WorkerLink, ...]:
        return tuple(self._links)

    def stalled(self, limit: float) -> list[int]:
        """Indexes of listening workers that sent nothing for `limit` seconds."""
        now = time.monotonic()
        return [
            link.index
            for link in self._links
            if link.alive and link.listening and now - link.last_seen > limit
        ]

    def ready(self) -> bool:
        """Every live worker listens and has ACKed a snapshot (at least the first one)."""
        live = [link for link in self._links if link.alive]
        return bool(live) and all(link.listening and link.acked_version > 0 for link in live)

    async def publish(self, snapshot: Snapshot) -> int | None:
        """Send `snapshot` to every worker; returns its version, or None when nothing changed."""
        previous = self._current
        if previous is not None and replace(snapshot, version=previous.version) == previous:
            return None
        self._version += 1
        version = self._version
        snapshot = replace(snapshot, version=version)
        self._current = snapshot
        self._encoded = None
        update_bytes: bytes | None = None
        if (
            previous is not None
            and snapshot.routes == previous.routes
            and snapshot.certificates == previous.certificates
        ):
            changed, removed = changed_backends(previous, snapshot)
            by_key = snapshot.backend_map()
            update = EndpointsUpdate(
                base_version=previous.version,
                version=version,
                backends=tuple(by_key[k] for k in changed),
                removed=removed,
            )
            update_bytes = encode_endpoints_update(update)
        for link in list(self._links):
            if (
                update_bytes is not None
                and link.sent_version == version - 1
                and not link.needs_full
            ):
                await self._send(link, Message(MessageType.ENDPOINTS, update_bytes), version)
            else:
                await self._send(link, Message(MessageType.SNAPSHOT, self._full()), version)
        logger.info(
            "snapshot.published",
            extra={
                "version": version,
                "kind": "endpoints" if update_bytes is not None else "full",
                "bytes": len(update_bytes if update_bytes is not None else self._full()),
                "workers": len(self._links),
            },
        )
        return version

    async def attach(self, link: WorkerLink, settings_payload: bytes) -> None:
        """Start talking to a new worker: settings first, then the current snapshot if any."""
        self._links.append(link)
        await self._send(link, Message(MessageType.SETTINGS, settings_payload), link.sent_version)
        if self._current is not None:
            await self._send(link, Message(MessageType.SNAPSHOT, self._full()), self._version)
        link.reader_task = asyncio.create_task(self._read_replies(link))

    def detach(self, link: WorkerLink) -> None:
        if self._stats is not None:
            self._stats.retire(link)
        link.alive = False
        if link in self._links:
            self._links.remove(link)
        if link.reader_task is not None:
            link.reader_task.cancel()
        link.writer.close()

    async def drain_all(self) -> None:
        for link in list(self._links):
            await self._send(link, Message(MessageType.DRAIN), link.sent_version)

    def _full(self) -> bytes:
        if self._encoded is None:
            assert self._current is not None
            self._encoded = encode_snapshot(self._current)
        return self._encoded

    def applied(self, version: int) -> bool:
        """Every live worker listens and has ACKed `version` or a later one."""
        return self.ready() and all(
            link.acked_version >= version for link in self._links if link.alive
        )

    async def wait_applied(self, version: int) -> None:
        """Wait until every live worker serves `version` or later (e.g. before writing status)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.applied(version))

    async def wait_outcome(self, version: int) -> bool:
        """Wait until every live worker serves `version` or later (True), or one refused a
        version at least as new (False)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.applied(version) or self.last_nacked >= version
            )
        return self.applied(version)

    async def _send(self, link: WorkerLink, message: Message, version: int) -> None:
        if not link.alive:
            return
        try:
            await send_message(link.writer, message)
            link.sent_version = version
            if message.type is MessageType.SNAPSHOT:
                link.needs_full = False
            link.last_sent_update = message.type is MessageType.ENDPOINTS
        except (ConnectionError, OSError):
            link.alive = False
            logger.warning("worker.channel_lost", extra={"worker": link.index})

    async def _read_replies(self, link: WorkerLink) -> None:
        try:
            while True:
                message = await read_message(link.reader)
                link.last_seen = time.monotonic()
                if message.type is MessageType.STATS:
                    if self._stats is not None:
                        self._stats.update(link, WorkerStats.decode(message.payload))
                    continue
                if message.type is MessageType.ACK:
                    link.acked_version = max(
                        link.acked_version, Reply.decode(message.payload).version
                    )
                elif message.type is MessageType.READY:
                    link.listening = True
                    link.build = decode_build(message.payload)
                    logger.info("worker.ready", extra={"worker": link.index})
                    self._log_build(link)
                elif message.type is MessageType.NACK:
                    reply = Reply.decode(message.payload)
                    self.last_nacked = max(self.last_nacked, reply.version)
                    logger.error(
                        "snapshot.nacked",
                        extra={
                            "worker": link.index,
                            "version": reply.version,
                            "reason": reply.reason,
                        },
                    )
                    # The worker kept its previous generation, so updates on top of the refused
                    # version cannot apply: resend the whole current snapshot when an update was
                    # refused (a refused whole snapshot would only be refused again).
                    link.needs_full = True
                    if reply.version == self._version and link.last_sent_update:
                        await self._send(
                            link, Message(MessageType.SNAPSHOT, self._full()), self._version
                        )
                await self._notify()
        except ChannelClosed:
            link.alive = False
            await self._notify()

    def _log_build(self, link: WorkerLink) -> None:
        """Say once per kind of build what the workers run: a WARNING when it is the plain
        Python sources (about half the requests per second), unless PORTICO_PURE_PYTHON asked."""
        state = link.build.get("state")
        if state is None or state in self._builds_logged:
            return
        self._builds_logged.add(state)
        reason = link.build.get("reason", "")
        extra: dict[str, object] = {"worker": link.index, **link.build}
        if link.build.get("request_path") == "compiled" or reason == native.REQUESTED:
            logger.info("worker.request_path", extra=extra)
            return
        extra["effect"] = "about half the requests per second of the compiled request path"
        extra["fix"] = native.ADVICE.get(reason, "reinstall Portico")
        logger.warning("worker.request_path_not_compiled", extra=extra)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def decode_build(payload: bytes) -> dict[str, str]:
    """A READY payload (proxy.native.report()); empty when the worker sent none."""
    try:
        raw = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
