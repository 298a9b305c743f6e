"""One path rule resolved for the data path: its cluster, timeouts, upstream TLS and policy.

A worker builds a `Route` per `PathRule` of a snapshot when it applies it (`proxy/routing.py`)
and every request matching that rule reads it: everything here is decided once per snapshot so
the request path only reads attributes. Routes of an endpoints-only update are kept as they are
(their clusters absorb the new endpoints in place).
"""

from __future__ import annotations

import dataclasses
from typing import Final

from proxy.affinity import CanarySessions, Chooser, StickyChooser, chooser_for
from proxy.canary import CanaryChoice
from proxy.cluster import Cluster
from proxy.config import (
    BalancerKind,
    Canary,
    ErrorPages,
    HashBy,
    PathRule,
    PolicyStep,
    RouteOptions,
    StickySessions,
)
from proxy.errorpages import ErrorBackend
from proxy.headers import RequestHead
from proxy.metrics import RequestMetrics, Series
from proxy.policy import Policies, Policy
from proxy.replies import Answer
from proxy.retry import UNLIMITED_TRIES, NextUpstream
from proxy.settings import ProxySettings
from proxy.tls import UpstreamTLS, upstream_tls

# Why a route cannot serve that its default backend answers for (ingress-nginx's "no active
# endpoints": a missing Service or port leaves its upstream without endpoints too). Not a CA
# bundle that does not load, nor a disabled ExternalName: those stay 503.
FALLBACK_REASONS: Final = frozenset({"ServiceNotFound", "ServicePortNotFound", "BackendNotFound"})


