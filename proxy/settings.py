"""Data-plane settings: listeners, limits and timeouts of one worker.

Filled from `portico serve` / `portico controller` flags by the controller and handed to each
worker when it starts (as JSON over its channel), so `proxy/` never parses command lines itself.
Every field's default is the documented default of its flag.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxySettings:
    # Listeners (public). Port 0 disables a listener.
    bind_address: str = "0.0.0.0"
    http_port: int = 8080
    https_port: int = 8443

    # Request limits.
    max_header_bytes: int = 32 * 1024  # request line + headers; 414 / 431 beyond
    max_headers: int = 100  # header fields; 431 beyond
    # Request body; 413 beyond; 0 = unlimited. 1 MiB is ingress-nginx's default (its ConfigMap's
    # proxy-body-size "1m", nginx's client_max_body_size): an Ingress migrated without a
    # proxy-body-size annotation keeps the limit it had.
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 10_000  # open client connections per worker

    # Client-side timeouts (seconds).
    client_header_timeout: float = 10.0  # first byte to end of head (slowloris)
    client_body_timeout: float = 60.0  # between two reads of a request body
    keepalive_timeout: float = 75.0  # idle between two requests on one connection

    # Upstream timeouts (seconds) and pool.
    upstream_connect_timeout: float = 5.0
    upstream_send_timeout: float = 60.0  # between two writes of the request body
    upstream_read_timeout: float = 60.0  # waiting for response head / between body reads
    upstream_keepalive_timeout: float = 60.0  # idle pooled connection lifetime
    upstream_keepalive_max: int = 64  # idle pooled connections kept per endpoint (more: 1 s)
    # Seconds one upstream connection is reused before it is closed once idle: a long-lived
    # connection keeps the pod's congestion state from long ago (see proxy/pool.py).
    upstream_keepalive_time: float = 5.0
    upstream_max_attempts: int = 3  # distinct endpoints tried on connect failure
    ejection_base: float = 1.0  # seconds an endpoint is ejected after a connect failure
    ejection_max: float = 30.0  # cap of the doubling backoff

    tunnel_idle_timeout: float = 3600.0  # WebSocket / upgraded connections

    # X-Forwarded-* headers from these client networks are trusted and extended; from any other
    # client they are overwritten.
    trusted_proxies: tuple[str, ...] = ()
    # Every connection on the HTTP and HTTPS listeners begins with a PROXY protocol header (v1
    # or v2, as load balancers send it; proxy/proxyprotocol.py) whose source address stands for
    # the peer; a connection without a valid one is closed.
    proxy_protocol: bool = False
    # The HTTPS listener reads each new connection's ClientHello (SNI) first and splices the
    # connections of hosts with the ssl-passthrough annotation to their pods unterminated
    # (proxy/passthrough.py); ingress-nginx's --enable-ssl-passthrough. Off: the annotation
    # is a problem and such hosts are terminated like any other.
    enable_ssl_passthrough: bool = False

    access_log: bool = True
    # Also export metrics under ingress-nginx's names and labels (workers then keep the size
    # histograms those need).
    metrics_ingress_nginx_names: bool = False

    # TLS on the HTTPS listener.
    tls_min_version: str = "1.2"  # "1.2" or "1.3"
    hsts: bool = True  # Strict-Transport-Security on HTTPS responses
    hsts_max_age: int = 31_536_000
    hsts_include_subdomains: bool = True

    # HTTP/2 (proxy/h2server.py): ALPN h2 on the HTTPS listener; with h2c, cleartext HTTP/2 with
    # prior knowledge on the HTTP listener too; a graceful GOAWAY after so many streams on one
    # connection (ingress-nginx's http2-max-requests, 1000); so many streams open at once per
    # connection (SETTINGS_MAX_CONCURRENT_STREAMS, ingress-nginx's http2-max-concurrent-streams).
    http2: bool = True
    h2c: bool = False
    http2_max_requests: int = 1000
    http2_max_concurrent_streams: int = 128

    # Graceful shutdown (SIGTERM/SIGINT): /readyz fails at once, listeners stay open this long so
    # load balancers notice, then in-flight requests get up to drain_timeout to finish.
    shutdown_delay: float = 5.0
    drain_timeout: float = 30.0

    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProxySettings:
        raw: dict[str, Any] = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "trusted_proxies" in values:
            values["trusted_proxies"] = tuple(values["trusted_proxies"])
        return cls(**values)
