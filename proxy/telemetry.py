"""What one worker counts and logs about its traffic: counters, request metrics, access log.

The worker's server builds one `Telemetry` and hands it to the protocols and exchanges, which
count into it on the request path (plain attribute increments, one `RequestMetrics.record` and
one access-log entry per finished exchange); the server reads it for the STATS message and
flushes the access log on its timer sweep. Refusals (requests that never became an exchange, or
that are refused outright) are logged here as `request.rejected`.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.accesslog import AccessLog
from proxy.headers import ClientContext
from proxy.metrics import RequestMetrics
from proxy.settings import ProxySettings

logger = logging.getLogger("portico.proxy")


class ServerStats:
    """Plain counters, read by the worker for metrics."""

    __slots__ = (
        "connections_refused",
        "connections_total",
        "http2_flood_trips",
        "http2_goaways_sent",
        "http2_resets_received",
        "http2_resets_sent",
        "http2_streams",
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
        # HTTP/2 (proxy/h2server.py): streams opened by clients, RST_STREAM frames received and
        # sent (Portico's and the codec's), GOAWAYs sent, connections a flood limit ended.
        self.http2_streams = 0
        self.http2_resets_received = 0
        self.http2_resets_sent = 0
        self.http2_goaways_sent = 0
        self.http2_flood_trips = 0


class Telemetry:
    __slots__ = ("access", "metrics", "stats")

    def __init__(self, settings: ProxySettings) -> None:
        self.stats = ServerStats()
        self.metrics = RequestMetrics(settings.metrics_ingress_nginx_names)
        self.access: AccessLog | None = AccessLog() if settings.access_log else None

    def reject(
        self, ctx: ClientContext | None, status: int, reason: str, detail: str | None = None
    ) -> None:
        """A request refused outright (malformed, too large, too slow): one log line."""
        self.stats.rejected += 1
        extra: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "client": ctx.client_ip.decode() if ctx is not None else None,
        }
        if detail:
            extra["detail"] = detail
        logger.info("request.rejected", extra=extra)

    def refused(self, ctx: ClientContext | None, url: bytes, status: int, reason: str) -> None:
        """Count and access-log a request refused before it became an exchange (its head
        could not be parsed): no method, host or route to tell."""
        self.metrics.record_refusal(status, reason)
        if self.access is not None:
            self.access.record(
                (
                    ctx.client_ip if ctx is not None else b"",
                    b"",
                    b"",
                    url[:256],
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
                    b"HTTP/1.1",  # refused by the HTTP/1.1 parser
                )
            )
