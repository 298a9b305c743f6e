"""Routing state of one worker and its swap; the dispatch of each request head.

`Routing.install(snapshot, router)` builds a `Generation` (route table, one `Route` per path
rule, clusters by backend key) off the request path and swaps it in as one reference; every
request captures the generation once, when its head is complete (`open_exchange`), so a swap
never changes a request mid-flight. Clusters (balancer and ejection state) and pooled upstream
connections of unchanged endpoints carry over; pools of endpoints that disappeared are closed
once idle. An endpoints-only update (`apply_endpoints`) changes clusters in place and keeps
routes and the route table.

`open_exchange` turns a complete request head into an `Exchange`: validated (a bad head is a
local reply that closes the connection), routed, and put through the request steps of the
route's policy for the listener it came on (proxy/policy.py): the first step that answers ends
the exchange with that answer, else it is forwarded. A step that waits (external auth) and the
steps after it are left to the exchange (`Exchange.checking`).
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.clientside import ClientSide
from proxy.cluster import Cluster
from proxy.config import (
    Backend,
    EndpointsUpdate,
    PathRule,
    RouteTable,
    Snapshot,
    SnapshotError,
    apply_endpoints_update,
)
from proxy.exchange import Exchange, Forwarding
from proxy.headers import BadRequest, parse_request
from proxy.policy import Policies
from proxy.pool import Pool
from proxy.replies import NO_ROUTE, Answer
from proxy.route import Route
from proxy.settings import ProxySettings
from proxy.table import Router
from proxy.telemetry import Telemetry


def build_router(snapshot: Snapshot) -> Router:
    """The route table of a snapshot; raises SnapshotError when it cannot be built."""
    try:
        return Router(snapshot.routes)
    except (SnapshotError, ValueError):
        raise
    except Exception as exc:  # a bug in the table must not take the worker down
        raise SnapshotError(f"cannot build the route table: {exc}") from exc


class Generation:
    """Everything one snapshot needs on the request path; immutable once built."""

    __slots__ = ("clusters", "policies", "router", "routes", "settings", "snapshot")

    def __init__(
        self,
        snapshot: Snapshot,
        router: Router,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        policies: Policies,
        routes: dict[int, Route],
    ) -> None:
        self.snapshot = snapshot
        self.router = router
        self.clusters = clusters
        self.settings = settings
        self.policies = policies
        self.routes = routes

    @staticmethod
    def build_routes(
        table: RouteTable,
        clusters: dict[str, Cluster],
        settings: ProxySettings,
        policies: Policies,
    ) -> dict[int, Route]:
        """The Route of every rule, keyed by the identity of the snapshot's rule objects:
        hashing a frozen dataclass hashes all its fields, on every lookup."""
        policies.start()
        routes: dict[int, Route] = {}
        for vhost in table.virtual_hosts:
            host = vhost.host
            for rule in vhost.rules:
                routes[id(rule)] = Route(rule, clusters, settings, policies, host)
            if vhost.fallback is not None:
                fallback = vhost.fallback
                routes[id(fallback)] = Route(fallback, clusters, settings, policies, host)
        if table.default is not None:
            routes[id(table.default)] = Route(table.default, clusters, settings, policies)
        return routes

    def route_for(self, rule: PathRule) -> Route:
        route = self.routes.get(id(rule))
        if route is None or route.rule is not rule:
            route = Route(rule, self.clusters, self.settings, self.policies)
        return route

    def with_snapshot(self, snapshot: Snapshot) -> Generation:
        """This generation for a snapshot with the same routes (an endpoints-only update)."""
        return Generation(
            snapshot, self.router, self.clusters, self.settings, self.policies, self.routes
        )


class Routing:
    """The current generation of one worker, its swap, and the dispatch of request heads."""

    __slots__ = (
        "_clusters",
        "_generation",
        "forwarding",
        "policies",
        "pool",
        "settings",
        "telemetry",
    )

    def __init__(
        self,
        settings: ProxySettings,
        pool: Pool,
        telemetry: Telemetry,
        forwarding: Forwarding,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.telemetry = telemetry
        self.forwarding = forwarding
        self.policies = Policies(settings)
        self._generation: Generation | None = None
        self._clusters: dict[str, Cluster] = {}

    @property
    def generation(self) -> Generation | None:
        return self._generation

    # ---- the swap ----------------------------------------------------------------------------

    def install(self, snapshot: Snapshot, router: Router) -> Generation:
        """Build the generation of `snapshot` (its route table already built) and make it
        current."""
        old = self._clusters
        clusters: dict[str, Cluster] = {}
        for backend in snapshot.backends:
            cluster = old.get(backend.key)
            if cluster is None:
                cluster = Cluster(backend, self.settings)
            elif cluster.backend != backend:
                cluster.update(backend)
            clusters[backend.key] = cluster
        routes = Generation.build_routes(snapshot.routes, clusters, self.settings, self.policies)
        generation = Generation(snapshot, router, clusters, self.settings, self.policies, routes)
        self._clusters = clusters
        self._generation = generation
        self.pool.retain(_endpoint_keys(snapshot.backends))
        return generation

    def apply_endpoints(self, update: EndpointsUpdate) -> Generation:
        """Apply an endpoints-only update on top of the current snapshot (routes unchanged)."""
        current = self._generation
        if current is None:
            raise SnapshotError("no snapshot to apply an endpoints update to")
        snapshot = apply_endpoints_update(current.snapshot, update)
        if update.removed or not self._clusters_updatable(update.backends):
            return self.install(snapshot, current.router)
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
        generation = self._generation = current.with_snapshot(snapshot)
        if gone:
            self.pool.retain(_endpoint_keys(snapshot.backends))
        return generation

    def _clusters_updatable(self, backends: tuple[Backend, ...]) -> bool:
        """Whether every changed backend exists and stays as usable (or not) as it was."""
        for backend in backends:
            cluster = self._clusters.get(backend.key)
            if cluster is None or cluster.backend.unavailable != backend.unavailable:
                return False
        return True

    # ---- dispatch ----------------------------------------------------------------------------

    def open_exchange(
        self,
        client: ClientSide,
        method: bytes,
        url: bytes,
        version: str,
        parts: list[bytes],
        special: list[tuple[bytes, bytes]],
    ) -> Exchange:
        """Validate and route a complete request head (capturing the current generation)."""
        fwd = self.forwarding
        ctx = client.ctx
        assert ctx is not None
        unrouted = self.policies.unrouted
        try:
            head = parse_request(method, url, version, parts, special, ctx)
        except BadRequest as exc:
            self.telemetry.reject(ctx, exc.status, exc.reason)
            refusal = Answer(exc.status, exc.reason, close=True)
            policy = unrouted[1] if ctx.secure else unrouted[0]
            return Exchange(fwd, client, None, None, policy, refusal, client.read_at, url)
        generation = self._generation
        assert generation is not None
        rule = generation.router.route_raw(head.host, head.path)
        if rule is None:
            policy = unrouted[1] if ctx.secure else unrouted[0]
            return Exchange(fwd, client, head, None, policy, NO_ROUTE, client.read_at)
        route = generation.routes.get(id(rule))
        if route is None or route.rule is not rule:
            route = generation.route_for(rule)
        policy = route.secure if ctx.secure else route.plain
        steps = policy.request
        held = 0  # a rate-limit count taken for this request (limit-connections)
        if steps:
            for i in range(len(steps)):
                step = steps[i]
                if step.waits:
                    # An external check: the exchange runs it, then the steps after it.
                    waiting = Exchange(fwd, client, head, route, policy, None, client.read_at)
                    waiting.checking = i
                    return waiting
                answer = step.request(head, ctx)
                if answer is not None:
                    if answer.close:
                        self.telemetry.reject(ctx, answer.status, answer.reason)
                    answered = Exchange(fwd, client, head, route, policy, answer, client.read_at)
                    if policy.limiter is not None:
                        answered.held = policy.limiter.take_held()
                    return answered
            if policy.limiter is not None:
                # limit-connections counted this request: its exchange gives it back.
                held = policy.limiter.take_held()
        canary = route.canary
        if canary is not None and route.chooses_canary(head):
            # The main rule's policy ran and stays; the canary's backend serves, unless it has
            # no endpoints (ingress-nginx then has no balancer for it and keeps the main one).
            alternative = route.canary_route
            assert alternative is not None
            cluster = alternative.cluster
            if cluster is not None and cluster.backend.endpoints:
                route = alternative
        if route.cluster is None:
            unavailable = route.unavailable_answer
            exchange = Exchange(fwd, client, head, route, policy, unavailable, client.read_at)
        else:
            exchange = Exchange(fwd, client, head, route, policy, None, client.read_at)
        if held:
            exchange.held = held
        return exchange

    def local_exchange(
        self, client: ClientSide, status: int, reason: str, url: bytes = b""
    ) -> Exchange:
        """A local reply owed on a connection that refuses what follows (closes after it)."""
        ctx = client.ctx
        unrouted = self.policies.unrouted
        policy = unrouted[1] if ctx is not None and ctx.secure else unrouted[0]
        answer = Answer(status, reason, close=True)
        return Exchange(self.forwarding, client, None, None, policy, answer, 0.0, url)


def _endpoint_keys(backends: Iterable[Backend]) -> frozenset[tuple[str, int]]:
    return frozenset((e.address, e.port) for b in backends for e in b.endpoints)
