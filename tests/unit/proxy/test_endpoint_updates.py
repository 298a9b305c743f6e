"""Endpoint-only updates in a worker: applied in place, or rebuilt when usability changes."""

from __future__ import annotations

from proxy.config import (
    Backend,
    Endpoint,
    EndpointsUpdate,
    PathRule,
    RouteTable,
    Snapshot,
    VirtualHost,
)
from proxy.server import ProxyServer
from proxy.settings import ProxySettings

KEY = "ns/web/80"


def snapshot() -> Snapshot:
    rule = PathRule("/", "prefix", KEY, "ns/web", "ns/web", 80, "Prefix")
    backend = Backend(KEY, (Endpoint("127.0.0.2", 80), Endpoint("127.0.0.3", 80)))
    return Snapshot(RouteTable((VirtualHost("a.example", (rule,)),)), (backend,), version=1)


def test_endpoint_change_is_applied_in_place() -> None:
    server = ProxyServer(ProxySettings())
    server.apply(snapshot())
    before = server.generation
    assert before is not None
    cluster = before.clusters[KEY]
    moved = Backend(KEY, (Endpoint("127.0.0.4", 80),))
    server.apply_endpoints(EndpointsUpdate(1, 2, (moved,)))
    after = server.generation
    assert after is not None and after is not before
    assert after.snapshot.version == 2 and after.snapshot.backends == (moved,)
    assert after.routes is before.routes and after.router is before.router
    assert after.clusters[KEY] is cluster and cluster.endpoints == moved.endpoints
    route = next(iter(after.routes.values()))
    assert route.unavailable is None and cluster.pick("round_robin") == moved.endpoints[0]


def test_backend_becoming_unusable_rebuilds_routes() -> None:
    server = ProxyServer(ProxySettings())
    server.apply(snapshot())
    before = server.generation
    assert before is not None
    gone = Backend(KEY, (), unavailable="ServiceNotFound")
    server.apply_endpoints(EndpointsUpdate(1, 2, (gone,)))
    after = server.generation
    assert after is not None and after.routes is not before.routes
    assert next(iter(after.routes.values())).unavailable == "ServiceNotFound"
