"""The admin server: health, readiness, metrics and a snapshot summary for operators.

Served by the controller process on `--admin-address:--admin-port` (127.0.0.1:10254 by default),
never on the public listeners. `/healthz` says the controller's loop runs and workers are alive,
`/readyz` turns 200 once every worker serves a snapshot built after the initial sync (and 503 as
soon as a shutdown starts), `/metrics` is Prometheus text, and `/debug/snapshot` summarises the
current snapshot without any key material.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.compiler import Problem
from controller.metrics import ApplyTracker, DataPlaneCollector, WorkerTotals, render_ingress_nginx
from controller.publisher import Publisher
from proxy.channel import STATS_LEVELS

logger = logging.getLogger("portico.admin")

# A listening worker reports every second; this long without a word means its loop is stuck.
STALL_LIMIT = 10.0

# Worker counters exported as Prometheus metrics: WorkerStats field -> (metric name, help).
# Levels (proxy.channel.STATS_LEVELS) are gauges, the rest counters. `requests` and
# `local_replies` are not here: portico_requests_total and portico_local_replies_total have
# labels, from the per-request series.
WORKER_METRICS: dict[str, tuple[str, str]] = {
    "connections_total": ("portico_connections", "Client connections accepted"),
    "connections_refused": (
        "portico_connections_refused",
        "Client connections closed at once (max connections reached)",
    ),
    "connections_open": ("portico_connections_open", "Open client connections"),
    "tunnels_open": ("portico_tunnels_open", "Open upgraded (WebSocket) connections"),
    "rejected": ("portico_requests_rejected", "Malformed or hostile requests refused"),
    "upstream_connections_open": ("portico_upstream_connections_open", "Open connections to pods"),
    "upstream_connections_idle": (
        "portico_upstream_connections_idle",
        "Idle pooled connections to pods",
    ),
    "upstream_connects": ("portico_upstream_connects", "Connections opened to pods"),
    "upstream_connect_failures": (
        "portico_upstream_connect_errors",
        "Failed connection attempts to pods",
    ),
    "upstream_stale_retries": (
        "portico_upstream_stale_retries",
        "Requests retried after a stale pooled connection",
    ),
    "http2_streams_open": ("portico_http2_streams_open", "Open HTTP/2 streams of clients"),
    "http2_streams": ("portico_http2_streams", "HTTP/2 streams opened by clients"),
    "http2_resets_received": (
        "portico_http2_resets_received",
        "RST_STREAM frames received from HTTP/2 clients",
    ),
    "http2_resets_sent": ("portico_http2_resets_sent", "RST_STREAM frames sent to HTTP/2 clients"),
    "http2_goaways_sent": ("portico_http2_goaways_sent", "GOAWAY frames sent to HTTP/2 clients"),
    "http2_flood_trips": (
        "portico_http2_flood_trips",
        "HTTP/2 connections ended by a flood or protocol limit",
    ),
}


class WorkerCollector(Collector):
    """Prometheus view of the workers' counters, summed over workers at scrape time."""

    def __init__(self, totals: WorkerTotals) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        totals = self.totals.counters()
        for stat, (name, help_text) in WORKER_METRICS.items():
            family: Metric
            if stat in STATS_LEVELS:
                family = GaugeMetricFamily(name, help_text)
            else:
                family = CounterMetricFamily(name, help_text)
            family.add_metric([], totals.get(stat, 0))
            yield family


