"""Error pages and default backends through real sockets, as ingress-nginx serves them.

The Ingresses below are compiled by the real compiler from ingress-nginx's annotations
(`default-backend`, `custom-http-errors`, `disable-proxy-intercept-errors`). Test pods: the
app pod (127.0.0.2, Service web) answers `/error?code=N` with N; the error pod (127.0.0.3,
Service errors, its FIRST port, as ingress-nginx takes it) echoes what it received as JSON, so
each row checks what the client got (status, whose body) and what the default backend was
told (method, path, X-Code and the other fields of ingress-nginx's custom-errors.md).

Sources cited in the rows: test/e2e/annotations/customhttperrors.go and
disableproxyintercepterrors.go ("configures Nginx correctly"), docs/user-guide/custom-errors.md,
the defaultbackend annotation's documentation, nginx.tmpl's CUSTOM_ERRORS location
(`rewrite (.*) / break`, proxy_set_header X-Code ...) and its custom-default-backend- headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest
from backends import Client, Pod
from tls_env import running

from controller.compiler import CompileResult, CompileSettings, compile_view
from proxy.server import ProxyServer
from tests.kube_factory import (
    backend,
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

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
ERRORS = {N + "default-backend": "errors"}

# host -> annotations of its Ingress (named after the host), one rule "/" -> web:80 unless
# RULES says otherwise.
HOSTS: dict[str, dict[str, str]] = {
    "intercept": {**ERRORS, N + "custom-http-errors": "404, 503,500"},
    "disabled": {
        **ERRORS,
        N + "custom-http-errors": "404",
        N + "disable-proxy-intercept-errors": "true",
    },
    "no-codes": ERRORS,  # a default backend only: the pods' errors are theirs
    "fallback": ERRORS,
    "dead-default": {N + "default-backend": "empty", N + "custom-http-errors": "404"},
    "proxy-errors": {**ERRORS, N + "custom-http-errors": "502"},
    "global": {N + "custom-http-errors": "404"},  # served by the catch-all Ingress
}
RULES: dict[str, list[Any]] = {
    "fallback": [
        path("/empty", "empty"),  # no endpoints
        path("/ghost", "ghost"),  # no such Service
        path("/", "web"),
    ],
    "proxy-errors": [path("/", "refused")],  # its endpoint refuses connections
}


class Case(NamedTuple):
    host: str
    target: str
    status: int  # what the client gets
    by: str  # who answered: "pod", "errors" (the default backend), "proxy"
    told: dict[str, str | None] | None = None  # fields the default backend got (None: absent)
    method: str = "GET"
    headers: dict[str, str] | None = None
    body: bytes = b""
    sent: tuple[str, str] = ("GET", "/")  # method and target the default backend got


IDENTITY = {"x-namespace": "default", "x-service-name": "web", "x-service-port": "80"}

CASES: dict[str, Case] = {
    # disableproxyintercepterrors.go "configures Nginx correctly" (intercept enabled): the
    # default backend's answer, status included (200 from an echo backend), with x-code,
    # x-ingress-name, x-service-name, x-request-id; custom-errors.md for the others.
    "listed-status-intercepted": Case(
        "intercept",
        "/error?code=404",
        200,
        "errors",
        {
            "x-code": "404",
            "x-original-uri": "/error?code=404",
            "x-ingress-name": "intercept",
            "x-format": None,  # no Accept: nginx sends no empty field
            **IDENTITY,
        },
    ),
    "each-listed-code": Case("intercept", "/error?code=503", 200, "errors", {"x-code": "503"}),
    "spaces-in-the-list": Case("intercept", "/error?code=500", 200, "errors", {"x-code": "500"}),
    # custom-errors.md: X-Format is the client's Accept.
    "x-format-is-accept": Case(
        "intercept",
        "/error?code=404",
        200,
        "errors",
        {"x-format": "application/json", "accept": "application/json"},
        headers={"Accept": "application/json"},
    ),
    # proxy_set_header replaces a client's field of the same name.
    "client-x-code-replaced": Case(
        "intercept", "/error?code=404", 200, "errors", {"x-code": "404"}, headers={"X-Code": "1"}
    ),
    # customhttperrors.go: only the listed codes get an error_page.
    "unlisted-status-relayed": Case("intercept", "/error?code=502", 502, "pod"),
    "success-relayed": Case("intercept", "/echo", 200, "pod"),
    # The error page is GET / without the body (Portico's difference: nginx keeps the method).
    "post-asks-get": Case(
        "intercept",
        "/error?code=404",
        200,
        "errors",
        {"content-length": None, "x-code": "404"},
        method="POST",
        body=b"payload",
    ),
    "head-asks-head": Case("intercept", "/error?code=404", 200, "errors", method="HEAD"),
    # disableproxyintercepterrors.go (intercept disabled): the pod's 404 reaches the client.
    "disabled-relays": Case("disabled", "/error?code=404", 404, "pod"),
    "default-backend-alone-relays": Case("no-codes", "/error?code=404", 404, "pod"),
    # defaultbackend doc: it answers when the rule's Service has no active endpoints; the
    # request goes as it is, with X-Code: 503 (nginx.tmpl's custom-default-backend- headers).
    "no-endpoints-fallback": Case(
        "fallback",
        "/empty/x?q=1",
        200,
        "errors",
        {
            "x-code": "503",
            "x-service-name": "empty",
            "x-ingress-name": "fallback",
            "x-original-uri": None,
        },
        sent=("GET", "/empty/x?q=1"),
    ),
    "missing-service-fallback": Case(
        "fallback", "/ghost", 200, "errors", {"x-code": "503"}, sent=("GET", "/ghost")
    ),
    "fallback-keeps-method-and-body": Case(
        "fallback",
        "/empty",
        200,
        "errors",
        {"content-length": "7"},
        method="POST",
        body=b"payload",
        sent=("POST", "/empty"),
    ),
    "fallback-only-without-endpoints": Case("fallback", "/echo", 200, "pod"),
    # A default backend without endpoints serves nothing: the pod's answer is relayed.
    "dead-default-backend-relays": Case("dead-default", "/error?code=404", 404, "pod"),
    # nginx's error_page takes its own errors too: the connect failure's 502.
    "proxy-502-intercepted": Case("proxy-errors", "/", 200, "errors", {"x-code": "502"}),
    # custom-http-errors without default-backend: the global default backend (Portico: the
    # Ingress with only a defaultBackend) answers.
    "global-default-backend": Case(
        "global", "/error?code=404", 200, "errors", {"x-code": "404", "x-ingress-name": "global"}
    ),
}


def _compiled(app: Pod, errors: Pod, *, catch_all: bool = True) -> CompileResult:
    refused = 1  # nothing listens on port 1 of 127.0.0.2
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", app.port)]),
        endpoint_slice("web", endpoints=[endpoint(app.host)], ports=[("http", app.port)]),
        # The default backend's first port is the one used.
        service(
            "errors",
            ports=[service_port(8080, "http", errors.port), service_port(9090, "admin", 1)],
        ),
        endpoint_slice(
            "errors", "errors", endpoints=[errors.host], ports=[("http", errors.port), ("admin", 1)]
        ),
        service("empty", ports=[service_port(80, "http", 80)]),
        service("refused", ports=[service_port(80, "http", refused)]),
        endpoint_slice("refused", "refused", endpoints=[app.host], ports=[("http", refused)]),
    ]
    for host, notes in HOSTS.items():
        paths = RULES.get(host)
        objects.append(
            ingress(
                host,
                annotations=notes,
                rules=[rule(f"{host}.test", *paths) if paths else rule(f"{host}.test")],
            )
        )
    if catch_all:
        objects.append(ingress("catch-all", rules=[], default_backend=backend("errors", "http")))
    return compile_view(store_of(*objects), CompileSettings())


@pytest.fixture
async def error_pod() -> AsyncIterator[Pod]:
    started = await Pod("127.0.0.3").start()
    yield started
    await started.stop()


async def _ask(proxy: ProxyServer, case: Case) -> Any:
    client = await Client.connect(proxy.http_port)
    try:
        resp = await client.request(
            case.method, case.target, case.headers, case.body, host=f"{case.host}.test"
        )
        # The client connection stays usable after a replaced answer.
        again = await client.request("GET", "/echo", host=f"{case.host}.test")
        assert again.status == 200
        return resp
    finally:
        await client.close()


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_error_pages(pod: Pod, error_pod: Pod, case: Case) -> None:
    result = _compiled(pod, error_pod)
    assert not [p for p in result.problems if p.reason != "ServiceNotFound"], result.problems
    async with running(result.snapshot) as proxy:
        resp = await _ask(proxy, case)
    assert resp.status == case.status
    if case.by == "errors":
        assert error_pod.requests >= 1
        if case.method == "HEAD":
            return
        seen = resp.json()
        assert seen["pod"] == error_pod.host
        assert (seen["method"], seen["target"]) == case.sent
        fields: dict[str, str] = {}
        for name, value in seen["headers"]:
            fields.setdefault(name.lower(), value)
        assert fields["x-request-id"]
        for name, value in (case.told or {}).items():
            assert fields.get(name) == value, (name, fields)
    else:
        assert error_pod.requests == 0
        if case.by == "pod" and case.status != 200:
            assert resp.body == b"pod error %d" % case.status  # the pod's own answer


async def test_without_a_default_backend_the_answer_is_relayed(pod: Pod, error_pod: Pod) -> None:
    # customhttperrors.go sends the codes to ingress-nginx's global default backend; with no
    # Ingress with only a defaultBackend, Portico has none and relays the pod's answer.
    result = _compiled(pod, error_pod, catch_all=False)
    async with running(result.snapshot) as proxy:
        resp = await _ask(proxy, CASES["global-default-backend"])
    assert resp.status == 404
    assert error_pod.requests == 0
