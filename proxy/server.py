"""The proxy of one worker: its listeners, timers and shutdown; the composition root.

`ProxyServer` builds the worker's parts once and wires them: `Telemetry` (counters, request
metrics, access log), the upstream `Pool`, the `Connections` registry, `Routing` (the current
generation, its swap, the dispatch of each request head to an exchange) and the `Forwarding`
every exchange shares. Each protocol and exchange receives only the parts it uses; none of
them sees the server.

`apply(snapshot)` builds the route table, updates the HTTPS certificates and swaps the new
generation in (`proxy/routing.py`); a snapshot refused at any step leaves the old one serving.

Timeouts are deadlines stored on each connection and checked by one periodic sweep, instead
of a timer handle per request: setting a deadline is a float store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from typing import Any, cast

from proxy import extauth
from proxy.accesslog import AccessLog
from proxy.channel import WorkerStats
from proxy.config import EndpointsUpdate, Snapshot
from proxy.connections import Client, Connections, Pipe, Timed
from proxy.downstream import DownstreamProtocol
from proxy.exchange import Forwarding
from proxy.headers import ClientContexts
from proxy.metrics import RequestMetrics
from proxy.passthrough import Passthrough
from proxy.pool import Pool
from proxy.proxyprotocol import HeaderReader, Source
from proxy.route import Route
from proxy.routing import Generation, Routing, build_router
from proxy.settings import ProxySettings
from proxy.telemetry import ServerStats, Telemetry
from proxy.tls import TLSTerminator
from proxy.tlsserver import TLSListener

logger = logging.getLogger("portico.proxy")


class ProxyServer:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        try:
            self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        except RuntimeError:
            # Constructed outside the loop (a worker before it starts serving): start() sets it;
            # nothing reads it before that.
            self.loop = cast(asyncio.AbstractEventLoop, None)
        self.telemetry = Telemetry(settings)
        self.pool = Pool(self.loop, settings)
        self.connections = Connections(settings.max_connections, self.telemetry.stats)
        self.forwarding = Forwarding(self.loop, self.pool, self.telemetry, settings)
        self.routing = Routing(settings, self.pool, self.telemetry, self.forwarding)
        self.contexts = ClientContexts(settings.trusted_networks())
        # TLS passthrough hosts of the current snapshot (--enable-ssl-passthrough).
        self.passthrough = Passthrough(self.loop, settings, self.connections)
        self._https: TLSListener | None = None
        self._servers: list[asyncio.Server | TLSListener] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_interval = self._interval(settings, ())
        self.http_port = 0
        self.https_port = 0
        # Certificates for the HTTPS listener, created when it starts (see proxy/tls.py).
        self.tls: TLSTerminator | None = None

    # ---- what the worker and tests read ------------------------------------------------------

    @property
    def generation(self) -> Generation | None:
        return self.routing.generation

    @property
    def stats(self) -> ServerStats:
        return self.telemetry.stats

    @property
    def metrics(self) -> RequestMetrics:
        return self.telemetry.metrics

    @property
    def access(self) -> AccessLog | None:
        return self.telemetry.access

    @property
    def clients(self) -> set[Client]:
        return self.connections.clients

    @property
    def tunnels(self) -> set[Pipe]:
        return self.connections.tunnels

    # ---- configuration -----------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Build a generation for `snapshot` and make it current; the old one stays on error."""
        router = build_router(snapshot)
        if self.tls is not None:
            self.tls.update(snapshot)  # before the swap: a refused certificate keeps the old
        generation = self.routing.install(snapshot, router)
        self._passthrough(generation)
        self._tick_interval = min(
            self._tick_interval, self._interval(self.settings, generation.routes.values())
        )

    def apply_endpoints(self, update: EndpointsUpdate) -> None:
        """Apply an endpoints-only update on top of the current snapshot (routes unchanged)."""
        generation = self.routing.apply_endpoints(update)
        self._passthrough(generation)
        self._tick_interval = min(
            self._tick_interval, self._interval(self.settings, generation.routes.values())
        )

    def _passthrough(self, generation: Generation) -> None:
        """Give the passthrough hosts (and clusters) of a new generation to the HTTPS
        listener: it peeks at ClientHellos only while there is one."""
        passthrough = self.passthrough
        passthrough.install(generation.snapshot, generation.clusters)
        if self._https is not None:
            self._https.handoff = passthrough.take if passthrough.active else None

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
        route: Route
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
        if self.routing.generation is None:
            raise RuntimeError("apply a snapshot before starting the proxy")
        loop = asyncio.get_running_loop()
        self.use_loop(loop)
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

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on `loop` (the running one, given by start())."""
        self.loop = loop
        self.pool.loop = loop
        self.forwarding.loop = loop
        self.passthrough.loop = loop

    def client_protocol(self, scheme: str, port: int) -> DownstreamProtocol:
        """The protocol of one client connection accepted on the `scheme` listener."""
        return DownstreamProtocol(
            self.loop,
            self.settings,
            self.routing,
            self.connections,
            self.telemetry,
            self.contexts,
            scheme,
            port,
        )

    def _http_factory(self) -> asyncio.Protocol:
        if self.settings.proxy_protocol:
            timeout = self.settings.client_header_timeout
            return HeaderReader(self.loop, timeout, self._proxied_http)
        return self.client_protocol("http", self.http_port)

    def _proxied_http(self, transport: asyncio.Transport, source: Source, rest: bytes) -> None:
        """A plain-HTTP connection whose PROXY header is read: HTTP from here on."""
        protocol = self.client_protocol("http", self.http_port)
        transport.set_protocol(protocol)
        if source is None:  # LOCAL / UNKNOWN: the connection's own peer
            protocol.connection_made(transport)
        else:
            protocol.accepted(transport, source[0])
        if rest and not protocol.closing:
            protocol.data_received(rest)

    async def _start_https(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | None,
        host: str,
        port: int,
    ) -> None:
        generation = self.routing.generation
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
            loop,
            sock,
            context,
            self._https_factory,
            self.settings.client_header_timeout,
            self.settings.proxy_protocol,
        )
        self.https_port = _bound_port(server)
        self._servers.append(server)
        self._https = server
        self._passthrough(generation)
        logger.info("proxy.listening", extra={"port": self.https_port, "scheme": "https"})

    def _https_factory(self) -> DownstreamProtocol:
        return self.client_protocol("https", self.https_port)

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish, close."""
        for server in self._servers:
            server.close()
        drained = self.connections.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), drain_timeout)
        for client in list(self.connections.clients):
            client.abort()
        for tunnel in list(self.connections.tunnels):
            tunnel.close()
        self.pool.close()
        self.pool.abort_all()
        await extauth.SESSIONS.close()  # the connections to auth services (auth-url)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self.telemetry.access is not None:
            self.telemetry.access.flush()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        logger.info("proxy.stopped", extra={"requests": self.stats.requests})

    # ---- timers ------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.loop.time()
        connections = self.connections
        expired: list[Timed] = [c for c in connections.clients if 0.0 < c.deadline <= now]
        expired.extend(c for c in self.pool.conns if 0.0 < c.deadline <= now)
        expired.extend(t for t in connections.tunnels if 0.0 < t.deadline <= now)
        for item in expired:
            try:
                item.timeout()
            except Exception:
                logger.exception("proxy.timeout_failed")
        access = self.telemetry.access
        if access is not None:
            access.flush()
        if self.tls is not None:
            self.tls.maybe_rotate()
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)

    # ---- introspection -----------------------------------------------------------------------

    def worker_stats(self) -> WorkerStats:
        """The STATS message: counters now, and the per-request series that moved since the
        previous call."""
        s = self.stats
        return WorkerStats(
            connections_open=len(self.connections.clients),
            tunnels_open=len(self.connections.tunnels),
            upstream_connections_open=len(self.pool.conns),
            upstream_connections_idle=self.pool.idle_count(),
            connections_total=s.connections_total,
            connections_refused=s.connections_refused,
            requests=s.requests,
            local_replies=s.local_replies,
            rejected=s.rejected,
            upstream_connects=self.pool.connects,
            upstream_connect_failures=s.upstream_connect_failures,
            upstream_stale_retries=s.upstream_stale_retries,
            request_metrics=self.telemetry.metrics.export(),
        )


def _bound_port(server: Any) -> int:
    # Any, not asyncio.Server: uvloop's Server.sockets is a list where typeshed says a tuple,
    # and compiled code (mypyc) checks the declared type.
    return int(server.sockets[0].getsockname()[1])
