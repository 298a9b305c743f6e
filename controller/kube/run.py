"""`portico controller`: cluster mode wired through the supervisor.

Informers feed a `ClusterSource`, which feeds the same `Reconciler` and `Compiler` the manifest
mode uses; the reconciler's results go to `supervise` (workers, publisher, admin). Beside the
data plane, the companion task runs leader election and, while leading, the Ingress status
writer and the Event recorder. Every replica serves traffic from its own watches whether it leads
or not; when the API server is unreachable the informers retry and the workers keep the last
snapshot. On SIGTERM the supervisor drains the workers and the leader releases its Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from controller.compiler import Compiler, CompileResult
from controller.events import EventRecorder
from controller.kube.client import SECRETS, SERVICES, ConfigError, KubeApi, Resource, open_api
from controller.kube.objects import PublishedService, ReferenceIndex
from controller.kube.settings import ClusterSettings
from controller.kube.watching import (
    ChangeSink,
    ClusterSource,
    Informer,
    Watched,
    build_informers,
    build_named_informers,
)
from controller.leader import LeaderElector
from controller.publisher import Publisher
from controller.reconciler import Reconciler
from controller.settings import Settings
from controller.status import LbAddress as _LbAddress
from controller.status import StatusWriter, lb_status
from controller.store import Store
from controller.supervisor import supervise

logger = logging.getLogger(__name__)


async def _keep_running(informer: Informer) -> None:
    """An informer's loop never ends on its own; a bug in it must not stop the watch for good."""
    while True:
        try:
            await informer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception(
                "watch.crashed", extra={"informer": informer.name, "reason": repr(exc)}
            )
            informer.resource_version = None
            await asyncio.sleep(informer.backoff.next())


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them, whatever they end with."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class Cluster:
    """Everything cluster mode runs, built from the settings; `results()` and `companion()`
    are what `supervise` takes."""

    def __init__(self, api: KubeApi, settings: ClusterSettings, base: Settings) -> None:
        self.api = api
        self.settings = settings
        self.store = Store()
        self.reconciler = Reconciler(self.store, Compiler(base.compile_settings()))
        self.references = ReferenceIndex()
        static = lb_status(_LbAddress(ip, host) for ip, host in settings.publish_addresses())
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
        if base.default_certificate:
            namespace, _, name = base.default_certificate.partition("/")
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
            logger.warning(
                "status.disabled",
                extra={
                    "reason": "neither --publish-service nor --publish-status-address is set: "
                    "Ingress status is not written"
                },
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

    def blocked_reasons(self) -> list[str]:
        """Missing permissions right now (watches and status writes), for operators."""
        reasons = set(self.source.blocked_reasons())
        if self.publish_informer is not None and self.publish_informer.blocked:
            reasons.add(self.publish_informer.blocked)
        if self.status.blocked:
            reasons.add(self.status.blocked)
        return sorted(reasons)

    async def results(self) -> AsyncIterator[CompileResult]:
        """Compile results: the first once every informer has listed, then one per change."""
        tasks = [
            asyncio.create_task(_keep_running(i), name=f"watch-{i.name}") for i in self.informers
        ]
        if self.publish_informer is not None:
            tasks.append(
                asyncio.create_task(_keep_running(self.publish_informer), name="watch-publish")
            )
        try:
            async for result in self.reconciler.results():
                # Before the supervisor publishes it: the status writer reads the publisher's
                # version right after, with no await in between (see StatusWriter.run).
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
                logger.error("controller.blocked", extra={"missing": reasons})


async def run_controller(settings: ClusterSettings, base: Settings) -> int:
    """Run cluster mode until SIGTERM/SIGINT; returns the process exit code."""
    try:
        api = await open_api(settings.kubeconfig, f"portico ({settings.pod_name})")
    except (ConfigError, OSError, ValueError) as exc:
        logger.error("controller.config_failed", extra={"reason": str(exc)})
        return 2
    try:
        cluster = Cluster(api, settings, base)
        logger.info(
            "controller.started",
            extra={
                "identity": settings.pod_name,
                "namespaces": list(settings.watch_namespaces) or "all",
                "lease": f"{settings.election_namespace}/{settings.election_id}",
            },
        )
        return await supervise(base, cluster.results(), cluster.companion, cluster.blocked_reasons)
    finally:
        await api.close()


def _parse(argv: Sequence[str] | None) -> tuple[ClusterSettings, Settings]:
    parser = argparse.ArgumentParser(
        prog="python -m controller.kube",
        description="Cluster mode without the CLI (tests and debugging): settings as JSON.",
    )
    parser.add_argument("--settings", default="{}", help="controller.settings.Settings as JSON")
    parser.add_argument("--cluster", default="{}", help="ClusterSettings fields as JSON")
    args = parser.parse_args(argv)
    base = Settings(**json.loads(args.settings))
    raw: dict[str, Any] = json.loads(args.cluster)
    for name in ("watch_namespaces", "publish_status_address"):
        if name in raw:
            raw[name] = tuple(raw[name])
    if raw.get("kubeconfig"):
        raw["kubeconfig"] = Path(raw["kubeconfig"])
    return ClusterSettings(**raw), base


def main(argv: Sequence[str] | None = None) -> int:
    from controller.logs import configure_logging

    cluster, base = _parse(argv)
    configure_logging(base.log_level)
    return asyncio.run(run_controller(cluster, base))


if __name__ == "__main__":
    sys.exit(main())
