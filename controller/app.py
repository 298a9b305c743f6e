"""The composition root: the controller built from `Settings` and a source, and run.

Both commands that serve come here and differ only in their source of objects:
`portico serve --manifests DIR` (`run_manifests`: a `ManifestSource` polling a directory) and
`portico controller` (`run_cluster`: the informers of `controller/kube/`, the API edge, feeding a
`ClusterSource`). Everything else is built here, once, the same way for both:

    source --events--> Reconciler(Store, Compiler) --CompileResult--> Publisher <--> workers
                                                          (snapshots, DRAIN; ACK, READY, STATS)
    AdminState (/healthz, /readyz, /metrics) <-- WorkerTotals <-- STATS --'

Cluster mode adds, beside the data plane, leader election and, while leading, the Ingress
status writer and the Event recorder; every replica serves traffic from its own watches whether
it leads or not, and when the API server is unreachable the informers retry while the workers
keep the last snapshot. The controller process never serves traffic itself (`WorkerSet` runs the
workers). On SIGTERM/SIGINT `/readyz` fails at once, the listeners stay open for
`shutdown_delay`, then the workers drain and the leader releases its Lease.

The ingress-nginx controller ConfigMap (`--nginx-configmap`, `ConfigMapSettings`) is read before
the workers start, so they start with its values: from the manifest directory by `portico
serve`, with one list by `portico controller`, which then watches it by name. A change of it
applies at once where the compiler is concerned (ssl-redirect, global access control: the
reconciler recompiles with the new compile settings); the workers' settings (limits, timeouts,
TLS, forwarded headers, logging) are read by each worker when it starts, so a change of those
is logged as waiting for a restart of the pod (`configmap.restart_required`, naming them), and
they apply to the pods the next rollout starts. Its problems (keys without effect) are the
reconciler's source problems, reported like the compiler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Final

from controller.admin import AdminState, start_admin
from controller.capacity import MIB, worker_plan
from controller.compiler import Compiler, CompileResult, CompileSettings, Problem
from controller.configmap import Reading, compile_settings, from_directory, overlay, read, split_ref
from controller.events import EventRecorder
from controller.files import ManifestSource, load_certificate_files
from controller.kube import ApiError
from controller.kube.client import (
    CONFIG_MAPS,
    SECRETS,
    SERVICES,
    ConfigError,
    KubeApi,
    Resource,
    open_api,
)
from controller.kube.objects import ReferenceIndex, WatchedConfigMap
from controller.kube.watching import (
    ChangeSink,
    ClusterSource,
    Informer,
    Watched,
    build_informers,
    build_named_informers,
    keep_running,
)
from controller.leader import LeaderElector
from controller.metrics import WorkerTotals
from controller.publisher import Publisher
from controller.reconciler import Reconciler
from controller.settings import PROXY_FIELDS, Settings
from controller.status import LbAddress, PublishedService, StatusWriter, lb_status
from controller.store import Store
from controller.workers import WorkerSet
from proxy.config import TLSCertificate

# What a source hands the data plane: the stream of compile results, and an optional task that
# runs beside it with access to the publisher (cluster mode writes Ingress status).
Results = AsyncIterator[CompileResult]
Companion = Callable[[Publisher], Coroutine[None, None, None]]

logger = logging.getLogger("portico.supervisor")
cluster_logger = logging.getLogger("portico.controller")


def build_reconciler(settings: CompileSettings) -> tuple[Store, Reconciler]:
    """The store and the reconciler (with its compiler) that every source feeds."""
    store = Store()
    return store, Reconciler(store, Compiler(settings))


# Settings the workers read when they start (and how many there are): a ConfigMap change of one
# of them waits for the next start of the pod.
RESTART_FIELDS: Final = (*PROXY_FIELDS, "workers")
CONFIGMAP_PROBLEMS: Final = "configmap"  # the reconciler's origin of the ConfigMap's problems


class ConfigMapSettings:
    """The settings as flags, PORTICO_* variables and the ingress-nginx ConfigMap make them.

    `update(data)` takes each version of the ConfigMap (None: it does not exist): the
    reconciler gets the new compile settings (it recompiles if they changed) and the
    ConfigMap's problems; `effective` is the settings now. Once `started` holds the settings
    the workers run with, a version that changes one of those is logged: it waits for a
    restart of the pod.
    """

    def __init__(self, base: Settings, reconciler: Reconciler) -> None:
        assert base.nginx_configmap is not None
        self.base = base
        self.ref = base.nginx_configmap
        self.reconciler = reconciler
        self._explicit = frozenset(base.model_fields_set)
        self.reading = Reading(self.ref, found=False)
        self.effective = base
        self.started: Settings | None = None
        self._pending: tuple[str, ...] = ()

    def update(self, data: Mapping[str, str] | None) -> None:
        reading = read(data, self.ref, self._explicit)
        effective = overlay(self.base, reading)
        self.reconciler.set_compile_settings(compile_settings(effective, reading))
        self.reconciler.set_source_problems(reading.problems(), origin=CONFIGMAP_PROBLEMS)
        changed = sorted(
            name
            for name in Settings.model_fields
            if getattr(effective, name) != getattr(self.effective, name)
        )
        if changed or reading.rows != self.reading.rows:
            logger.info(
                "configmap.read",
                extra={
                    "configmap": self.ref,
                    "found": reading.found,
                    "keys": len(reading.rows),
                    "applied": sorted(reading.values),
                    "changed": changed,
                },
            )
        self.reading, self.effective = reading, effective
        if self.started is not None:
            self._report_restart()

    def _report_restart(self) -> None:
        assert self.started is not None
        pending = tuple(
            name
            for name in RESTART_FIELDS
            if getattr(self.effective, name) != getattr(self.started, name)
        )
        if pending == self._pending:
            return
        self._pending = pending
        if pending:
            logger.warning(
                "configmap.restart_required",
                extra={
                    "configmap": self.ref,
                    "settings": list(pending),
                    "reason": "workers read these settings when they start: they apply once "
                    "the pods restart (kubectl rollout restart)",
                },
            )
        else:
            logger.info("configmap.restart_not_required", extra={"configmap": self.ref})


# ---- manifest mode -----------------------------------------------------------------------------


async def run_manifests(settings: Settings) -> int:
    """`portico serve`: the data plane on a manifest directory until SIGTERM/SIGINT."""
    if settings.manifests is None:
        logger.error("serve.no_source", extra={"reason": "portico serve needs --manifests DIR"})
        return 2
    directory = settings.manifests
    problems: tuple[Problem, ...] = ()
    compiling = settings.compile_settings()
    # The ingress-nginx ConfigMap is read once, at start: the workers take its values then.
    settings, reading = await asyncio.to_thread(from_directory, settings, directory)
    if reading is not None:
        compiling = compile_settings(settings, reading)
        problems = reading.problems()
        logger.info(
            "configmap.read",
            extra={
                "configmap": reading.ref,
                "found": reading.found,
                "keys": len(reading.rows),
                "applied": sorted(reading.values),
                "reread": "at the next start of portico serve",
            },
        )
    results: Results = manifest_results(directory, compiling, problems)
    if settings.default_certificate_file and settings.default_certificate_key_file:
        loaded = load_certificate_files(
            settings.default_certificate_file, settings.default_certificate_key_file
        )
        if isinstance(loaded, str):
            logger.error("serve.default_certificate_invalid", extra={"reason": loaded})
            return 2
        results = with_default_certificate(results, loaded)
    return await run(settings, results)


async def manifest_results(
    directory: Path, settings: CompileSettings, configmap_problems: tuple[Problem, ...] = ()
) -> AsyncGenerator[CompileResult, None]:
    """Compile results of a watched manifest directory: the first after the initial read,
    then one per effective change. File problems (and the ingress-nginx ConfigMap's) are
    merged into `CompileResult.problems`."""
    if not await asyncio.to_thread(directory.is_dir):
        raise NotADirectoryError(f"manifest directory {directory} does not exist")
    _, reconciler = build_reconciler(settings)
    reconciler.set_source_problems(configmap_problems, origin=CONFIGMAP_PROBLEMS)
    source = ManifestSource(directory)
    watching = asyncio.create_task(source.watch(reconciler), name="manifest-watch")

    def _done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            logger.error("manifests.watch_failed", extra={"reason": repr(exc)})
            reconciler.fail(exc)

    watching.add_done_callback(_done)
    try:
        async for result in reconciler.results():
            yield result
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def with_default_certificate(results: Results, certificate: TLSCertificate) -> Results:
    """Each result's snapshot with `certificate` as its default certificate."""
    async for result in results:
        snapshot = result.snapshot
        certificates = tuple(sorted((*snapshot.certificates, certificate), key=lambda c: c.name))
        snapshot = dataclasses.replace(
            snapshot, certificates=certificates, default_certificate=certificate.name
        )
        yield dataclasses.replace(result, snapshot=snapshot)


# ---- cluster mode ------------------------------------------------------------------------------


async def run_cluster(settings: Settings) -> int:
    """`portico controller`: cluster mode until SIGTERM/SIGINT; returns the exit code."""
    try:
        api = await open_api(settings.kubeconfig, f"portico ({settings.pod_name})")
    except (ConfigError, OSError, ValueError) as exc:
        cluster_logger.error("controller.config_failed", extra={"reason": str(exc)})
        return 2
    try:
        cluster = ClusterMode(api, settings)
        # Before the workers start, so that they start with the ConfigMap's values.
        settings = await cluster.read_configmap()
        cluster_logger.info(
            "controller.started",
            extra={
                "identity": settings.pod_name,
                "namespaces": list(settings.watch_namespaces) or "all",
                "lease": f"{settings.election_namespace}/{settings.election_id}",
            },
        )
        return await run(settings, cluster.results(), cluster.companion, cluster.blocked_reasons)
    finally:
        await api.close()


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them, whatever they end with."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class ClusterMode:
    """Everything cluster mode adds to the data plane, built from the settings: the informers
    feeding the reconciler, the status writer, the Event recorder and the leader elector.
    `results()` and `companion()` are what `run` takes."""

    def __init__(self, api: KubeApi, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.store, self.reconciler = build_reconciler(settings.compile_settings())
        self.references = ReferenceIndex()
        static = lb_status(LbAddress(ip, host) for ip, host in settings.publish_addresses())
        self.status = StatusWriter(api, static=static, max_retry_delay=settings.max_backoff)
        self.source = ClusterSource(
            self.reconciler,
            self.store,
            observers=(self.references.observe, self.status.observe_ingress),
        )
        self.informers = build_informers(
            api,
            self.source,
            settings.watch_namespaces,
            watch_timeout=settings.watch_timeout,
            max_backoff=settings.max_backoff,
        )
        # The default certificate may live outside the watched namespaces (a shared wildcard
        # certificate): then it is read by name, as the chart's RBAC grants it.
        named: list[tuple[Resource, str, str]] = []
        if settings.default_certificate:
            namespace, _, name = settings.default_certificate.partition("/")
            named.append((SECRETS, namespace, name))
        self.informers += build_named_informers(
            api,
            self.source,
            settings.watch_namespaces,
            named,
            watch_timeout=settings.watch_timeout,
            max_backoff=settings.max_backoff,
        )
        self.publish_informer: Informer | None = None
        service = settings.publish_service_ref()
        if service is not None and not static:
            namespace, name = service
            sink: ChangeSink = PublishedService(name, self.status.set_published)
            self.publish_informer = Informer(
                api,
                Watched(SERVICES, f"metadata.name={name}"),
                namespace,
                sink,
                watch_timeout=settings.watch_timeout,
                max_backoff=settings.max_backoff,
            )
        elif not static:
            cluster_logger.warning(
                "status.disabled",
                extra={
                    "reason": "neither --publish-service nor --publish-status-address is set: "
                    "Ingress status is not written"
                },
            )
        # The ingress-nginx ConfigMap: one object, listed and watched by name (the chart's RBAC
        # grants exactly that), wherever it lives.
        self.configmap: ConfigMapSettings | None = None
        self.configmap_informer: Informer | None = None
        if settings.nginx_configmap is not None:
            self.configmap = ConfigMapSettings(settings, self.reconciler)
            namespace, name = split_ref(settings.nginx_configmap)
            self.configmap_informer = Informer(
                api,
                Watched(CONFIG_MAPS, f"metadata.name={name}"),
                namespace,
                WatchedConfigMap(name, self.configmap.update, self.references.observe),
                watch_timeout=settings.watch_timeout,
                max_backoff=settings.max_backoff,
            )
        self.events = EventRecorder(api, self.references.get, instance=settings.pod_name)
        self.elector = LeaderElector(
            api,
            settings.election_namespace,
            settings.election_id,
            settings.pod_name,
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
        )
        self.elector.on_change(self.status.set_leader)
        if settings.events:
            self.elector.on_change(self.events.set_leader)

    async def read_configmap(self) -> Settings:
        """The settings once the ingress-nginx ConfigMap (if named) has been listed; if that
        fails, its informer keeps trying and a later version applies as any change does."""
        if self.configmap is None or self.configmap_informer is None:
            return self.settings
        try:
            await self.configmap_informer.list_once()
        except ApiError as exc:
            cluster_logger.warning(
                "configmap.unread",
                extra={"configmap": self.configmap.ref, "status": exc.status, "reason": str(exc)},
            )
            self.configmap_informer.resource_version = None
        self.configmap.started = self.configmap.effective
        return self.configmap.effective

    def blocked_reasons(self) -> list[str]:
        """Missing permissions right now (watches and status writes), for operators."""
        reasons = set(self.source.blocked_reasons())
        for informer in (self.publish_informer, self.configmap_informer):
            if informer is not None and informer.blocked:
                reasons.add(informer.blocked)
        if self.status.blocked:
            reasons.add(self.status.blocked)
        return sorted(reasons)

    async def results(self) -> AsyncIterator[CompileResult]:
        """Compile results: the first once every informer has listed, then one per change."""
        tasks = [
            asyncio.create_task(keep_running(i), name=f"watch-{i.name}") for i in self.informers
        ]
        if self.publish_informer is not None:
            tasks.append(
                asyncio.create_task(keep_running(self.publish_informer), name="watch-publish")
            )
        if self.configmap_informer is not None:
            tasks.append(
                asyncio.create_task(keep_running(self.configmap_informer), name="watch-configmap")
            )
        try:
            async for result in self.reconciler.results():
                # Before `run` publishes it: the status writer reads the publisher's version
                # right after, with no await in between (see StatusWriter.run).
                self.status.observe_result(result)
                self.events.observe(result.problems)
                yield result
        finally:
            await _stop(tasks)

    async def companion(self, publisher: Publisher) -> None:
        tasks = [
            asyncio.create_task(self.elector.run(), name="leader-election"),
            asyncio.create_task(self.status.run(publisher), name="status-writer"),
            asyncio.create_task(self._report_blocked(), name="blocked-report"),
        ]
        if self.settings.events:
            tasks.append(asyncio.create_task(self.events.run(), name="event-recorder"))
        try:
            await asyncio.gather(*tasks)
        finally:
            await _stop(tasks)
            # Best effort, on SIGTERM: let another replica take over without waiting.
            await asyncio.shield(self.elector.release())

    async def _report_blocked(self, interval: float = 60.0) -> None:
        """Repeat missing permissions while they last (each is also logged once when it starts)."""
        while True:
            await asyncio.sleep(interval)
            reasons = self.blocked_reasons()
            if reasons:
                cluster_logger.error("controller.blocked", extra={"missing": reasons})


# ---- the data plane, for either source ---------------------------------------------------------


async def run(
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

    totals = WorkerTotals()
    publisher = Publisher(totals)
    state = AdminState(
        publisher,
        totals,
        ingress_nginx_names=settings.metrics_ingress_nginx_names,
        # Labels take one value: Portico's own class and controller, the first of each list.
        ingress_class=settings.ingress_class[0],
        controller_name=settings.controller_name[0],
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
