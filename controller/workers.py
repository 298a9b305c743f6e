"""The worker processes: spawned, watched and replaced, each with its own channel.

The controller process never serves traffic itself. `WorkerSet` starts `--workers` worker
processes (`python -m proxy.worker`), each with its own socketpair channel that it hands to the
publisher (settings first, then the current snapshot), and replaces a worker that dies, with
backoff; the replacement gets the current snapshot before it binds. Every worker inherits the
same rate-limit segment (proxy/ratelimit.py), so limits hold for the whole proxy and survive a
worker's replacement. On shutdown it waits for the
drained workers to exit and kills what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from controller.publisher import Publisher, WorkerLink
from proxy.ratelimit import Counters, create_segment
from proxy.worker import command as worker_command

logger = logging.getLogger("portico.supervisor")

_RESTART_BACKOFF_MAX = 10.0
_STABLE_AFTER = 30.0  # a worker that lived this long resets the restart backoff


class WorkerSet:
    """Spawns, watches and replaces the worker processes."""

    def __init__(self, publisher: Publisher, settings_payload: bytes, log_level: str) -> None:
        self._publisher = publisher
        self._payload = settings_payload
        self._log_level = log_level
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._links: dict[int, WorkerLink] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self.stopping = False
        # The rate-limit counters all workers share (a memfd, inherited: pass_fds).
        self._limits_fd = create_segment()

    async def start(self, count: int) -> None:
        for index in range(count):
            await self._spawn(index)
            self._watchers.append(asyncio.create_task(self._watch(index)))

    async def _spawn(self, index: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(
                    child.fileno(), os.getpid(), index, self._log_level, self._limits_fd
                ),
                pass_fds=(child.fileno(), self._limits_fd),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        self._processes[index] = process
        link = WorkerLink(index=index, reader=reader, writer=writer)
        self._links[index] = link
        await self._publisher.attach(link, self._payload)
        logger.info("worker.started", extra={"worker": index, "pid": process.pid})

    async def _watch(self, index: int) -> None:
        backoff = 0.5
        while True:
            process = self._processes[index]
            started = time.monotonic()
            code = await process.wait()
            link = self._links.pop(index, None)
            if link is not None:
                self._publisher.detach(link)
            if self.stopping:
                return
            logger.error("worker.exited", extra={"worker": index, "code": code})
            # Its requests in progress are never given back: counted, they would refuse their
            # clients (limit-connections) until the controller restarts.
            Counters(self._limits_fd).forget_in_progress()
            if time.monotonic() - started > _STABLE_AFTER:
                backoff = 0.5
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RESTART_BACKOFF_MAX)
            if self.stopping:
                return
            await self._spawn(index)

    async def stop(self, grace: float) -> None:
        """Wait up to `grace` seconds for drained workers to exit, then kill the rest."""
        self.stopping = True
        processes = list(self._processes.values())
        waits = [asyncio.create_task(p.wait()) for p in processes]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for process in processes:
                if process.returncode is None:
                    logger.warning("worker.killed", extra={"pid": process.pid})
                    process.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for watcher in self._watchers:
            watcher.cancel()
        if self._limits_fd >= 0:
            os.close(self._limits_fd)
            self._limits_fd = -1
