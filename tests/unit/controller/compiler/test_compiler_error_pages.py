"""Compiler tables for error pages: default-backend, custom-http-errors and
disable-proxy-intercept-errors parsed as ingress-nginx parses them, and the ErrorPages step and
default backend each Ingress's routes get.

Sources: internal/ingress/annotations/customhttperrors/ (its regex `^(?:[4,5]\\d{2},?)*$` after
removing spaces; main_test.go), defaultbackend/ (a DNS-1035 Service name; main_test.go),
disableproxyintercepterrors/, and controller.go (the default backend's first Service port; the
custom-http-errors of an Ingress without default-backend go to the global default backend).
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import Compiler, CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from controller.objects import KubeObject, parse_object
from controller.store import WatchEvent
from proxy.config import ErrorPages, PathRule
from tests.kube_factory import (
    backend,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"

VALID: dict[str, tuple[str, str, str, Any]] = {
    # id: (annotation, value, IngressOptions field, parsed value)
    "codes (main_test.go TestParseAnnotations)": (
        "custom-http-errors",
        "400,404,500,502",
        "custom_http_errors",
        (400, 404, 500, 502),
    ),
    "spaces removed (customhttperrors.go '404, 503')": (
        "custom-http-errors",
        "404, 503",
        "custom_http_errors",
        (404, 503),
    ),
    "duplicates once, sorted": (
        "custom-http-errors",
        "503,404,503",
        "custom_http_errors",
        (404, 503),
    ),
    "a trailing comma (the regex's ',?')": (
        "custom-http-errors",
        "404,",
        "custom_http_errors",
        (404,),
    ),
    "service name (main_test.go 'valid name')": (
        "default-backend",
        "demo-service",
        "default_backend",
        "demo-service",
    ),
    "disable true": (
        "disable-proxy-intercept-errors",
        "true",
        "disable_proxy_intercept_errors",
        True,
    ),
    "disable false": (
        "disable-proxy-intercept-errors",
        "false",
        "disable_proxy_intercept_errors",
        False,
    ),
}


@pytest.mark.parametrize(("name", "value", "field", "expected"), VALID.values(), ids=list(VALID))
def test_valid(name: str, value: str, field: str, expected: Any) -> None:
    for prefix in (N, P):
        opts, errors = parse_annotations({prefix + name: value})
        assert errors == ()
        assert getattr(opts, field) == expected


INVALID: dict[str, tuple[str, str]] = {
    "a word among codes (main_test.go TestParseInvalidAnnotations)": (
        "custom-http-errors",
        "400,404,abc,502",
    ),
    "empty": ("custom-http-errors", ""),
    "an empty entry": ("custom-http-errors", "404,,503"),
    "not an error status": ("custom-http-errors", "302"),
    "beyond 599": ("custom-http-errors", "600"),
    "four digits": ("custom-http-errors", "4040"),
    "a sign": ("custom-http-errors", "+404"),
    "a leading comma": ("custom-http-errors", ",404"),
    "dotted name (main_test.go 'invalid dns name')": (
        "default-backend",
        "demo-service.something.tld",
    ),
    "namespace/name (main_test.go 'invalid name')": ("default-backend", "something/xpto"),
    "characters (main_test.go 'invalid characters')": ("default-backend", "something;xpto"),
    "upper case": ("default-backend", "Demo"),
    "not a bool": ("disable-proxy-intercept-errors", "yes"),
}


@pytest.mark.parametrize(("name", "value"), INVALID.values(), ids=list(INVALID))
def test_invalid_is_a_problem_and_ignored(name: str, value: str) -> None:
    opts, errors = parse_annotations({N + name: value})
    assert [e.annotation for e in errors] == [N + name]
    assert opts.default_backend is None and opts.custom_http_errors is None
    assert opts.disable_proxy_intercept_errors is False
    result = _compile(ingress("app", annotations={N + name: value}, rules=[rule("app.test")]))
    assert ("default/app", "InvalidAnnotation") in {(p.ref, p.reason) for p in result.problems}
    assert _steps(result, "app.test") == [None]  # the Ingress still serves, without the step


def _compile(*raws: dict[str, Any]) -> CompileResult:
    objects = [
        ingress_class(),
        service("web"),
        endpoint_slice("web"),
        # Two ports: the default backend takes the first (controller.go: Spec.Ports[0]).
        service("demo", ports=[service_port(8080, "http", 3000), service_port(9090, "metrics")]),
        endpoint_slice("demo-x", "demo", endpoints=["10.0.0.7"], ports=[("http", 3000)]),
        *raws,
    ]
    return compile_view(store_of(*objects), CompileSettings())


def _rules(result: CompileResult, host: str) -> list[PathRule]:
    for vhost in result.snapshot.routes.virtual_hosts:
        if vhost.host == host:
            return [*vhost.rules, *([vhost.fallback] if vhost.fallback else [])]
    raise AssertionError(host)


def _steps(result: CompileResult, host: str) -> list[ErrorPages | None]:
    return [r.options.step(ErrorPages) for r in _rules(result, host)]


DEMO = ("default/demo/0", "default/demo")

STEPS: dict[str, tuple[dict[str, str], bool, ErrorPages | None]] = {
    # id: (annotations, with a catch-all Ingress, the step of every rule)
    "default-backend and codes (customhttperrors.go: custom-default-backend upstream)": (
        {"default-backend": "demo", "custom-http-errors": "404,503"},
        False,
        ErrorPages(*DEMO, (404, 503), fallback=True),
    ),
    "default-backend alone: the no-endpoint fallback only": (
        {"default-backend": "demo"},
        False,
        ErrorPages(*DEMO, (), fallback=True),
    ),
    "disable-proxy-intercept-errors keeps the fallback": (
        {
            "default-backend": "demo",
            "custom-http-errors": "404",
            "disable-proxy-intercept-errors": "true",
        },
        False,
        ErrorPages(*DEMO, (), fallback=True),
    ),
    "codes alone: the global default backend (the catch-all Ingress)": (
        {"custom-http-errors": "404"},
        True,
        ErrorPages("default/web/80", "default/web", (404,)),
    ),
    "codes alone, no global default backend: nothing": ({"custom-http-errors": "404"}, False, None),
    "codes disabled, no default-backend: nothing": (
        {"custom-http-errors": "404", "disable-proxy-intercept-errors": "true"},
        True,
        None,
    ),
    "the annotation's backend wins over the global one": (
        {"default-backend": "demo", "custom-http-errors": "500"},
        True,
        ErrorPages(*DEMO, (500,), fallback=True),
    ),
}


@pytest.mark.parametrize(("annotations", "catch_all", "step"), STEPS.values(), ids=list(STEPS))
def test_error_pages_step(
    annotations: dict[str, str], catch_all: bool, step: ErrorPages | None
) -> None:
    app = ingress(
        "app",
        annotations={N + k: v for k, v in annotations.items()},
        rules=[rule("app.test", path("/a"), path("/b", path_type="Exact"))],
        default_backend=backend("web"),  # the host's fallback rule gets it too
    )
    extra = [ingress("catch", rules=[], default_backend=backend("web"), created=1)]
    result = _compile(app, *(extra if catch_all else []))
    assert result.problems == ()
    assert _steps(result, "app.test") == [step, step, step]
    if step is not None:
        backends = result.snapshot.backend_map()
        assert step.backend in backends
        if step.backend == DEMO[0]:
            # The first Service port's endpoints; a rule naming port 8080 would be another key.
            assert [e.authority for e in backends[step.backend].endpoints] == ["10.0.0.7:3000"]


def test_missing_default_backend_is_a_problem_on_its_ingress() -> None:
    # defaultbackend main_test.go "not in backend": the Service must exist.
    app = ingress(
        "app",
        annotations={N + "default-backend": "ghost", N + "custom-http-errors": "404"},
        rules=[rule("app.test")],
    )
    result = _compile(app)
    (problem,) = result.problems
    assert (problem.ref, problem.reason) == ("default/app", "ServiceNotFound")
    assert "default-backend" in problem.message and "default/ghost" in problem.message
    assert result.snapshot.backend_map()["default/ghost/0"].unavailable == "ServiceNotFound"


def test_default_backend_endpoints_follow_their_slices() -> None:
    # The default backend's Service is one the Ingress references: its EndpointSlices matter,
    # and an endpoints-only change updates it without recompiling routes.
    app = ingress("app", annotations={N + "default-backend": "demo"}, rules=[rule("app.test")])
    store = store_of(ingress_class(), service("web"), endpoint_slice("web"), service("demo"), app)
    compiler = Compiler(CompileSettings())
    first = compiler.compile(store)
    assert first.snapshot.backend_map()["default/demo/0"].endpoints == ()
    assert store.apply(WatchEvent("ADDED", _slice("demo-y", "demo", "10.0.0.8")))
    second = compiler.compile(store)
    assert second.snapshot.routes is first.snapshot.routes
    (only,) = second.snapshot.backend_map()["default/demo/0"].endpoints
    assert only.address == "10.0.0.8"


def _slice(name: str, service_name: str, address: str) -> KubeObject:
    obj = parse_object(endpoint_slice(name, service_name, endpoints=[address]))
    assert obj is not None
    return obj
