"""Compiler tables: Service port resolution, EndpointSlices, endpoint conditions, ExternalName."""

from __future__ import annotations

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from proxy.config import Backend, Endpoint
from proxy.table import Router
from tests.kube_factory import (
    Raw,
    endpoint,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
)


def run(*raws: Raw, port: int | str = 80, allow_external_name: bool = False) -> CompileResult:
    ing = ingress(rules=[rule("a.example.com", path("/", "web", port))])
    settings = CompileSettings(allow_external_name=allow_external_name)
    return compile_view(store_of(ingress_class(), ing, *raws), settings)


def only_backend(result: CompileResult) -> Backend:
    assert len(result.snapshot.backends) == 1
    return result.snapshot.backends[0]


def addresses(result: CompileResult) -> list[tuple[str, int, bool]]:
    return [(e.address, e.port, e.ready) for e in only_backend(result).endpoints]


PORT_ROWS: list[tuple[str, int | str, list[Raw], list[Raw], list[tuple[str, int, bool]], str]] = [
    # (id, ingress port, service ports, slices, endpoints, problem reason or "")
    (
        "number-unnamed",
        80,
        [service_port(80)],
        [endpoint_slice(ports=[(None, 8080)])],
        [("127.0.0.2", 8080, True)],
        "",
    ),
    (
        "number-to-named-port",
        80,
        [service_port(80, "http"), service_port(81, "admin")],
        [endpoint_slice(ports=[("http", 8080), ("admin", 9000)])],
        [("127.0.0.2", 8080, True)],
        "",
    ),
    (
        "by-name",
        "admin",
        [service_port(80, "http"), service_port(81, "admin")],
        [endpoint_slice(ports=[("http", 8080), ("admin", 9000)])],
        [("127.0.0.2", 9000, True)],
        "",
    ),
    (
        "target-port-is-never-read",
        80,
        [service_port(80, "http", target=1234)],
        [endpoint_slice(ports=[("http", 8080)])],
        [("127.0.0.2", 8080, True)],
        "",
    ),
    (
        "slice-without-matching-port-name",
        80,
        [service_port(80, "http")],
        [endpoint_slice(ports=[("grpc", 9090)])],
        [],
        "",
    ),
    ("no-slices-no-endpoints", 80, [service_port(80)], [], [], ""),
    (
        "port-number-missing",
        81,
        [service_port(80)],
        [endpoint_slice()],
        [],
        "ServicePortNotFound",
    ),
    (
        "port-name-missing",
        "http",
        [service_port(80, "web")],
        [endpoint_slice()],
        [],
        "ServicePortNotFound",
    ),
    (
        "several-slices",
        80,
        [service_port(80)],
        [
            endpoint_slice("web-1", endpoints=["127.0.0.2", "127.0.0.3"]),
            endpoint_slice("web-2", endpoints=["127.0.0.4"]),
        ],
        [("127.0.0.2", 8080, True), ("127.0.0.3", 8080, True), ("127.0.0.4", 8080, True)],
        "",
    ),
    (
        "duplicates-deduped-ready-wins",
        80,
        [service_port(80)],
        [
            endpoint_slice(
                "web-1",
                endpoints=[endpoint("127.0.0.2", ready=False, serving=True, terminating=True)],
            ),
            endpoint_slice("web-2", endpoints=["127.0.0.2", "127.0.0.2"]),
        ],
        [("127.0.0.2", 8080, True)],
        "",
    ),
    (
        "ipv6",
        80,
        [service_port(80)],
        [endpoint_slice(endpoints=["::1"], address_type="IPv6")],
        [("::1", 8080, True)],
        "",
    ),
    (
        "dual-stack",
        80,
        [service_port(80)],
        [
            endpoint_slice("web-v4", endpoints=["127.0.0.2"]),
            endpoint_slice("web-v6", endpoints=["::1"], address_type="IPv6"),
        ],
        [("127.0.0.2", 8080, True), ("::1", 8080, True)],
        "",
    ),
    (
        "fqdn-ignored",
        80,
        [service_port(80)],
        [endpoint_slice(endpoints=["pod.example.com"], address_type="FQDN")],
        [],
        "",
    ),
    (
        "other-service-slice-ignored",
        80,
        [service_port(80)],
        [endpoint_slice("api-1", service="api")],
        [],
        "",
    ),
    (
        "other-namespace-slice-ignored",
        80,
        [service_port(80)],
        [endpoint_slice("web-x", namespace="other")],
        [],
        "",
    ),
    (
        "unlabelled-slice-ignored",
        80,
        [service_port(80)],
        [endpoint_slice("web-x", service=None)],
        [],
        "",
    ),
]


