"""Upstream request shaping through real sockets: what the pod is sent, where, and what the client
gets back, from ingress-nginx's annotations and ConfigMap keys compiled by the real compiler.

Each row is one request to one host of the Ingresses below and checks what the echo pod saw (its
Host, fields, address) or what the proxy answered (status, response fields). Rows cite the
ingress-nginx e2e test (test/e2e/annotations/<file>.go "<name>") or the documentation they
come from. The "cluster IP" of the service-upstream Service is a loopback address where a
second pod listens: a request that reaches it went to the cluster IP, not to the endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from backends import Client, Pod, Response
from tls_env import compiled, running

from controller.compiler import CompileResult, CompileSettings
from controller.configmap import compile_settings, overlay, read
from controller.settings import Settings
from tests.kube_factory import (
    Raw,
    configmap,
    endpoint_slice,
    ingress,
    path,
    rule,
    service,
    service_port,
)

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
CLUSTER_IP = "127.0.0.3"  # where pods[1] listens: the Service "clustered"'s cluster IP
NGINX_CONFIGMAP = "ingress-nginx/ingress-nginx-controller"
# The ingress-nginx ConfigMap of the rows (customheaders.go allows its headers this way).
NGINX_DATA = {
    "global-allowed-response-headers": "My-Custom-Header,My-Custom-Header-Dollar,Content-Type",
    "proxy-set-headers": "ingress-nginx/custom-headers",
}


def _ingresses() -> list[Raw]:
    def one(name: str, host: str, annotations: dict[str, str], *paths: Raw) -> Raw:
        return ingress(
            name, annotations={N + k: v for k, v in annotations.items()}, rules=[rule(host, *paths)]
        )

    return [
        one("vhost", "upstreamvhost.foo.com", {"upstream-vhost": "upstreamvhost.bar.com"}),
        one("keepalive", "connection.foo.com", {"connection-proxy-header": "keep-alive"}),
        one("close", "close.foo.com", {"connection-proxy-header": "close"}),
        one("plain", "foo", {}),
        one("aliased", "aliased", {"server-alias": "bar, *.wild.test"}),
        # alias.go: two Ingresses of one host, the alias on one of them.
        one("app-a", "two", {}, path("/app-a")),
        one("app-b", "two", {"server-alias": "two-alias"}, path("/app-b")),
        # An alias that is another rule's host is ignored (annotations.md "Server Alias").
        one("taken", "taken", {"server-alias": "foo"}),
        one("custom", "custom-headers", {"custom-headers": "default/custom-headers"}),
        one("custom-missing", "custom-missing", {"custom-headers": "default/missing"}),
        one("custom-denied", "custom-denied", {"custom-headers": "default/not-allowed"}),
        one("custom-bad", "custom-bad", {"custom-headers": "not a reference"}),
        one("su", "serviceupstream", {"service-upstream": "true"}, path("/", "clustered", "http")),
        one("su-off", "serviceupstream-off", {}, path("/", "clustered", "http")),
    ]


def _clustered(pods: list[Pod]) -> list[Raw]:
    """Service "clustered": its cluster IP answers on the Service port (pods[1]); its
    endpoints are pods[0]."""
    return [
        service(
            "clustered", ports=[service_port(pods[1].port, "http", 8080)], cluster_ip=CLUSTER_IP
        ),
        endpoint_slice(
            "clustered-1", "clustered", endpoints=[pods[0].host], ports=[("http", pods[0].port)]
        ),
    ]


def _objects(pods: list[Pod]) -> list[Raw]:
    return [
        *_ingresses(),
        *_clustered(pods),
        configmap(
            "custom-headers",
            {
                "My-Custom-Header": "42",
                "My-Custom-Header-Dollar": "$remote_addr",
                "Content-Type": "application/vnd.test+json",
            },
        ),
        configmap("not-allowed", {"My-Custom-Header": "1", "X-Not-Listed": "2"}),
        # proxy-set-headers (configmap.md): fields sent to every pod, as proxy_set_header.
        configmap(
            "custom-headers",
            {
                "X-Global": "set-by-configmap",
                "X-Client": "replaced",
                "X-Removed": "",
                "X-Variable": "$remote_addr",
            },
            namespace="ingress-nginx",
        ),
    ]


def _compile(pods: list[Pod], data: dict[str, str] = NGINX_DATA) -> CompileResult:
    reading = read(data, NGINX_CONFIGMAP)
    settings = compile_settings(overlay(Settings(), reading), reading)
    return compiled(*_objects(pods), pod=(pods[0].host, pods[0].port), settings=settings)


def _seen(resp: Response) -> dict[str, list[str]]:
    """The pod's view of the request's fields: lower-case name -> values."""
    fields: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


class Row(NamedTuple):
    host: str
    target: str
    headers: dict[str, str]
    status: int
    check: Callable[[Response], Any]


def _pod_saw(**expected: str | None) -> Callable[[Response], Any]:
    def check(resp: Response) -> None:
        seen = _seen(resp)
        for name, value in expected.items():
            field = name.replace("_", "-")
            assert seen.get(field) == (None if value is None else [value]), (field, seen)

    return check


def _client_got(**expected: str | None) -> Callable[[Response], Any]:
    def check(resp: Response) -> None:
        for name, value in expected.items():
            assert resp.header_all(name.replace("_", "-")) == ([] if value is None else [value])

    return check


def _answered_by(address: str) -> Callable[[Response], Any]:
    def check(resp: Response) -> None:
        assert resp.json()["pod"] == address

    return check


def _nothing(resp: Response) -> None:
    pass


ROWS: dict[str, Row] = {
    # upstreamvhost.go "set host to upstreamvhost.bar.com"; X-Forwarded-Host keeps the client's
    # ($best_http_host in nginx.tmpl).
    "upstream-vhost": Row(
        "upstreamvhost.foo.com",
        "/",
        {},
        200,
        _pod_saw(host="upstreamvhost.bar.com", x_forwarded_host="upstreamvhost.foo.com"),
    ),
    # connection.go "set connection header to keep-alive".
    "connection-keep-alive": Row(
        "connection.foo.com", "/", {}, 200, _pod_saw(connection="keep-alive")
    ),
    # connection/main.go: "close" is the other value ingress-nginx accepts.
    "connection-close": Row("close.foo.com", "/", {}, 200, _pod_saw(connection="close")),
    # Without the annotation no Connection field reaches the pod (HTTP/1.1 keeps alive).
    "connection-default": Row("foo", "/", {}, 200, _pod_saw(connection=None)),
    # alias.go "should return status code 200 for host 'foo' and 404 for 'bar'".
    "no-alias-foo": Row("foo", "/", {}, 200, _pod_saw(host="foo")),
    "no-alias-bar": Row("bar.unrouted", "/", {}, 404, _nothing),
    # alias.go "should return status code 200 for host 'foo' and 'bar'": the pod sees the alias.
    "alias-host": Row("aliased", "/", {}, 200, _pod_saw(host="aliased")),
    "alias-name": Row("bar", "/", {}, 200, _pod_saw(host="bar")),
    "alias-wildcard": Row("x.wild.test", "/", {}, 200, _pod_saw(host="x.wild.test")),
    # alias.go "should return status code 200 for hosts defined in two ingresses, different path
    # with one alias": the alias serves the other Ingress's path too.
    "alias-other-ingress-path": Row("two-alias", "/app-a", {}, 200, _pod_saw(host="two-alias")),
    "alias-own-path": Row("two-alias", "/app-b", {}, 200, _pod_saw(host="two-alias")),
    # An alias naming another rule's host is ignored: "foo" stays the plain Ingress's.
    "alias-conflict-ignored": Row("foo", "/", {}, 200, _pod_saw(host="foo")),
    # customheaders.go `should set "more_set_headers 'My-Custom-Header' '42';" when
    # custom-headers are set` (the $ stays literal); the pod's Content-Type is replaced.
    "custom-headers": Row(
        "custom-headers",
        "/",
        {},
        200,
        _client_got(
            my_custom_header="42",
            my_custom_header_dollar="$remote_addr",
            content_type="application/vnd.test+json",
        ),
    ),
    # customheaders.go "should return status code 503 when custom-headers is configured with an
    # invalid secret" (a ConfigMap that does not exist).
    "custom-headers-missing": Row("custom-missing", "/", {}, 503, _nothing),
    # customheaders/main.go: a name outside global-allowed-response-headers denies the location.
    "custom-headers-not-allowed": Row("custom-denied", "/", {}, 503, _nothing),
    # An annotation that does not read fails closed the same way.
    "custom-headers-invalid": Row("custom-bad", "/", {}, 503, _nothing),
    # Response fields are set on the Ingress's routes only.
    "custom-headers-elsewhere": Row("foo", "/", {}, 200, _client_got(my_custom_header=None)),
    # serviceupstream.go "should use the Service Cluster IP and Port".
    "service-upstream": Row("serviceupstream", "/", {}, 200, _answered_by(CLUSTER_IP)),
    # Without the annotation (and service-upstream false in the ConfigMap): the endpoints.
    "service-upstream-off": Row("serviceupstream-off", "/", {}, 200, _answered_by("127.0.0.2")),
    # configmap.md proxy-set-headers: set on every request, replacing the client's field; an
    # empty value removes it; a value naming an nginx variable is not sent.
    "proxy-set-headers": Row(
        "foo",
        "/",
        {"X-Client": "from-client", "X-Removed": "gone"},
        200,
        _pod_saw(x_global="set-by-configmap", x_client="replaced", x_removed=None, x_variable=None),
    ),
    # ... together with an Ingress's own upstream-vhost.
    "proxy-set-headers-and-vhost": Row(
        "upstreamvhost.foo.com",
        "/",
        {},
        200,
        _pod_saw(host="upstreamvhost.bar.com", x_global="set-by-configmap"),
    ),
}


async def _request(port: int, row: Row) -> Response:
    client = await Client.connect(port)
    try:
        return await client.request("GET", row.target, row.headers, host=row.host)
    finally:
        await client.close()


@pytest.mark.parametrize("row", [pytest.param(r, id=name) for name, r in ROWS.items()])
async def test_upstream_shaping(pods: list[Pod], row: Row) -> None:
    result = _compile(pods)
    async with running(result.snapshot) as proxy:
        resp = await _request(proxy.http_port, row)
        assert resp.status == row.status, resp.body
        row.check(resp)


def test_problems_name_what_is_not_served(pods: list[Pod]) -> None:
    reasons = {(p.ref, p.reason) for p in _compile(pods).problems}
    assert ("default/taken", "AliasConflict") in reasons
    assert ("default/custom-missing", "CustomHeadersInvalid") in reasons
    assert ("default/custom-denied", "CustomHeadersInvalid") in reasons
    assert ("default/custom-bad", "InvalidAnnotation") in reasons
    assert ("ingress-nginx/custom-headers", "InvalidHeader") in reasons  # X-Variable


async def test_connection_close_is_not_reused(pods: list[Pod]) -> None:
    # After `Connection: close` the pod's connection is never reused (RFC 9112 §9.6), while
    # the default keeps one connection for both requests.
    result = _compile(pods)
    async with running(result.snapshot) as proxy:
        for host, connections in (("close.foo.com", 2), ("foo", 1)):
            before = pods[0].connections
            client = await Client.connect(proxy.http_port)
            try:
                for _ in range(2):
                    assert (await client.request("GET", "/", host=host)).status == 200
            finally:
                await client.close()
            assert pods[0].connections - before == connections, host


async def test_service_upstream_from_the_configmap(pods: list[Pod]) -> None:
    # serviceupstream.go "when enabling in the configmap" and "... and disabling in the
    # annotations": the ConfigMap's service-upstream is the default, the annotation wins.
    data = {"service-upstream": "true"}
    reading = read(data, NGINX_CONFIGMAP)
    settings = compile_settings(overlay(Settings(), reading), reading)
    assert settings.service_upstream
    off = {N + "service-upstream": "false"}
    result = compiled(
        *_clustered(pods),
        ingress("by-default", rules=[rule("default.test", path("/", "clustered", "http"))]),
        ingress(
            "opted-out", annotations=off, rules=[rule("out.test", path("/", "clustered", "http"))]
        ),
        pod=(pods[0].host, pods[0].port),
        settings=settings,
    )
    async with running(result.snapshot) as proxy:
        for host, address in (("default.test", CLUSTER_IP), ("out.test", "127.0.0.2")):
            resp = await _request(proxy.http_port, Row(host, "/", {}, 200, _nothing))
            assert resp.json()["pod"] == address, host


async def test_headless_service_upstream_uses_the_endpoints(pods: list[Pod]) -> None:
    # getServiceClusterEndpoint (controller.go): no cluster IP ("None") falls back to the
    # endpoints; Portico says so with a problem.
    su = {N + "service-upstream": "true"}
    result = compiled(
        service("headless", ports=[service_port(80, "http", 8080)], cluster_ip="None"),
        endpoint_slice(
            "headless-1", "headless", endpoints=[pods[0].host], ports=[("http", pods[0].port)]
        ),
        ingress("su", annotations=su, rules=[rule("headless.test", path("/", "headless"))]),
        pod=(pods[0].host, pods[0].port),
        settings=CompileSettings(),
    )
    assert [p.reason for p in result.problems] == ["NoClusterIP"]
    async with running(result.snapshot) as proxy:
        resp = await _request(proxy.http_port, Row("headless.test", "/", {}, 200, _nothing))
        assert resp.json()["pod"] == "127.0.0.2"
