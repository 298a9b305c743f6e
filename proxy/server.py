"""The proxy of one worker: listeners, the current routing generation, timers, shutdown.

`apply(snapshot)` builds a `Generation` (route table, one `Route` per path rule, clusters by
backend key) off the request path and swaps it in as one reference; every request captures the
generation once when its head is complete, so a swap never changes a request mid-flight.
Clusters (balancer and ejection state) and pooled upstream connections of unchanged endpoints
carry over; pools of endpoints that disappeared are closed once idle.

Timeouts are deadlines stored on each connection and checked by one periodic sweep, instead
of a timer handle per request: setting a deadline is a float store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from typing import Any, cast

from proxy.accesslog import BATCH as ACCESS_BATCH
from proxy.accesslog import AccessLog
from proxy.cluster import Cluster
from proxy.config import (
    Backend,
    BalancerKind,
    EndpointsUpdate,
    PathRule,
    RouteTable,
    Snapshot,
    SnapshotError,
    apply_endpoints_update,
)
from proxy.downstream import DownstreamProtocol
from proxy.exchange import Exchange
from proxy.headers import BadRequest, ClientContext, parse_request
from proxy.metrics import RequestMetrics, Series
from proxy.pool import Pool
from proxy.redirect import Redirect
from proxy.settings import ProxySettings
from proxy.table import Router
from proxy.tls import TLSTerminator, UpstreamTLS, upstream_tls
from proxy.tlsserver import TLSListener
from proxy.tunnel import Tunnel

logger = logging.getLogger("portico.proxy")


class Route:
    """A path rule resolved for the data path: its cluster and effective limits."""

    __slots__ = (
        "balancer",
        "cluster",
        "connect_timeout",
        "key",
        "max_body",
        "read_timeout",
        "redirect",
        "rule",
        "send_timeout",
        "series",
        "track",
        "unavailable",
        "upstream_tls",
    )

    def __init__(
        self, rule: PathRule, clusters: dict[str, Cluster], settings: ProxySettings
    ) -> None:
        options = rule.options
        self.rule = rule
        self.key = rule.backend
        self.series: Series | None = None  # this rule's request metrics, set on first use
        cluster = clusters.get(rule.backend)
        self.unavailable: str | None = None
        if cluster is None:
            self.unavailable = "BackendNotFound"
        elif cluster.backend.unavailable is not None:
            self.unavailable = cluster.backend.unavailable
            cluster = None
        self.cluster = cluster
        self.balancer: BalancerKind = options.balancer
        # Only the least-request balancer uses in-flight counts and latencies.
        self.track = options.balancer == "least_request"
        self.connect_timeout = options.connect_timeout or settings.upstream_connect_timeout
        self.read_timeout = options.read_timeout or settings.upstream_read_timeout
        self.send_timeout = options.send_timeout or settings.upstream_send_timeout
        self.max_body = (
            options.max_body_size if options.max_body_size is not None else settings.max_body_bytes
        )
        # Plain-HTTP requests on this route get a 308 to https:// (checked per request only as
        # this flag).
        self.redirect = options.ssl_redirect
        # None: plain HTTP to the pods; else the TLS identity (also part of the pool key).
        self.upstream_tls: UpstreamTLS | None = None
        if options.upstream_protocol == "HTTPS":
            name = options.upstream_server_name
            if name is None and rule.service is not None:
                namespace, _, service = rule.service.partition("/")
                name = f"{service}.{namespace}.svc"
            try:
                self.upstream_tls = upstream_tls(name or "", options.upstream_ca_pem)
            except ValueError:
                # The compiler validates CA bundles; a bad one must not go out unverified.
                self.unavailable = "UpstreamCAInvalid"
                self.cluster = None


class Generation:
    """Everything one snapshot needs on the request path; immutable once built."""

    __slots__ = ("clusters", "router", "routes", "settings", "snapshot")

    def __init__(
        self,
        snapshot: Snapshot,
        router: Router,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        routes: dict[int, Route],
    ) -> None:
        self.snapshot = snapshot
        self.router = router
        self.clusters = clusters
        self.settings = settings
        self.routes = routes

    @staticmethod
    def build_routes(
        table: RouteTable, clusters: dict[str, Cluster], settings: ProxySettings
    ) -> dict[int, Route]:
        """The Route of every rule, keyed by the identity of the snapshot's rule objects:
        hashing a frozen dataclass hashes all its fields, on every lookup."""
        rules: list[PathRule] = []
        for vhost in table.virtual_hosts:
            rules.extend(vhost.rules)
            if vhost.fallback is not None:
                rules.append(vhost.fallback)
        if table.default is not None:
            rules.append(table.default)
        return {id(rule): Route(rule, clusters, settings) for rule in rules}

    def route_for(self, rule: PathRule) -> Route:
        route = self.routes.get(id(rule))
        if route is None or route.rule is not rule:
            route = Route(rule, self.clusters, self.settings)
        return route

    def with_snapshot(self, snapshot: Snapshot) -> Generation:
        """This generation for a snapshot with the same routes (an endpoints-only update)."""
        return Generation(snapshot, self.router, self.clusters, self.settings, self.routes)


class ServerStats:
    """Plain counters, read by the worker for metrics."""

    __slots__ = (
        "connections_refused",
        "connections_total",
        "local_replies",
        "rejected",
        "requests",
        "upstream_connect_failures",
        "upstream_stale_retries",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0
        self.local_replies = 0
        self.rejected = 0
        self.upstream_connect_failures = 0
        self.upstream_stale_retries = 0


class ProxyServer:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        try:
            self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        except RuntimeError:
            # Constructed outside the loop (a worker before it starts serving): start() sets it;
            # nothing reads it before that.
            self.loop = cast(asyncio.AbstractEventLoop, None)
        self.pool = Pool(self.loop, settings)
        self.stats = ServerStats()
        self.clients: set[DownstreamProtocol] = set()
        self.tunnels: set[Tunnel] = set()
        self.draining = False
        self.head_limit = settings.max_header_bytes
        # Raw bytes read while a head is incomplete may include some body; allow one read.
        self.head_raw_limit = 2 * settings.max_header_bytes + 65536
        self.access: AccessLog | None = AccessLog() if settings.access_log else None
        self.metrics = RequestMetrics(
            settings.metrics_ingress_nginx_names, lambda: self._generation
        )
        self._trusted = settings.trusted_networks()
        self._generation: Generation | None = None
        self._clusters: dict[str, Cluster] = {}
        self._servers: list[asyncio.Server | TLSListener] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_interval = self._interval(settings, ())
        self._drained: asyncio.Event | None = None  # set during shutdown
        self._contexts: dict[tuple[str, str, int], ClientContext] = {}
        self.http_port = 0
        self.https_port = 0
        # Certificates for the HTTPS listener, created when it starts (see proxy/tls.py).
        self.tls: TLSTerminator | None = None
        # The Strict-Transport-Security field added to HTTPS responses (b"": none).
        self.hsts = b""
        if settings.hsts:
            value = b"max-age=%d" % settings.hsts_max_age
            if settings.hsts_include_subdomains:
                value += b"; includeSubDomains"
            self.hsts = b"Strict-Transport-Security: " + value + b"\r\n"

    # ---- configuration -----------------------------------------------------------------------

    @property
    def generation(self) -> Generation | None:
        return self._generation

    def apply(self, snapshot: Snapshot) -> None:
        """Build a generation for `snapshot` and make it current; the old one stays on error."""
        try:
            router = Router(snapshot.routes)
        except (SnapshotError, ValueError):
            raise
        except Exception as exc:  # a bug in the table must not take the worker down
            raise SnapshotError(f"cannot build the route table: {exc}") from exc
        if self.tls is not None:
            self.tls.update(snapshot)  # before the swap: a refused certificate keeps the old
        self._install(snapshot, router)

    def apply_endpoints(self, update: EndpointsUpdate) -> None:
        """Apply an endpoints-only update on top of the current snapshot (routes unchanged)."""
        current = self._generation
        if current is None:
            raise SnapshotError("no snapshot to apply an endpoints update to")
        snapshot = apply_endpoints_update(current.snapshot, update)
        if update.removed or not self._clusters_updatable(update.backends):
            self._install(snapshot, current.router)
            return
        # The common case (pods come and go): only endpoint sets change, which the shared
        # Cluster objects absorb in place, so routes and the route table are reused as they
        # are; rebuilding 20,000 routes would take longer than the update's whole budget.
        gone = False
        for backend in update.backends:
            cluster = self._clusters[backend.key]
            if not gone:
                now = {(e.address, e.port) for e in backend.endpoints}
                gone = any((e.address, e.port) not in now for e in cluster.backend.endpoints)
            if cluster.backend != backend:
                cluster.update(backend)
        self._generation = current.with_snapshot(snapshot)
        if gone:
            self.pool.retain(
                frozenset((e.address, e.port) for b in snapshot.backends for e in b.endpoints)
            )

    def _clusters_updatable(self, backends: tuple[Backend, ...]) -> bool:
        """Whether every changed backend exists and stays as usable (or not) as it was."""
        for backend in backends:
            cluster = self._clusters.get(backend.key)
            if cluster is None or cluster.backend.unavailable != backend.unavailable:
                return False
        return True

    def _install(self, snapshot: Snapshot, router: Router) -> None:
        old = self._clusters
        clusters: dict[str, Cluster] = {}
        for backend in snapshot.backends:
            cluster = old.get(backend.key)
            if cluster is None:
                cluster = Cluster(backend, self.settings)
            elif cluster.backend != backend:
                cluster.update(backend)
            clusters[backend.key] = cluster
        routes = Generation.build_routes(snapshot.routes, clusters, self.settings)
        generation = Generation(snapshot, router, clusters, self.settings, routes)
        self._clusters = clusters
        self._generation = generation
        self.pool.retain(
            frozenset((e.address, e.port) for b in snapshot.backends for e in b.endpoints)
        )
        interval = self._interval(self.settings, generation.routes.values())
        self._tick_interval = min(self._tick_interval, interval)

    @staticmethod
    def _interval(settings: ProxySettings, routes: Any) -> float:
        timeouts = [
            settings.client_header_timeout,
            settings.client_body_timeout,
            settings.keepalive_timeout,
            settings.upstream_read_timeout,
            settings.upstream_send_timeout,
            settings.upstream_keepalive_timeout,
            settings.tunnel_idle_timeout,
        ]
        for route in routes:
            timeouts.append(route.read_timeout)
            timeouts.append(route.send_timeout)
        return max(0.02, min(1.0, min(t for t in timeouts if t > 0) / 5))

    # ---- listening ---------------------------------------------------------------------------

    async def start(
        self,
        *,
        http_sock: socket.socket | None = None,
        host: str = "127.0.0.1",
        http_port: int = 0,
        http: bool = True,
        https_sock: socket.socket | None = None,
        https_port: int | None = None,
    ) -> None:
        """Listen for HTTP (unless `http` is False) and, given a socket or port, for HTTPS."""
        if self._generation is None:
            raise RuntimeError("apply a snapshot before starting the proxy")
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.pool.loop = loop
        if https_sock is not None or https_port is not None:
            await self._start_https(loop, https_sock, host, https_port or 0)
        if http_sock is not None:
            server = await loop.create_server(self._http_factory, sock=http_sock, backlog=4096)
        elif http:
            server = await loop.create_server(
                self._http_factory, host, http_port, reuse_address=True, backlog=4096
            )
        if http_sock is not None or http:
            self.http_port = _bound_port(server)
            self._servers.append(server)
        if self._tick_handle is None:
            self._tick_handle = loop.call_later(self._tick_interval, self._tick)
        # Everything allocated so far (modules, the first generation) lives as long as the
        # worker: move it out of the collector's way, so full collections triggered by
        # per-request garbage only walk young objects (shorter pauses, better p99).
        gc.freeze()
        logger.info("proxy.listening", extra={"port": self.http_port, "scheme": "http"})

    def _http_factory(self) -> DownstreamProtocol:
        return DownstreamProtocol(self, "http", self.http_port)

    async def _start_https(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | None,
        host: str,
        port: int,
    ) -> None:
        generation = self._generation
        assert generation is not None
        tls = self.tls
        if tls is None:
            tls = TLSTerminator(self.settings.tls_min_version)
            tls.update(generation.snapshot)
            self.tls = tls
        context = tls.listener_context()
        if sock is None:
            sock = socket.create_server((host, port), backlog=4096, reuse_port=False)
        server = TLSListener(
            loop, sock, context, self._https_factory, self.settings.client_header_timeout
        )
        self.https_port = _bound_port(server)
        self._servers.append(server)
        logger.info("proxy.listening", extra={"port": self.https_port, "scheme": "https"})

    def _https_factory(self) -> DownstreamProtocol:
        return DownstreamProtocol(self, "https", self.https_port)

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish, close."""
        self.draining = True
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            client.drain()
        self._drained = asyncio.Event()
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), drain_timeout)
        for client in list(self.clients):
            client.abort()
        for tunnel in list(self.tunnels):
            tunnel.close()
        self.pool.close()
        self.pool.abort_all()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self.access is not None:
            self.access.flush()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        logger.info("proxy.stopped", extra={"requests": self.stats.requests})

    # ---- timers ------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.loop.time()
        expired: list[DownstreamProtocol | Any] = [
            c for c in self.clients if 0.0 < c.deadline <= now
        ]
        expired.extend(c for c in self.pool.conns if 0.0 < c.deadline <= now)
        expired.extend(t for t in self.tunnels if 0.0 < t.deadline <= now)
        for item in expired:
            try:
                item.timeout()
            except Exception:
                logger.exception("proxy.timeout_failed")
        if self.access is not None:
            self.access.flush()
        if self.tls is not None:
            self.tls.maybe_rotate()
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)

    # ---- used by the protocols ---------------------------------------------------------------

    def client_context(self, client_ip: str, scheme: str, port: int) -> ClientContext:
        key = (client_ip, scheme, port)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ClientContext(client_ip, scheme, port, self._trusted)
            if len(self._contexts) > 4096:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    def admit(self, client: DownstreamProtocol) -> bool:
        if len(self.clients) >= self.settings.max_connections or self.draining:
            self.stats.connections_refused += 1
            return False
        self.clients.add(client)
        self.stats.connections_total += 1
        return True

    def release_client(self, client: DownstreamProtocol, tunneled: bool = False) -> None:
        self.clients.discard(client)
        if self._drained is not None:
            self._check_drained()

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)
        if self._drained is not None:
            self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self.clients and not self.tunnels:
            self._drained.set()

    def open_exchange(
        self,
        down: DownstreamProtocol,
        method: bytes,
        url: bytes,
        version: str,
        parts: list[bytes],
        special: list[tuple[bytes, bytes]],
    ) -> Exchange:
        """Validate and route a complete request head (capturing the current generation)."""
        assert down.ctx is not None
        try:
            head = parse_request(method, url, version, parts, special, down.ctx)
        except BadRequest as exc:
            self.reject(down, exc.status, exc.reason)
            return Exchange(down, None, None, reply=exc.status, reason=exc.reason, close_after=True)
        generation = self._generation
        assert generation is not None
        rule = generation.router.route_raw(head.host, head.path)
        if rule is None:
            return Exchange(down, head, None, reply=404, reason="NoRoute")
        route = generation.routes.get(id(rule))
        if route is None or route.rule is not rule:
            route = generation.route_for(rule)
        if route.redirect and down.scheme == "http":
            return Redirect(down, head, route, reply=308, reason="SSLRedirect")
        if route.max_body and head.content_length > route.max_body:
            self.reject(down, 413, "BodyTooLarge")
            return Exchange(down, head, None, reply=413, reason="BodyTooLarge", close_after=True)
        if route.cluster is None:
            return Exchange(down, head, route, reply=503, reason=route.unavailable or "NoEndpoints")
        return Exchange(down, head, route, started=down.read_at)

    def local_exchange(self, down: DownstreamProtocol, status: int, reason: str) -> Exchange:
        return Exchange(down, None, None, reply=status, reason=reason, close_after=True)

    def reject(
        self, down: DownstreamProtocol, status: int, reason: str, detail: str | None = None
    ) -> None:
        self.stats.rejected += 1
        ctx = down.ctx
        extra: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "client": ctx.client_ip.decode() if ctx is not None else None,
        }
        if detail:
            extra["detail"] = detail
        logger.info("request.rejected", extra=extra)

    def log_refusal(self, down: DownstreamProtocol, status: int, reason: str) -> None:
        """Access-log a request refused before it became an exchange (unparsable head)."""
        self.metrics.record_refusal(status, reason)
        if self.access is not None:
            self.access.record(
                (
                    down.ctx.client_ip if down.ctx is not None else b"",
                    b"",
                    b"",
                    down.url[:256],
                    status,
                    0,
                    0.0,
                    None,
                    b"",
                    reason,
                    None,
                    0,
                    0.0,
                    None,
                )
            )

    def exchange_ended(self, exchange: Exchange, reason: str | None) -> None:
        """Every exchange ends here once (but Exchange.response_done, which inlines it)."""
        self.metrics.record(exchange, reason, self.loop.time())
        if self.access is not None:
            self.log_access(exchange, reason)

    def log_access(self, exchange: Exchange, reason: str | None) -> None:
        access = self.access
        if access is None:
            return
        head = exchange.head
        down = exchange.down
        upstream = exchange.upstream
        if upstream is None:
            tried = exchange.tried
            upstream = tried[-1].authority if tried else None
        # AccessLog.record, inlined: this runs for every request.
        entries = access.entries
        entries.append(
            (
                time.time(),
                (
                    down.ctx.client_ip if down.ctx is not None else b"",
                    head.method if head is not None else b"",
                    head.host if head is not None else b"",
                    head.target if head is not None else down.url,
                    exchange.status,
                    exchange.sent,
                    self.loop.time() - exchange.started,
                    upstream,
                    head.request_id if head is not None else b"",
                    reason,
                    head.forwarded_for if head is not None else None,
                    exchange.status if exchange.response is not None else 0,
                    exchange.head_at - exchange.sent_at,
                    exchange.route,
                ),
            )
        )
        if len(entries) >= ACCESS_BATCH:
            access.flush()

    # ---- introspection -----------------------------------------------------------------------

    def stats_dict(self) -> dict[str, int]:
        s = self.stats
        return {
            "connections_open": len(self.clients),
            "connections_total": s.connections_total,
            "connections_refused": s.connections_refused,
            "tunnels_open": len(self.tunnels),
            "requests": s.requests,
            "local_replies": s.local_replies,
            "rejected": s.rejected,
            "upstream_connections_open": len(self.pool.conns),
            "upstream_connections_idle": self.pool.idle_count(),
            "upstream_connects": self.pool.connects,
            "upstream_connect_failures": s.upstream_connect_failures,
            "upstream_stale_retries": s.upstream_stale_retries,
        }


def _bound_port(server: Any) -> int:
    # Any, not asyncio.Server: uvloop's Server.sockets is a list where typeshed says a tuple,
    # and compiled code (mypyc) checks the declared type.
    return int(server.sockets[0].getsockname()[1])
