"""Request and configuration metrics of the whole data plane, for the admin server's /metrics.

Workers send a `proxy.channel.WorkerStats` every second: their counters, and their per-request
series (`proxy/metrics.py`): cumulative values of the label sets that moved. `WorkerTotals`
(the publisher's `StatsSink`) keeps each worker's latest values and, when a worker is gone, adds
them to a retired total, so every counter is monotonic across worker restarts. `ApplyTracker`
times each published snapshot until every worker ACKed it (or one NACKed it).
`DataPlaneCollector` turns all of it, plus the current snapshot (endpoints per
backend, certificate expiry) and what the workers' request path runs, into Prometheus families
under `portico_` names and, with `--metrics-ingress-nginx-names`, also under ingress-nginx's
names and labels (`render_ingress_nginx`: those counters carry no `_total` suffix, as
ingress-nginx's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_string

from controller.publisher import Publisher, WorkerLink
from proxy.channel import STATS_COUNTERS, STATS_LEVELS, SeriesKey, WorkerStats
from proxy.metrics import (
    BYTES_IN,
    BYTES_OUT,
    BYTES_SENT,
    DURATION,
    DURATION_SUM,
    LENGTH_BUCKETS,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    SIZE_BUCKETS,
    TIME_BUCKETS,
    UPSTREAM,
    UPSTREAM_SUM,
)

logger = logging.getLogger("portico.metrics")

# Config apply duration buckets (seconds): endpoint updates take milliseconds, a 10,000-Ingress
# snapshot to several workers seconds.
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
APPLY_TIMEOUT = 60.0  # a version not ACKed by every worker by then counts as failed


def _add(into: list[float], values: Sequence[float]) -> None:
    if len(into) < len(values):
        into.extend([0.0] * (len(values) - len(into)))
    for i, v in enumerate(values):
        into[i] += v


class WorkerTotals:
    """The workers' STATS summed over workers, past ones included (the publisher's StatsSink).

    Counters and per-request series are monotonic: a worker that is gone keeps counting, first
    while its channel is dead (until it is detached), then in the retired totals. Levels (open
    connections) count live workers only.
    """

    def __init__(self) -> None:
        self._latest: dict[WorkerLink, WorkerStats] = {}
        # A STATS carries only the series that moved: each worker's are kept across messages.
        self._series: dict[WorkerLink, dict[SeriesKey, list[float]]] = {}
        self._retired: dict[str, int] = {}  # counters (levels of a gone worker are 0)
        self._retired_series: dict[SeriesKey, list[float]] = {}
        self._retired_replies: dict[str, int] = {}
        self._retired_counts: dict[str, int] = {}  # retries, ejections
        self.sizes = False

    def update(self, link: WorkerLink, stats: WorkerStats) -> None:
        self._latest[link] = stats
        series = self._series.setdefault(link, {})
        for key, values in stats.request_metrics.series.items():
            series[key] = list(values)
        self.sizes = self.sizes or stats.request_metrics.sizes

    def retire(self, link: WorkerLink) -> None:
        """The worker is gone: its last values keep counting."""
        for key, values in self._series.pop(link, {}).items():
            _add(self._retired_series.setdefault(key, []), values)
        stats = self._latest.pop(link, None)
        if stats is None:
            return
        for name, value in stats.counters().items():
            if name not in STATS_LEVELS:
                self._retired[name] = self._retired.get(name, 0) + value
        for name in ("retries", "ejections"):
            value = getattr(stats.request_metrics, name)
            self._retired_counts[name] = self._retired_counts.get(name, 0) + value
        for reason, n in stats.request_metrics.local_replies.items():
            self._retired_replies[reason] = self._retired_replies.get(reason, 0) + n

    def counters(self) -> dict[str, int]:
        """Each `WorkerStats` counter summed (levels over live workers only)."""
        totals = dict.fromkeys(STATS_COUNTERS, 0)
        for name, value in self._retired.items():
            totals[name] += value
        for link, stats in self._latest.items():
            for name, value in stats.counters().items():
                if link.alive or name not in STATS_LEVELS:
                    totals[name] = totals.get(name, 0) + value
        return totals

    def series(self) -> dict[SeriesKey, list[float]]:
        totals = {key: list(values) for key, values in self._retired_series.items()}
        for worker in self._series.values():
            for key, values in worker.items():
                _add(totals.setdefault(key, []), values)
        return totals

    def local_replies(self) -> dict[str, int]:
        """Local replies by reason."""
        totals = dict(self._retired_replies)
        for stats in self._latest.values():
            for reason, n in stats.request_metrics.local_replies.items():
                totals[reason] = totals.get(reason, 0) + n
        return totals

    def count(self, name: str) -> int:
        """`retries` or `ejections`, summed."""
        live: int = sum(getattr(s.request_metrics, name) for s in self._latest.values())
        return self._retired_counts.get(name, 0) + live


class ApplyTracker:
    """How long published snapshots take to be ACKed by every worker, and the last outcome."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(APPLY_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.successes = 0
        self.failures = 0
        self.last_success: bool | None = None
        self.last_success_time = 0.0  # Unix time of the last fully applied version
        self._last_version = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, publisher: Publisher, version: int, started: float) -> None:
        """Time `version`, published at monotonic time `started`, in the background."""
        task = asyncio.get_running_loop().create_task(self._wait(publisher, version, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, publisher: Publisher, version: int, started: float) -> None:
        try:
            async with asyncio.timeout(APPLY_TIMEOUT):
                applied = await publisher.wait_outcome(version)
        except TimeoutError:
            applied = False
        self.observe(version, applied, time.monotonic() - started)

    def observe(self, version: int, applied: bool, seconds: float) -> None:
        if applied:
            self.successes += 1
            self.duration_sum += seconds
            index = next((i for i, b in enumerate(APPLY_BUCKETS) if seconds <= b), -1)
            self.buckets[index] += 1
        else:
            self.failures += 1
            logger.warning("snapshot.apply_failed", extra={"version": version})
        if version >= self._last_version:  # an older version finishing late says nothing new
            self._last_version = version
            self.last_success = applied
            if applied:
                self.last_success_time = time.time()

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def floatToGoString(value: float) -> str:
    text: str = _untyped_go_string(value)  # type: ignore[no-untyped-call]
    return text


def _split(ref: str) -> tuple[str, str]:
    """("ns", "name") of "ns/name"; ("", "") of ""."""
    namespace, _, name = ref.partition("/")
    return (namespace, name) if name else ("", ref)


def _buckets(bounds: Sequence[float], counts: Sequence[float]) -> list[tuple[str, float]]:
    les = [floatToGoString(b) for b in bounds] + ["+Inf"]
    return list(zip(les, accumulate(counts), strict=True))


_TIME_CELLS = len(TIME_BUCKETS) + 1
_LENGTH_CELLS = len(LENGTH_BUCKETS) + 1
_SIZE_CELLS = len(SIZE_BUCKETS) + 1


class DataPlaneCollector(Collector):
    """Prometheus families for requests, applies, backends and certificates (see module doc)."""

    def __init__(
        self,
        publisher: Publisher,
        requests: WorkerTotals,
        applies: ApplyTracker,
        *,
        ingress_class: str = "portico",
        controller_name: str = "portico.dev/ingress-controller",
    ) -> None:
        self.publisher = publisher
        self.requests = requests
        self.applies = applies
        self.ingress_class = ingress_class
        self.controller_name = controller_name
        # ingress-nginx's constant labels, from the pod's downward-API environment if present.
        self.controller_labels = {
            "controller_namespace": os.environ.get("POD_NAMESPACE", ""),
            "controller_class": controller_name,
            "controller_pod": os.environ.get("POD_NAME", socket.gethostname()),
        }

    # ---- portico_ names ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        series = self.requests.series()
        labels = ["namespace", "ingress", "service"]
        requests = CounterMetricFamily(
            "portico_requests",
            "Requests answered (or ended) by the workers, by Ingress, Service, status class, "
            "method and client protocol (HTTP/1.1, HTTP/2.0: the access log's protocol); "
            "requests without a route have empty ingress and service",
            labels=[*labels, "status", "method", "protocol"],
        )
        by_request: dict[tuple[str, ...], float] = {}
        by_route: dict[tuple[str, str, str], list[float]] = {}
        for (ingress, service, _host, _path, status, method, protocol), values in series.items():
            namespace, name = _split(ingress)
            route = (namespace, name, _split(service)[1])
            key = (*route, f"{status}xx", method, protocol)
            by_request[key] = by_request.get(key, 0.0) + sum(
                values[DURATION : DURATION + _TIME_CELLS]
            )
            _add(by_route.setdefault(route, []), values[: UPSTREAM + _TIME_CELLS])
        for request_key, count in sorted(by_request.items()):
            requests.add_metric(list(request_key), count)
        yield requests

        duration = HistogramMetricFamily(
            "portico_request_duration_seconds",
            "Time from a request's complete head to the end of its answer",
            labels=labels,
        )
        upstream = HistogramMetricFamily(
            "portico_upstream_response_duration_seconds",
            "Time from the request head sent to a pod to its response head received",
            labels=labels,
        )
        received = CounterMetricFamily(
            "portico_request_body_bytes",
            "Request body bytes received from clients",
            labels=labels,
        )
        sent = CounterMetricFamily(
            "portico_response_body_bytes",
            "Response body bytes sent to clients",
            labels=labels,
        )
        for route, values in sorted(by_route.items()):
            route_labels = list(route)
            dur = values[DURATION : DURATION + _TIME_CELLS]
            duration.add_metric(route_labels, _buckets(TIME_BUCKETS, dur), values[DURATION_SUM])
            up = values[UPSTREAM : UPSTREAM + _TIME_CELLS]
            upstream.add_metric(route_labels, _buckets(TIME_BUCKETS, up), values[UPSTREAM_SUM])
            received.add_metric(route_labels, values[BYTES_IN])
            sent.add_metric(route_labels, values[BYTES_OUT])
        yield from (duration, upstream, received, sent)

        replies = CounterMetricFamily(
            "portico_local_replies",
            "Requests answered or ended by Portico itself (no route, no endpoint, refused, "
            "upstream failure, client gone), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self.requests.local_replies().items()):
            replies.add_metric([reason], count)
        yield replies
        yield CounterMetricFamily(
            "portico_upstream_retries",
            "Attempts on another endpoint after a failed one",
            value=self.requests.count("retries"),
        )
        yield CounterMetricFamily(
            "portico_upstream_ejections",
            "Endpoints ejected after a connect failure (passive health checking)",
            value=self.requests.count("ejections"),
        )
        yield from self._config()
        yield from self._snapshot()
        yield self._build()

    def _config(self) -> Iterator[Metric]:
        a = self.applies
        apply = HistogramMetricFamily(
            "portico_config_apply_duration_seconds",
            "Time from a snapshot's publication to its ACK by every worker",
        )
        apply.add_metric([], _buckets(APPLY_BUCKETS, a.buckets), a.duration_sum)
        yield apply
        yield CounterMetricFamily(
            "portico_config_apply_failures",
            "Snapshots a worker refused (NACK) or not ACKed by every worker in time",
            value=a.failures,
        )
        yield GaugeMetricFamily(
            "portico_config_last_apply_successful",
            "Whether the newest finished snapshot apply succeeded on every worker (1) or not (0)",
            value=1 if a.last_success is not False else 0,
        )
        yield GaugeMetricFamily(
            "portico_config_last_apply_successful_timestamp_seconds",
            "Unix time of the last snapshot ACKed by every worker",
            value=a.last_success_time,
        )

    def _snapshot(self) -> Iterator[Metric]:
        snapshot = self.publisher.current
        ready = GaugeMetricFamily(
            "portico_backend_endpoints_ready",
            "Ready endpoints of each backend of the current snapshot",
            labels=["backend"],
        )
        total = GaugeMetricFamily(
            "portico_backend_endpoints",
            "Endpoints (ready or terminating) of each backend of the current snapshot",
            labels=["backend"],
        )
        expiry = GaugeMetricFamily(
            "portico_certificate_not_after_seconds",
            "Unix time each certificate of the current snapshot expires",
            labels=["namespace", "secret"],
        )
        if snapshot is not None:
            for backend in snapshot.backends:
                ready.add_metric([backend.key], sum(1 for e in backend.endpoints if e.ready))
                total.add_metric([backend.key], len(backend.endpoints))
            for cert in snapshot.certificates:
                expiry.add_metric(list(_split(cert.name)), cert.not_after)
        yield from (ready, total, expiry)

    def _build(self) -> Metric:
        """What the live workers' request path runs, as each reported it (READY)."""
        info = GaugeMetricFamily(
            "portico_build_info",
            "What the workers' request path runs: compiled (mypyc) or python (about half the "
            "requests per second), and why not compiled (requested, not_compiled, stale_build, "
            "import_failed)",
            labels=["request_path", "reason"],
        )
        builds = {
            (link.build["request_path"], link.build.get("reason", ""))
            for link in self.publisher.links
            if link.alive and "request_path" in link.build
        }
        for labels in sorted(builds):
            info.add_metric(list(labels), 1)
        return info

    # ---- ingress-nginx names -------------------------------------------------------------------

    def ingress_nginx(self, worker_totals: dict[str, int]) -> list[Metric]:
        """The same data under ingress-nginx's names and labels (status is the class)."""
        const = self.controller_labels
        names = list(const)
        tags = ["status", "method", "path", "namespace", "ingress", "service", "canary", "host"]
        prefix = "nginx_ingress_controller_"
        requests = Metric(prefix + "requests", "The total number of client requests", "counter")
        time_families = {
            "request_duration_seconds": (
                "The request processing time in milliseconds",
                DURATION,
                DURATION_SUM,
            ),
            "header_duration_seconds": (
                "The time spent on receiving first header from the upstream server",
                UPSTREAM,
                UPSTREAM_SUM,
            ),
        }
        histograms: list[tuple[HistogramMetricFamily, int, int, Sequence[float]]] = [
            (
                HistogramMetricFamily(prefix + name, doc, labels=[*names, *tags]),
                cell,
                total,
                TIME_BUCKETS,
            )
            for name, (doc, cell, total) in time_families.items()
        ]
        sizes = self.requests.sizes
        if sizes:
            for name, doc, cell, total, bounds in (
                (
                    "request_size",
                    "The request length (body bytes)",
                    REQUEST_SIZE,
                    BYTES_IN,
                    LENGTH_BUCKETS,
                ),
                (
                    "response_size",
                    "The response length (body bytes)",
                    RESPONSE_SIZE,
                    BYTES_OUT,
                    LENGTH_BUCKETS,
                ),
                (
                    "bytes_sent",
                    "The number of bytes sent to a client (body bytes)",
                    BYTES_SENT,
                    BYTES_OUT,
                    SIZE_BUCKETS,
                ),
            ):
                family = HistogramMetricFamily(prefix + name, doc, labels=[*names, *tags])
                histograms.append((family, cell, total, bounds))
        # ingress-nginx's families have no protocol label: its series are summed over it.
        series: dict[tuple[str, str, str, str, int, str], list[float]] = {}
        for (*route_key, _protocol), values in sorted(self.requests.series().items()):
            _add(series.setdefault(tuple(route_key), []), values)  # type: ignore[arg-type]
        for (ingress, service, host, path, status, method), values in sorted(series.items()):
            namespace, name = _split(ingress)
            label_values = {
                **const,
                "status": f"{status}xx",
                "method": method,
                "path": path,
                "namespace": namespace,
                "ingress": name,
                "service": _split(service)[1],
                "canary": "",
                "host": host,
            }
            count = sum(values[DURATION : DURATION + _TIME_CELLS])
            requests.add_sample(prefix + "requests", label_values, count)
            ordered = [label_values[n] for n in [*names, *tags]]
            for family, first, sum_at, les in histograms:
                counts = values[first : first + len(les) + 1]
                if len(counts) != len(les) + 1:
                    continue  # a worker without size histograms
                family.add_metric(ordered, _buckets(les, counts), values[sum_at])
        out: list[Metric] = [requests, *(h[0] for h in histograms)]

        a = self.applies
        reload_ok = GaugeMetricFamily(
            prefix + "config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            labels=names,
        )
        reload_ok.add_metric(list(const.values()), 1 if a.last_success is not False else 0)
        reload_time = GaugeMetricFamily(
            prefix + "config_last_reload_successful_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            labels=names,
        )
        reload_time.add_metric(list(const.values()), a.last_success_time)
        success = Metric(
            prefix + "success",
            "Cumulative number of Ingress controller reload operations",
            "counter",
        )
        success.add_sample(prefix + "success", dict(const), a.successes)
        errors = Metric(
            prefix + "errors",
            "Cumulative number of Ingress controller errors during reload operations",
            "counter",
        )
        errors.add_sample(prefix + "errors", dict(const), a.failures)
        out += [reload_ok, reload_time, success, errors]

        expire = GaugeMetricFamily(
            prefix + "ssl_expire_time_seconds",
            "Number of seconds since 1970 to the SSL Certificate expire.",
            labels=["namespace", "class", "host"],
        )
        snapshot = self.publisher.current
        if snapshot is not None:
            not_after = {c.name: c.not_after for c in snapshot.certificates}
            for vhost in snapshot.routes.virtual_hosts:
                cert_name = vhost.tls_certificate
                if cert_name is not None and cert_name in not_after:
                    expire.add_metric(
                        [const["controller_namespace"], self.ingress_class, vhost.host],
                        not_after[cert_name],
                    )
        out.append(expire)

        connections = GaugeMetricFamily(
            prefix + "nginx_process_connections",
            "current number of client connections with state {active, reading, writing, waiting}",
            labels=[*names, "state"],
        )
        connections.add_metric(
            [*const.values(), "active"], worker_totals.get("connections_open", 0)
        )
        accepted = worker_totals.get("connections_total", 0)
        connections_total = Metric(
            prefix + "nginx_process_connections_total",
            "total number of connections with state {accepted, handled}",
            "counter",
        )
        for state, value in (
            ("accepted", accepted),
            ("handled", accepted - worker_totals.get("connections_refused", 0)),
        ):
            connections_total.add_sample(
                prefix + "nginx_process_connections_total", {**const, "state": state}, value
            )
        process_requests = Metric(
            prefix + "nginx_process_requests_total", "total number of client requests", "counter"
        )
        process_requests.add_sample(
            prefix + "nginx_process_requests_total",
            dict(const),
            sum(sum(v[DURATION : DURATION + _TIME_CELLS]) for v in series.values()),
        )
        out += [connections, connections_total, process_requests]
        return out


def render_ingress_nginx(families: Iterable[Metric]) -> bytes:
    """Prometheus text for these families, counters named as given (no `_total` added).

    ingress-nginx's Go client exposes `nginx_ingress_controller_requests` as a counter without
    the suffix prometheus_client would add; dashboards query that exact name.
    """
    lines: list[str] = []
    for family in families:
        kind = {"unknown": "untyped"}.get(family.type, family.type)
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {family.name} {doc}")
        lines.append(f"# TYPE {family.name} {kind}")
        for sample in family.samples:
            labels = ",".join(
                '{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
                for k, v in sorted(sample.labels.items())
            )
            text = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample.name}{text} {floatToGoString(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""