class AdminState:
    """What the admin endpoints report; owned and updated by the composition root."""

    def __init__(
        self,
        publisher: Publisher,
        totals: WorkerTotals,
        *,
        ingress_nginx_names: bool = False,
        ingress_class: str = "portico",
        controller_name: str = "portico.dev/ingress-controller",
    ) -> None:
        self.publisher = publisher
        self.totals = totals
        self.applies = ApplyTracker()
        self.ingress_nginx_names = ingress_nginx_names
        self.shutting_down = False
        self.problems: Sequence[Problem] = ()
        self.workers_expected = 0
        # Why the source cannot sync (e.g. a missing RBAC permission), shown by /readyz.
        self.blocked: Callable[[], Sequence[str]] = tuple
        self.registry = CollectorRegistry()
        self.snapshot_version = Gauge(
            "portico_snapshot_version",
            "Version of the newest published snapshot",
            registry=self.registry,
        )
        self.problems_gauge = Gauge(
            "portico_problems",
            "Current configuration problems by reason",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(WorkerCollector(totals))
        self.data_plane = DataPlaneCollector(
            publisher,
            totals,
            self.applies,
            ingress_class=ingress_class,
            controller_name=controller_name,
        )
        self.registry.register(self.data_plane)
        self.workers_ready = Gauge(
            "portico_workers_ready",
            "Workers listening with an ACKed snapshot",
            registry=self.registry,
        )

    def ready(self) -> bool:
        return not self.shutting_down and self.publisher.ready()

    def metrics_text(self) -> bytes:
        """The /metrics body (Prometheus text format)."""
        self.snapshot_version.set(self.publisher.version)
        self.workers_ready.set(
            sum(1 for link in self.publisher.links if link.alive and link.listening)
        )
        body = generate_latest(self.registry)
        if self.ingress_nginx_names:
            body += render_ingress_nginx(self.data_plane.ingress_nginx(self.totals.counters()))
        return body

    def live_workers(self) -> int:
        return sum(1 for link in self.publisher.links if link.alive)

    def set_problems(self, problems: Sequence[Problem]) -> None:
        self.problems = problems
        self.problems_gauge.clear()
        for reason, count in Counter(p.reason for p in problems).items():
            self.problems_gauge.labels(reason=reason).set(count)

    def summary(self) -> dict[str, Any]:
        snapshot = self.publisher.current
        doc: dict[str, Any] = {
            "version": self.publisher.version,
            "ready": self.ready(),
            "workers": [
                {
                    "index": link.index,
                    "alive": link.alive,
                    "listening": link.listening,
                    "acked_version": link.acked_version,
                    # compiled or python, why, and the detail (from the worker's READY)
                    "build": link.build or None,
                }
                for link in self.publisher.links
            ],
            "problems": [
                {"kind": p.kind, "ref": p.ref, "reason": p.reason, "message": p.message}
                for p in self.problems
            ],
        }
        if snapshot is not None:
            routes = snapshot.routes
            doc["virtual_hosts"] = [
                {"host": vh.host, "rules": len(vh.rules), "tls": vh.tls_certificate}
                for vh in routes.virtual_hosts
            ]
            doc["default_backend"] = None if routes.default is None else routes.default.backend
            doc["backends"] = {
                b.key: {
                    "endpoints": len(b.endpoints),
                    "unavailable": b.unavailable,
                    # Where traffic can go: "ip:port", terminating ones marked (not ready).
                    "addresses": [
                        {"address": e.authority, "ready": e.ready, "pod": e.target}
                        for e in b.endpoints
                    ],
                }
                for b in snapshot.backends
            }
            # Names and validity only: certificate and key material never leave the workers.
            doc["certificates"] = [
                {"name": c.name, "hosts": list(c.hosts), "not_after": c.not_after}
                for c in snapshot.certificates
            ]
        return doc


def build_app(state: AdminState, alive: Callable[[], bool]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        stalled = state.publisher.stalled(STALL_LIMIT)
        if stalled:
            text = f"worker event loop stalled: {', '.join(map(str, stalled))}\n"
            return web.Response(status=503, text=text)
        if alive() and (state.workers_expected == 0 or state.live_workers() > 0):
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unhealthy\n")

    async def readyz(_: web.Request) -> web.Response:
        if state.ready():
            return web.Response(text="ready\n")
        reason = "shutting down" if state.shutting_down else "not ready"
        lines = [reason, *state.blocked()]
        return web.Response(status=503, text="\n".join(lines) + "\n")

    async def metrics(_: web.Request) -> web.Response:
        body = state.metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def debug_snapshot(_: web.Request) -> web.Response:
        return web.json_response(state.summary())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/snapshot", debug_snapshot)
    return app


async def start_admin(
    state: AdminState, alive: Callable[[], bool], host: str, port: int
) -> web.AppRunner:
    runner = web.AppRunner(build_app(state, alive), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    logger.info("admin.listening", extra={"address": host, "port": port})
    return runner
