"""Compiler and route-lookup micro-benchmarks (pytest-benchmark; skipped by default).

Run with `pytest tests/bench/test_compile_bench.py --benchmark-enable` (or --benchmark-only).
Targets at 10,000 Ingresses (20,000 paths, 5,000 Services, 50,000 endpoints), one core:
a full compile under 2 s; after one EndpointSlice change, `Compiler.compile` under 50 ms.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest

from controller.compiler import Compiler, CompileSettings, compile_view
from controller.compiler.ingress import host_error, path_error
from controller.objects import READ_KINDS, parse_object
from controller.store import Store, WatchEvent
from proxy.table import Router
from tests.kube_factory import (
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
)

INGRESSES = 10_000
SERVICES = 5_000
ENDPOINTS_PER_SERVICE = 10
NAMESPACES = 50
SETTINGS = CompileSettings()


def _ip(service_index: int, endpoint_index: int) -> str:
    n = service_index * ENDPOINTS_PER_SERVICE + endpoint_index
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _slice(i: int, generation: int = 0) -> dict[str, Any]:
    ns = f"ns-{i % NAMESPACES}"
    eps = [_ip(i, e) for e in range(ENDPOINTS_PER_SERVICE)]
    if generation:
        eps = eps[generation % ENDPOINTS_PER_SERVICE :]  # a pod went away
    return endpoint_slice(f"svc-{i}-abc", f"svc-{i}", ns, endpoints=eps, ports=[("http", 8080)])


def scale_objects() -> list[dict[str, Any]]:
    """The raw objects of the scale target (also loaded into the API simulator by
    tests/bench/cluster_scale.py)."""
    raws: list[dict[str, Any]] = [ingress_class()]
    for i in range(SERVICES):
        ns = f"ns-{i % NAMESPACES}"
        raws.append(service(f"svc-{i}", ns, ports=[service_port(80, "http")]))
        raws.append(_slice(i))
    for i in range(INGRESSES):
        svc = i % SERVICES
        ns = f"ns-{svc % NAMESPACES}"
        raws.append(
            ingress(
                f"ing-{i}",
                ns,
                rules=[
                    rule(
                        f"host-{i}.example.com",
                        path("/", f"svc-{svc}", 80),
                        path(f"/api/v{i % 3}", f"svc-{svc}", "http", "Exact"),
                    )
                ],
                created=i,
            )
        )
    return raws


@functools.cache
def big_store() -> Store:
    store = Store()
    raws = scale_objects()
    for raw in raws:
        obj = parse_object(raw)
        assert obj is not None
        store.apply(WatchEvent("ADDED", obj))
    for kind in READ_KINDS:
        store.mark_listed(kind)
    return store


def _cold() -> tuple[tuple[Any, ...], dict[str, Any]]:
    # Validation caches are process-wide; clear them so every round is a cold compile.
    host_error.cache_clear()
    path_error.cache_clear()
    return (big_store(), SETTINGS), {}


def test_full_compile(benchmark: Any) -> None:
    store = big_store()
    result = benchmark.pedantic(compile_view, setup=_cold, rounds=5, iterations=1)
    assert len(result.owned) == INGRESSES
    assert sum(len(vh.rules) for vh in result.snapshot.routes.virtual_hosts) == 2 * INGRESSES
    assert sum(len(b.endpoints) for b in result.snapshot.backends) == 2 * SERVICES * 10
    assert result.problems == ()
    benchmark.extra_info["objects"] = len(store)


@pytest.fixture
def warm_compiler() -> Compiler:
    compiler = Compiler(SETTINGS)
    compiler.compile(big_store())
    return compiler


def test_endpoint_slice_change(benchmark: Any, warm_compiler: Compiler) -> None:
    store = big_store()
    counter = itertools.count(1)
    previous = warm_compiler.compile(store)

    def change_and_compile() -> Any:
        n = next(counter)
        obj = parse_object(_slice(n % SERVICES, n))
        assert obj is not None
        store.apply(WatchEvent("MODIFIED", obj))
        return warm_compiler.compile(store)

    result = benchmark.pedantic(change_and_compile, rounds=50, iterations=1)
    assert result.snapshot.routes is previous.snapshot.routes


def test_router_route(benchmark: Any) -> None:
    result = compile_view(big_store(), SETTINGS)
    router = Router(result.snapshot.routes)
    got = benchmark(router.route, "Host-4242.Example.com:443", "/static/css/site.css")
    assert got is not None and got.ingress == "ns-42/ing-4242"


def test_router_route_exact(benchmark: Any) -> None:
    result = compile_view(big_store(), SETTINGS)
    router = Router(result.snapshot.routes)
    got = benchmark(router.route, "host-4242.example.com", "/api/v0")
    assert got is not None and got.match == "exact"


def test_router_build(benchmark: Any) -> None:
    routes = compile_view(big_store(), SETTINGS).snapshot.routes
    router = benchmark(Router, routes)
    assert router.route("host-1.example.com", "/") is not None
