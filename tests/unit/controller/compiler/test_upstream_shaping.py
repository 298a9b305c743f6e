"""Upstream request shaping in the compiler: the annotations' grammars (upstream-vhost,
server-alias, service-upstream, connection-proxy-header, custom-headers), what they compile to,
server-alias across Ingresses and certificates, and the header ConfigMaps' rules.

Rows cite ingress-nginx: internal/ingress/annotations/<name>/main.go (grammar), its e2e tests
(test/e2e/annotations/<name>.go) and controller.go (aliases, service-upstream).
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from controller.compiler.headers import request_headers, response_headers
from controller.objects import ConfigMap
from controller.store import Store, WatchEvent
from proxy.config import (
    HTTPSRedirect,
    Refuse,
    ResponseHeaders,
    RouteOptions,
    ShapeRequest,
    VirtualHost,
)
from tests.kube_factory import (
    Raw,
    configmap,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    store_of,
    tls_entry,
    tls_secret,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"

# (annotation, value, IngressOptions field, parsed value)
VALID: list[tuple[str, str, str, Any]] = [
    # upstreamvhost.go "set host to upstreamvhost.bar.com"
    ("upstream-vhost", "upstreamvhost.bar.com", "upstream_vhost", "upstreamvhost.bar.com"),
    ("upstream-vhost", " api.internal:8080 ", "upstream_vhost", "api.internal:8080"),
    ("upstream-vhost", "10.0.0.1", "upstream_vhost", "10.0.0.1"),
    ("upstream-vhost", "[2001:db8::1]:80", "upstream_vhost", "[2001:db8::1]:80"),
    # connection/main.go: ^(close|keep-alive)$, spaces removed.
    ("connection-proxy-header", "keep-alive", "connection_header", "keep-alive"),
    ("connection-proxy-header", " close ", "connection_header", "close"),
    # alias/main.go: split on ",", trimmed, empty skipped, unique, sorted.
    ("server-alias", "bar", "server_alias", ("bar",)),
    (
        "server-alias",
        "b.example.com, a.example.com,,a.example.com",
        "server_alias",
        ("a.example.com", "b.example.com"),
    ),
    ("server-alias", "*.Example.com", "server_alias", ("*.example.com",)),
    # serviceupstream/main.go: a boolean.
    ("service-upstream", "true", "service_upstream", True),
    ("service-upstream", "false", "service_upstream", False),
    # customheaders.go: "namespace/name".
    ("custom-headers", "default/custom-headers", "custom_headers", "default/custom-headers"),
]


@pytest.mark.parametrize(("name", "value", "field", "expected"), VALID)
@pytest.mark.parametrize("prefix", [N, P])
def test_valid(prefix: str, name: str, value: str, field: str, expected: Any) -> None:
    opts, errors = parse_annotations({prefix + name: value})
    assert errors == ()
    assert getattr(opts, field) == expected


INVALID: list[tuple[str, str]] = [
    ("upstream-vhost", "$service_name.svc"),  # nginx variables are not expanded
    ("upstream-vhost", "a b"),
    ("upstream-vhost", "host:0"),
    ("upstream-vhost", "host:70000"),
    ("upstream-vhost", "[zz::1]"),
    ("upstream-vhost", "a/b"),
    ("connection-proxy-header", "upgrade"),
    ("connection-proxy-header", "Close"),
    ("server-alias", "~^www\\d+\\.example\\.com$"),  # nginx regular-expression names
    ("server-alias", "good.example.com, bad_name"),
    ("server-alias", "10.0.0.1"),
    ("service-upstream", "yes"),
    ("custom-headers", "custom-headers"),  # no namespace
    ("custom-headers", "a/b/c"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid(name: str, value: str) -> None:
    opts, errors = parse_annotations({N + name: value})
    assert [e.annotation for e in errors] == [N + name]
    if name == "custom-headers":
        assert opts.invalid_custom_headers and opts.custom_headers is None
    else:
        assert opts == parse_annotations({})[0]


def _compile(*raws: Raw, settings: CompileSettings | None = None) -> CompileResult:
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", 8080)], cluster_ip="10.96.0.10"),
        endpoint_slice("web-1", "web", endpoints=["10.0.0.1"], ports=[("http", 8080)]),
        *raws,
    ]
    return compile_view(store_of(*objects), settings or CompileSettings())


def _vhosts(result: CompileResult) -> dict[str, VirtualHost]:
    return {v.host: v for v in result.snapshot.routes.virtual_hosts}


def _options(result: CompileResult, host: str) -> RouteOptions:
    return _vhosts(result)[host].rules[0].options


def test_shaping_step() -> None:
    annotations = {N + "upstream-vhost": "b.internal", N + "connection-proxy-header": "close"}
    result = _compile(ingress("a", annotations=annotations, rules=[rule("a.test")]))
    assert _options(result, "a.test").policy == (ShapeRequest("b.internal", connection="close"),)


def test_proxy_set_headers_join_the_shaping_step() -> None:
    # configmap.md proxy-set-headers: every route; merged with an Ingress's own step.
    cm = configmap("headers", {"X-Global": "1", "X-Empty": ""}, namespace="ingress")
    own = {N + "upstream-vhost": "b.internal"}
    result = _compile(
        cm,
        ingress("a", annotations=own, rules=[rule("a.test")]),
        ingress("b", rules=[rule("b.test")]),
        settings=CompileSettings(proxy_set_headers="ingress/headers"),
    )
    names, values = ("X-Empty", "X-Global"), ("", "1")
    assert _options(result, "a.test").policy == (ShapeRequest("b.internal", names, values),)
    assert _options(result, "b.test").policy == (ShapeRequest(names=names, values=values),)
    assert result.problems == ()


def test_missing_proxy_set_headers_configmap_is_a_problem() -> None:
    result = _compile(
        ingress("b", rules=[rule("b.test")]),
        settings=CompileSettings(proxy_set_headers="ingress/headers"),
    )
    assert [(p.kind, p.reason) for p in result.problems] == [("ConfigMap", "ConfigMapNotFound")]
    assert _options(result, "b.test").policy == ()


# (data, sent names, problems): configmap.md proxy-set-headers, nginx's proxy_set_header.
REQUEST_ROWS: list[tuple[dict[str, str], tuple[str, ...], int]] = [
    ({"X-A": "1", "X-B": " two "}, ("X-A", "X-B"), 0),
    ({"X-A": "$remote_addr"}, (), 1),  # a variable nginx would expand
    ({"X-A": "${host}x"}, (), 1),
    ({"Host": "x"}, (), 1),  # upstream-vhost's
    ({"Content-Length": "1"}, (), 1),
    ({"Connection": "close"}, (), 1),
    ({"Bad Name": "1", "X-A": "1"}, ("X-A",), 1),
    ({"X-A": "a\x01b"}, (), 1),
    ({"X-A": "1", "x-a": "2"}, ("X-A",), 1),  # one field, set twice
    ({"X-A": ""}, ("X-A",), 0),  # removes the field
]


@pytest.mark.parametrize(("data", "names", "problems"), REQUEST_ROWS)
def test_request_headers(data: dict[str, str], names: tuple[str, ...], problems: int) -> None:
    sent, _, found = request_headers(data, "ns/h")
    assert sent == names
    assert len(found) == problems
    assert all(p.reason == "InvalidHeader" for p in found)


ALLOWED = ("X-Frame-Options", "Content-Type", "Server", "X_Under")

# (data, the step or the start of the reason): customheaders/main.go.
RESPONSE_ROWS: list[tuple[dict[str, str] | None, ResponseHeaders | str | None]] = [
    ({"X-Frame-Options": "DENY"}, ResponseHeaders(("X-Frame-Options",), ("DENY",))),
    ({"X_Under": "a b"}, ResponseHeaders(("X_Under",), ("a b",))),
    ({}, None),
    (None, "the ConfigMap does not exist"),
    ({"x-frame-options": "DENY"}, "header x-frame-options is not allowed"),  # compared as written
    ({"X-Other": "1"}, "header X-Other is not allowed"),
    ({"X.Frame": "1"}, "invalid header name"),
    ({"X-Frame-Options": "a\tb"}, "invalid value"),
    ({"X-Frame-Options": ""}, "invalid value"),
    ({"Server": "mine"}, "header 'Server' cannot be set"),  # the proxy's own field
]


@pytest.mark.parametrize(("data", "expected"), RESPONSE_ROWS)
def test_response_headers(
    data: dict[str, str] | None, expected: ResponseHeaders | str | None
) -> None:
    found = response_headers(data, ALLOWED)
    if isinstance(expected, str):
        assert isinstance(found, str) and expected in found
    else:
        assert found == expected


def test_custom_headers_step_and_fail_closed() -> None:
    # customheaders.go: set on the Ingress's responses; a missing ConfigMap answers 503.
    result = _compile(
        configmap("ch", {"X-Frame-Options": "DENY"}),
        ingress("a", annotations={N + "custom-headers": "default/ch"}, rules=[rule("a.test")]),
        ingress("b", annotations={N + "custom-headers": "default/none"}, rules=[rule("b.test")]),
        settings=CompileSettings(allowed_response_headers=ALLOWED),
    )
    step = ResponseHeaders(("X-Frame-Options",), ("DENY",))
    assert _options(result, "a.test").policy == (step,)
    assert _options(result, "b.test").policy == (Refuse(503, "InvalidCustomHeaders"),)
    assert [(p.ref, p.reason) for p in result.problems] == [("default/b", "CustomHeadersInvalid")]


def test_custom_headers_refusal_comes_after_the_https_redirect() -> None:
    tls = [tls_entry(None, "a.test")]
    annotations = {N + "custom-headers": "default/none"}
    result = _compile(ingress("a", annotations=annotations, rules=[rule("a.test")], tls=tls))
    policy = _options(result, "a.test").policy
    assert policy == (HTTPSRedirect(), Refuse(503, "InvalidCustomHeaders"))


# ---- server-alias -----------------------------------------------------------------------------


def _aliased(*raws: Raw) -> CompileResult:
    return _compile(*raws)


def test_alias_serves_every_rule_of_its_host() -> None:
    # alias.go "should return status code 200 for hosts defined in two ingresses, different path
    # with one alias".
    result = _aliased(
        ingress("app-a", rules=[rule("foo", path("/app-a"))], created=1),
        ingress(
            "app-b",
            annotations={N + "server-alias": "bar"},
            rules=[rule("foo", path("/app-b"))],
            created=2,
        ),
    )
    vhosts = _vhosts(result)
    assert vhosts["bar"].rules == vhosts["foo"].rules
    assert result.problems == ()


def test_first_ingress_with_aliases_gives_them() -> None:
    # controller.go createServers: "Aliases already configured for server ..., skipping".
    result = _aliased(
        ingress("old", annotations={N + "server-alias": "one"}, rules=[rule("foo")], created=1),
        ingress("new", annotations={N + "server-alias": "two"}, rules=[rule("foo")], created=2),
    )
    assert "one" in _vhosts(result) and "two" not in _vhosts(result)
    assert [(p.ref, p.reason) for p in result.problems if p.reason == "AliasConflict"] == [
        ("default/new", "AliasConflict")
    ]


@pytest.mark.parametrize(
    ("alias", "served"),
    [
        ("foo", False),  # annotations.md: an alias that is a server's host is ignored
        ("bar", True),
        ("own", False),  # the host itself: nothing to add, no problem
    ],
)
def test_alias_conflicts(alias: str, served: bool) -> None:
    result = _aliased(
        ingress("a", rules=[rule("foo")], created=1),
        ingress("b", annotations={N + "server-alias": alias}, rules=[rule("own")], created=2),
    )
    conflicts = [p for p in result.problems if p.reason == "AliasConflict"]
    assert set(_vhosts(result)) == {"foo", "own", *((alias,) if served else ())}
    assert len(conflicts) == (1 if alias == "foo" else 0)


def test_alias_of_two_hosts_goes_to_the_first() -> None:
    result = _aliased(
        ingress("a", annotations={N + "server-alias": "same"}, rules=[rule("a1"), rule("a2")]),
    )
    assert _vhosts(result)["same"].rules == _vhosts(result)["a1"].rules
    assert [p.reason for p in result.problems] == ["AliasConflict"]


@pytest.mark.parametrize(
    ("alias", "certificate", "redirected"),
    [
        # nginx.go configureCertificates: an alias gets the host's certificate when it covers
        # the alias; lua_ingress.lua redirects only hosts with a certificate.
        ("www.a.example.com", True, True),
        ("other.example.org", False, False),
    ],
)
def test_alias_tls(alias: str, certificate: bool, redirected: bool) -> None:
    secret = tls_secret("a-tls", hosts=("a.example.com", "*.a.example.com"))
    result = _aliased(
        secret,
        ingress(
            "a",
            annotations={N + "server-alias": alias},
            rules=[rule("a.example.com")],
            tls=[tls_entry("a-tls", "a.example.com")],
        ),
    )
    vhost = _vhosts(result)[alias]
    assert (vhost.tls_certificate == "default/a-tls") == certificate
    assert (vhost.rules[0].options.step(HTTPSRedirect) is not None) == redirected
    host = _vhosts(result)["a.example.com"]
    assert host.rules[0].options.step(HTTPSRedirect) is not None


@pytest.mark.parametrize(
    "extra",
    [
        # rewrite.go: use-regex makes the host's paths regular expressions (rebuilt rules).
        {N + "use-regex": "true"},
        # approot.go: app-root adds its step to every rule of the host.
        {N + "app-root": "/app"},
    ],
    ids=["regex host", "app-root host"],
)
def test_alias_without_certificate_loses_only_the_redirect(extra: dict[str, str]) -> None:
    """A rule rebuilt after compiling (regex, app-root) still loses the TLS host's redirect on
    an alias its certificate does not cover, and keeps what it became."""
    secret = tls_secret("a-tls", hosts=("a.example.com",))
    result = _aliased(
        secret,
        ingress(
            "a",
            annotations={N + "server-alias": "other.example.org", **extra},
            rules=[rule("a.example.com")],
            tls=[tls_entry("a-tls", "a.example.com")],
        ),
    )
    host, alias = _vhosts(result)["a.example.com"], _vhosts(result)["other.example.org"]
    assert host.rules[0].options.step(HTTPSRedirect) is not None
    assert alias.rules[0].options.step(HTTPSRedirect) is None
    assert (alias.rules[0].path, alias.rules[0].match) == (host.rules[0].path, host.rules[0].match)
    kept = [s for s in host.rules[0].options.policy if not isinstance(s, HTTPSRedirect)]
    assert list(alias.rules[0].options.policy) == kept


def test_forced_redirect_stays_on_an_alias_without_certificate() -> None:
    annotations = {N + "server-alias": "other.example.org", N + "force-ssl-redirect": "true"}
    result = _aliased(ingress("a", annotations=annotations, rules=[rule("a.example.com")]))
    assert _options(result, "other.example.org").step(HTTPSRedirect) is not None


# ---- service-upstream ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("svc", "endpoints", "problem"),
    [
        # serviceupstream.go "should use the Service Cluster IP and Port"
        (
            service("web", ports=[service_port(80, "http", 8080)], cluster_ip="10.96.0.10"),
            [("10.96.0.10", 80)],
            None,
        ),
        # controller.go getServiceClusterEndpoint: no cluster IP: the endpoints are used.
        (
            service("web", ports=[service_port(80, "http", 8080)], cluster_ip="None"),
            [("10.0.0.1", 8080)],
            "NoClusterIP",
        ),
    ],
)
def test_service_upstream(svc: Raw, endpoints: list[tuple[str, int]], problem: str | None) -> None:
    annotations = {N + "service-upstream": "true"}
    result = compile_view(
        store_of(
            ingress_class(),
            svc,
            endpoint_slice("web-1", "web", endpoints=["10.0.0.1"], ports=[("http", 8080)]),
            ingress("a", annotations=annotations, rules=[rule("a.test")]),
            ingress("b", rules=[rule("b.test")]),
        ),
        CompileSettings(),
    )
    backends = result.snapshot.backend_map()
    rule_a = _vhosts(result)["a.test"].rules[0]
    assert rule_a.backend == "default/web/80@cluster-ip"
    assert [(e.address, e.port) for e in backends[rule_a.backend].endpoints] == endpoints
    # An Ingress without the annotation, on the same Service port, keeps the endpoints.
    rule_b = _vhosts(result)["b.test"].rules[0]
    assert [(e.address, e.port) for e in backends[rule_b.backend].endpoints] == [("10.0.0.1", 8080)]
    assert [p.reason for p in result.problems] == ([problem] if problem else [])


# ---- ConfigMaps in the store --------------------------------------------------------------------


def test_only_named_configmaps_matter() -> None:
    store = Store()
    named = ingress("a", annotations={N + "custom-headers": "default/ch"}, rules=[rule("a")])
    store.apply(WatchEvent("ADDED", _parse(named)))
    store.pin_configmaps([("ingress", "headers")])
    assert store.apply(WatchEvent("ADDED", ConfigMap(namespace="default", name="ch")))
    assert store.apply(WatchEvent("ADDED", ConfigMap(namespace="ingress", name="headers")))
    assert not store.apply(WatchEvent("ADDED", ConfigMap(namespace="default", name="other")))


def _parse(raw: Raw) -> Any:
    from controller.objects import parse_object

    return parse_object(raw)