class Route:
    """A path rule resolved for the data path: its cluster, limits and policy."""

    __slots__ = (
        "access_log",
        "affinity",
        "balancer",
        "canary",
        "canary_route",
        "canary_sessions",
        "cluster",
        "connect_timeout",
        "error_route",
        "errors",
        "grpc",
        "head_limit",
        "host",
        "key",
        "limit_rate",
        "limit_rate_after",
        "max_attempts",
        "next_upstream",
        "plain",
        "read_timeout",
        "request_buffering",
        "rule",
        "secure",
        "send_timeout",
        "series",
        "track",
        "unavailable",
        "unavailable_answer",
        "upstream_tls",
    )

    def __init__(
        self,
        rule: PathRule,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        policies: Policies,
        host: str = "",
    ) -> None:
        options = rule.options
        self.rule = rule
        self.key = rule.backend
        # The host pattern of the virtual host the rule belongs to ("" for host-less rules and
        # the default backend): a label of the request metrics.
        self.host = host
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
        # False: the route's requests leave no access-log entry (enable-access-log "false").
        self.access_log = options.access_log
        # Retries (proxy/retry.py): None keeps the exchange's own rules (connect failures, and
        # idempotent requests whose connection closed before any answer).
        self.next_upstream: NextUpstream | None = None
        if options.next_upstream is not None:
            self.next_upstream = NextUpstream(options.next_upstream, options.next_upstream_timeout)
        tries = options.next_upstream_tries
        # Attempts in all, each on a pod not tried yet for the request.
        self.max_attempts = (
            settings.upstream_max_attempts if tries is None else tries or UNLIMITED_TRIES
        )
        # Read the whole request body before choosing a pod (proxy-request-buffering "on").
        self.request_buffering = options.request_buffering
        # The largest response head taken from a pod (proxy-buffer-size); 0: Portico's bound.
        self.head_limit = options.response_head_limit or 0
        # limit-rate (bytes per second; 0: none, and the exchange pays one attribute test per
        # response) and limit-rate-after (bytes at full speed first): proxy/pacing.py.
        self.limit_rate = options.limit_rate
        self.limit_rate_after = options.limit_rate_after
        # The policy steps of requests on the plain-HTTP listener and on the HTTPS one.
        self.plain: Policy
        self.secure: Policy
        self.plain, self.secure = policies.for_steps(options.policy)
        # None: plain HTTP to the pods; else the TLS identity (also part of the pool key).
        self.upstream_tls: UpstreamTLS | None = None
        # backend-protocol GRPC / GRPCS: HTTP/2 streams to the pods (proxy/grpc.py).
        self.grpc = options.upstream_protocol in ("GRPC", "GRPCS")
        if options.upstream_protocol in ("HTTPS", "GRPCS"):
            name = options.upstream_server_name
            if name is None and rule.service is not None:
                namespace, _, service = rule.service.partition("/")
                name = f"{service}.{namespace}.svc"
            try:
                self.upstream_tls = upstream_tls(
                    name or "", options.upstream_ca_pem, http2=self.grpc
                )
            except ValueError:
                # The compiler validates CA bundles; a bad one must not go out unverified.
                self.unavailable = "UpstreamCAInvalid"
                self.cluster = None
        # The answer of every request while the backend cannot serve (503 with the reason).
        self.unavailable_answer = (
            None if self.unavailable is None else Answer(503, self.unavailable)
        )
        # The route's default backend (proxy/errorpages.py): None for nearly every route, and
        # then the exchange pays one attribute test per response.
        self.errors: ErrorBackend | None = None
        self.error_route: Route | None = None
        spec = options.step(ErrorPages) if options.policy else None
        if spec is not None:
            self._error_pages(spec, clusters, settings, policies, host)
        # Sticky sessions or consistent hashing (proxy/affinity.py): None for nearly every
        # route, and then the exchange's balancer picks the pod.
        self.affinity: Chooser | None = None
        if options.policy:
            sticky = options.step(StickySessions)
            hashing = options.step(HashBy)
            if sticky is not None or hashing is not None:
                # A regex rule's path is no cookie Path: "/" unless session-cookie-path.
                path = rule.path if rule.match != "regex" else "/"
                self.affinity = chooser_for(sticky, hashing, rule.backend, path)
        # The route's canary (proxy/canary.py): None for nearly every route, and then a request
        # pays one attribute test.
        self.canary: CanaryChoice | None = None
        self.canary_route: Route | None = None
        # The affinity cookie's hold on a sticky rule with a canary (proxy/affinity.py).
        self.canary_sessions: CanarySessions | None = None
        canary = options.step(Canary) if options.policy else None
        if canary is not None:
            self._canary(canary, clusters, settings, policies, host)

    def _error_pages(
        self,
        spec: ErrorPages,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        policies: Policies,
        host: str,
    ) -> None:
        rule = self.rule
        options = rule.options
        # The default backend is reached over plain HTTP with the route's timeouts (nginx's
        # error locations proxy_pass http://upstream_balancer in the same server block).
        error_rule = PathRule(
            rule.path,
            rule.match,
            spec.backend,
            rule.ingress,
            spec.service,
            None,
            rule.path_type,
            RouteOptions(
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                send_timeout=options.send_timeout,
            ),
        )
        self.error_route = Route(error_rule, clusters, settings, policies, host)
        self.errors = ErrorBackend(spec, rule)
        if spec.fallback and self.unavailable in FALLBACK_REASONS:
            # No local 503: the exchange finds no cluster and sends the request there.
            self.unavailable_answer = None

    def _canary(
        self,
        spec: Canary,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        policies: Policies,
        host: str,
    ) -> None:
        rule = self.rule
        options = rule.options
        # The canary's requests are the main rule's in all but the backend (ingress-nginx's
        # location is the main Ingress's): the same options and steps, without the canary, and
        # the canary backend's own balancer; the rule names the canary's Ingress and Service
        # for logs and metrics. Its backend's pod choice is ingress-nginx's for an alternative
        # backend: the main rule's sticky sessions copied to it (affinity-canary-behavior
        # "sticky"; none with "legacy"), else the canary Ingress's own upstream-hash-by.
        steps: list[PolicyStep] = [s for s in options.policy if not isinstance(s, (Canary, HashBy))]
        if spec.affinity_behavior == "legacy":
            steps = [s for s in steps if not isinstance(s, StickySessions)]
        if spec.hash_by:
            steps.append(HashBy(spec.hash_by, spec.hash_by_subset, spec.hash_by_subset_size))
        canary_rule = PathRule(
            rule.path,
            rule.match,
            spec.backend,
            spec.ingress,
            spec.service,
            int(spec.port) if spec.port.isdigit() else spec.port or None,
            rule.path_type,
            dataclasses.replace(
                options,
                policy=tuple(steps),
                balancer="least_request" if spec.balancer == "least_request" else "round_robin",
            ),
        )
        canary_route = Route(canary_rule, clusters, settings, policies, host)
        self.canary_route = canary_route
        self.canary = CanaryChoice(spec)
        main = self.affinity
        if isinstance(main, StickyChooser):
            held = canary_route.affinity
            canary_tag = held.tag if isinstance(held, StickyChooser) else b""
            self.canary_sessions = CanarySessions(main.cookie_name, main.tag, canary_tag)

    def chooses_canary(self, head: RequestHead) -> bool:
        """Whether a request of this rule (which has a canary) goes to the canary's backend:
        an affinity cookie holding it to one of the two backends decides first (sticky rules
        only), then the canary's header, cookie and weight rules."""
        sessions = self.canary_sessions
        if sessions is not None:
            side = sessions.side(head)
            if side:
                return side > 0
        canary = self.canary
        return canary is not None and canary.chooses(head)

    def series_in(self, metrics: RequestMetrics) -> Series:
        """This rule's request metrics (created on the first request of the route)."""
        series = self.series
        if series is None:
            rule = self.rule
            series = metrics.series_for((rule.ingress, rule.service or "", self.host, rule.path))
            self.series = series
        return series