@pytest.mark.parametrize(
    ("port", "ports", "slices", "expected", "problem"),
    [pytest.param(*row[1:], id=row[0]) for row in PORT_ROWS],
)
def test_port_resolution_and_slices(
    port: int | str,
    ports: list[Raw],
    slices: list[Raw],
    expected: list[tuple[str, int, bool]],
    problem: str,
) -> None:
    result = run(service("web", ports=ports), *slices, port=port)
    backend = only_backend(result)
    assert backend.key == f"default/web/{port}"
    assert addresses(result) == expected
    if problem:
        assert {p.reason for p in result.problems} == {problem}
        assert backend.unavailable == problem
    else:
        assert result.problems == ()
        assert backend.unavailable is None


CONDITION_ROWS: list[tuple[bool | None, bool | None, bool | None, bool | None]] = [
    # (ready, serving, terminating) -> Endpoint.ready, or None for excluded
    (True, None, None, True),
    (None, None, None, True),  # ready nil = true
    (True, True, False, True),
    (False, True, True, False),  # serving and terminating: fallback endpoint
    (False, None, True, False),  # serving nil = true
    (False, False, True, None),
    (False, True, False, None),  # not ready, not terminating: starting up
    (False, True, None, None),  # terminating nil = false
    (False, None, None, None),
]


@pytest.mark.parametrize(("ready", "serving", "terminating", "expected"), CONDITION_ROWS)
def test_endpoint_conditions(
    ready: bool | None, serving: bool | None, terminating: bool | None, expected: bool | None
) -> None:
    ep = endpoint("127.0.0.2", ready=ready, serving=serving, terminating=terminating)
    result = run(service("web"), endpoint_slice(endpoints=[ep]))
    got = addresses(result)
    assert got == ([] if expected is None else [("127.0.0.2", 8080, expected)])


def test_target_ref_is_kept_for_explain() -> None:
    ep = endpoint("127.0.0.2", pod="web-0", namespace="default")
    result = run(service("web"), endpoint_slice(endpoints=[ep]))
    assert only_backend(result).endpoints == (Endpoint("127.0.0.2", 8080, True, "default/web-0"),)


def test_selector_less_service_with_hand_written_slice() -> None:
    # A Service without selector is just a Service whose slices someone else writes.
    raw_service = service("web")
    raw_service["spec"].pop("selector", None)
    result = run(raw_service, endpoint_slice("web-manual", endpoints=["127.0.0.9"]))
    assert addresses(result) == [("127.0.0.9", 8080, True)]


def test_service_not_found_keeps_the_rule_with_an_unavailable_backend() -> None:
    result = run()
    backend = only_backend(result)
    assert backend.unavailable == "ServiceNotFound" and backend.endpoints == ()
    assert [str(p) for p in result.problems] == [
        'Ingress default/web: ServiceNotFound: service "default/web" not found '
        "(rule host=a.example.com path=/)"
    ]
    rule_ = Router(result.snapshot.routes).route("a.example.com", "/")
    assert rule_ is not None and rule_.backend == backend.key


def test_service_in_another_namespace_is_not_found() -> None:
    result = run(service("web", "elsewhere"))
    assert only_backend(result).unavailable == "ServiceNotFound"


@pytest.mark.parametrize(
    ("allow", "port", "ports", "expected", "problem"),
    [
        (
            True,
            80,
            [],
            Backend("default/web/80", (Endpoint("db.example.org", 80),), None, True),
            "",
        ),
        (
            True,
            "https",
            [service_port(443, "https")],
            Backend("default/web/https", (Endpoint("db.example.org", 443),), None, True),
            "",
        ),
        (
            True,
            "nope",
            [service_port(443, "https")],
            Backend("default/web/nope", unavailable="ServicePortNotFound"),
            "ServicePortNotFound",
        ),
        (
            False,
            80,
            [],
            Backend("default/web/80", unavailable="ExternalNameNotAllowed"),
            "ExternalNameNotAllowed",
        ),
    ],
)
def test_external_name(
    allow: bool, port: int | str, ports: list[Raw], expected: Backend, problem: str
) -> None:
    svc = service("web", ports=ports, type="ExternalName", external_name="DB.example.org.")
    result = run(svc, port=port, allow_external_name=allow)
    assert only_backend(result) == expected
    assert {p.reason for p in result.problems} == ({problem} if problem else set())


def test_one_backend_per_key_shared_by_rules() -> None:
    ing = ingress(
        rules=[rule("a.example.com", path("/a", "web"), path("/b", "web")), rule("b.example.com")]
    )
    result = compile_view(
        store_of(ingress_class(), ing, service("web"), endpoint_slice()), CompileSettings()
    )
    assert [b.key for b in result.snapshot.backends] == ["default/web/80"]


def test_missing_service_reported_per_rule() -> None:
    ing = ingress(rules=[rule("a.example.com", path("/a", "ghost"), path("/b", "ghost"))])
    result = compile_view(store_of(ingress_class(), ing), CompileSettings())
    assert [p.message for p in result.problems] == [
        'service "default/ghost" not found (rule host=a.example.com path=/a)',
        'service "default/ghost" not found (rule host=a.example.com path=/b)',
    ]
