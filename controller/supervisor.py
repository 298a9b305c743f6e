"""The supervisor: runs `portico serve`: source, publisher, workers and admin server.

The controller process never serves traffic itself. It starts `--workers` worker processes
(`python -m proxy.worker`), each with its own socketpair channel, feeds every compiled snapshot
to them through the publisher, replaces a worker that dies (with backoff; the replacement gets
the current snapshot before it binds), and on SIGTERM/SIGINT fails `/readyz` at once, keeps the
listeners open for `shutdown_delay`, then tells the workers to drain and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path

from controller.admin import AdminState, start_admin
from controller.capacity import MIB, worker_plan
from controller.compiler import CompileResult
from controller.compiler.tls import check_validity, load_pem_pair
from controller.publisher import Publisher, WorkerLink
from controller.reconciler import manifest_results
from controller.settings import Settings
from proxy.config import TLSCertificate
from proxy.worker import command as worker_command

# What a source hands the supervisor: the stream of compile results, and an optional task that
# runs beside the data plane with access to the publisher (cluster mode writes Ingress status).
Results = AsyncIterator[CompileResult]
Companion = Callable[[Publisher], Coroutine[None, None, None]]

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

    async def start(self, count: int) -> None:
        for index in range(count):
            await self._spawn(index)
            self._watchers.append(asyncio.create_task(self._watch(index)))

    async def _spawn(self, index: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(child.fileno(), os.getpid(), index, self._log_level),
                pass_fds=(child.fileno(),),
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


async def serve(settings: Settings) -> int:
    """`portico serve`: the data plane on a manifest directory until SIGTERM/SIGINT."""
    if settings.manifests is None:
        logger.error("serve.no_source", extra={"reason": "portico serve needs --manifests DIR"})
        return 2
    results: Results = manifest_results(settings.manifests, settings.compile_settings())
    if settings.default_certificate_file and settings.default_certificate_key_file:
        loaded = load_certificate_files(
            settings.default_certificate_file, settings.default_certificate_key_file
        )
        if isinstance(loaded, str):
            logger.error("serve.default_certificate_invalid", extra={"reason": loaded})
            return 2
        results = with_default_certificate(results, loaded)
    return await supervise(settings, results)


DEFAULT_CERTIFICATE_FILE_NAME = "portico/default-certificate-file"


def load_certificate_files(cert_file: Path, key_file: Path) -> TLSCertificate | str:
    """The default certificate from a PEM file pair, or why it cannot be used.

    Read once at start: renewing these files takes a restart (a Secret in the manifest
    directory, named by --default-certificate, is picked up live instead).
    """
    source = f"default certificate files {cert_file}, {key_file}"
    try:
        cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    except OSError as exc:
        return f"{source}: {exc.strerror}: {exc.filename}"
    loaded = load_pem_pair(cert_pem, key_pem, DEFAULT_CERTIFICATE_FILE_NAME, source)
    if isinstance(loaded, str):
        return loaded
    invalid = check_validity(loaded, datetime.datetime.now(datetime.UTC), source)
    return invalid if invalid else loaded.certificate


async def with_default_certificate(results: Results, certificate: TLSCertificate) -> Results:
    """Each result's snapshot with `certificate` as its default certificate."""
    async for result in results:
        snapshot = result.snapshot
        certificates = tuple(sorted((*snapshot.certificates, certificate), key=lambda c: c.name))
        snapshot = dataclasses.replace(
            snapshot, certificates=certificates, default_certificate=certificate.name
        )
        yield dataclasses.replace(result, snapshot=snapshot)


async def supervise(
    settings: Settings,
    results: Results,
    companion: Companion | None = None,
    blocked: Callable[[], Sequence[str]] | None = None,
) -> int:
    """Run workers, publisher and admin server on a stream of compile results until a signal.

    Returns the process exit code. The stream should never end; if it fails, the workers keep
    serving the last snapshot until the process is told to stop.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    publisher = Publisher()
    state = AdminState(
        publisher,
        ingress_nginx_names=settings.metrics_ingress_nginx_names,
        ingress_class=settings.ingress_class,
        controller_name=settings.controller_name,
    )
    proxy_settings = settings.proxy_settings()
    # One per CPU of the cgroup's quota, capped by what its memory limit holds (a warning then).
    plan = worker_plan(settings.workers)
    count = plan.count
    state.workers_expected = count
    if blocked is not None:
        state.blocked = blocked
    admin = await start_admin(
        state, lambda: not loop.is_closed(), settings.admin_address, settings.admin_port
    )
    workers = WorkerSet(publisher, proxy_settings.to_json(), settings.log_level)
    await workers.start(count)
    logger.info(
        "serve.started",
        extra={
            "workers": count,
            "workers_by_cpu": plan.by_cpu,
            "memory_limit_mib": None if plan.memory_limit is None else plan.memory_limit // MIB,
            "http_port": proxy_settings.http_port,
        },
    )

    async def publish_results() -> None:
        async for result in results:
            state.set_problems(result.problems)
            started = time.monotonic()
            version = await publisher.publish(result.snapshot)
            if version is not None:
                # Timed from publication to the last worker's ACK (not the compile before it).
                state.applies.track(publisher, version, started)

    tasks: list[asyncio.Task[object]] = [asyncio.create_task(publish_results())]
    if companion is not None:
        tasks.append(asyncio.create_task(companion(publisher)))
    stopped: asyncio.Task[object] = asyncio.create_task(stop.wait())
    pending: set[asyncio.Task[object]] = set(tasks)
    while not stopped.done():
        done, pending = await asyncio.wait(pending | {stopped}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stopped)
        for task in done - {stopped}:
            if not task.cancelled() and task.exception() is not None:
                # Keep serving the last snapshot rather than taking traffic down with the source.
                logger.error("source.failed", extra={"reason": repr(task.exception())})
        if not pending:
            await stopped

    state.shutting_down = True
    logger.info("shutdown.started", extra={"delay": proxy_settings.shutdown_delay})
    await asyncio.sleep(proxy_settings.shutdown_delay)
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await publisher.drain_all()
    await workers.stop(proxy_settings.drain_timeout + 5)
    await admin.cleanup()
    state.applies.stop()
    logger.info("shutdown.finished")
    return 0
