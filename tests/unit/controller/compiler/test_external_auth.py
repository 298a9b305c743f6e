"""External auth annotations (auth-url family, satisfy, enable-global-auth) -> policy steps.

Rows from ingress-nginx's internal/ingress/annotations/authreq/main.go (grammar, defaults),
its main_test.go cases, docs/user-guide/nginx-configuration/annotations.md#external-authentication
and test/e2e/annotations/auth.go; the steps are run through real sockets in
tests/integration/test_external_auth.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.extauth import cache_durations, global_auth
from proxy.config import ExternalAuth, Refuse, SatisfyAny, SourceRanges
from tests.kube_factory import configmap, ingress, ingress_class, path, rule, service, store_of

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
URL = "http://auth.example/check"
DENIED = Refuse(503, "InvalidExternalAuth")


def run(
    annotations: dict[str, str],
    settings: CompileSettings | None = None,
    *extra: Any,
) -> CompileResult:
    app = ingress("app", annotations=annotations, rules=[rule("app.test", path("/", "web"))])
    store = store_of(ingress_class(), service("web"), app, *extra)
    return compile_view(store, settings or CompileSettings())


def policy(result: CompileResult) -> tuple[object, ...]:
    return result.snapshot.routes.virtual_hosts[0].rules[0].options.policy


class Row(NamedTuple):
    annotations: dict[str, str]
    policy: tuple[object, ...]
    problems: tuple[str, ...] = ()


ROWS: dict[str, Row] = {
    # annotations.md: auth-url alone; authreq defaults (GET, rd, no cache, keepalive 0)
    "url": Row({N + "auth-url": URL}, (ExternalAuth(URL),)),
    # main_test.go "invalid url" rows: a denied location (auth.go "with invalid auth-url
    # should deny whole ingress": 503)
    "url-not-http": Row({N + "auth-url": "ftp://a/"}, (DENIED,), ("InvalidAnnotation",)),
    "url-without-host": Row({N + "auth-url": "http://"}, (DENIED,), ("InvalidAnnotation",)),
    "url-other-variable": Row(
        {N + "auth-url": "http://$request_body/"}, (DENIED,), ("InvalidAnnotation",)
    ),
    "url-with-host-variable": Row(
        {N + "auth-url": "https://$host/oauth2/auth"}, (ExternalAuth("https://$host/oauth2/auth"),)
    ),
    # authreq methodsRegex: upper-case methods only
    "method": Row({N + "auth-method": "POST", N + "auth-url": URL}, (ExternalAuth(URL, "POST"),)),
    "method-lower-case": Row(
        {N + "auth-method": "post", N + "auth-url": URL}, (DENIED,), ("InvalidAnnotation",)
    ),
    # auth.go "should redirect to signin url when not signed in" (+ redirect param)
    "signin": Row(
        {
            N + "auth-url": URL,
            N + "auth-signin": "https://$host/oauth2/start?rd=$escaped_request_uri",
            N + "auth-signin-redirect-param": "orig",
        },
        (
            ExternalAuth(
                URL,
                signin="https://$host/oauth2/start?rd=$escaped_request_uri",
                signin_redirect_param="orig",
            ),
        ),
    ),
    # Portico denies where ingress-nginx only warns (a catalogue `different` detail).
    "signin-invalid": Row(
        {N + "auth-url": URL, N + "auth-signin": "/relative"}, (DENIED,), ("InvalidAnnotation",)
    ),
    # authreq headerRegexp; a trailing comma is nothing
    "response-headers": Row(
        {N + "auth-url": URL, N + "auth-response-headers": "X-User, X-Email,"},
        (ExternalAuth(URL, response_headers=("X-User", "X-Email")),),
    ),
    "response-header-invalid": Row(
        {N + "auth-url": URL, N + "auth-response-headers": "X User"},
        (DENIED,),
        ("InvalidAnnotation",),
    ),
    "response-header-host": Row(
        {N + "auth-url": URL, N + "auth-response-headers": "Host"},
        (DENIED,),
        ("InvalidAnnotation",),
    ),
    "request-redirect": Row(
        {N + "auth-url": URL, N + "auth-request-redirect": "http://a.example/x"},
        (ExternalAuth(URL, request_redirect="http://a.example/x"),),
    ),
    # authreq DefaultCacheDuration "200 202 401 5m" with auth-cache-key
    "cache-default-duration": Row(
        {N + "auth-url": URL, N + "auth-cache-key": "$remote_user$http_authorization"},
        (
            ExternalAuth(
                URL,
                cache_key="$remote_user$http_authorization",
                cache_statuses=(200, 202, 401),
                cache_seconds=(300, 300, 300),
            ),
        ),
    ),
    "cache-duration": Row(
        {
            N + "auth-url": URL,
            N + "auth-cache-key": "$cookie_session",
            N + "auth-cache-duration": "200 202 10m, 401 30s",
        },
        (
            ExternalAuth(
                URL,
                cache_key="$cookie_session",
                cache_statuses=(200, 202, 401),
                cache_seconds=(600, 600, 30),
            ),
        ),
    ),
    "cache-key-unknown-variable": Row(
        {N + "auth-url": URL, N + "auth-cache-key": "$request_body"},
        (DENIED,),
        ("InvalidAnnotation",),
    ),
    "cache-duration-invalid": Row(
        {N + "auth-url": URL, N + "auth-cache-key": "k", N + "auth-cache-duration": "200 10x"},
        (DENIED,),
        ("InvalidAnnotation",),
    ),
    # auth.go "should not create additional upstream block when auth-keepalive is negative"
    "keepalive-negative": Row(
        {N + "auth-url": URL, N + "auth-keepalive": "-5"}, (ExternalAuth(URL),)
    ),
    "keepalive": Row(
        {
            N + "auth-url": URL,
            N + "auth-keepalive": "10",
            N + "auth-keepalive-requests": "50",
            N + "auth-keepalive-timeout": "5",
            N + "auth-keepalive-share-vars": "true",
        },
        (ExternalAuth(URL, keepalive=10, keepalive_requests=50, keepalive_timeout=5),),
    ),
    "always-set-cookie": Row(
        {N + "auth-url": URL, N + "auth-always-set-cookie": "true"},
        (ExternalAuth(URL, always_set_cookie=True),),
    ),
    # Without auth-url the others do nothing (and an invalid one is only reported).
    "no-url": Row({N + "auth-signin": "http://a/"}, ()),
    "no-url-invalid-other": Row({N + "auth-method": "get"}, (), ("InvalidAnnotation",)),
    # portico.dev/ wins
    "portico-prefix": Row(
        {N + "auth-url": "http://a.example/", P + "auth-url": URL}, (ExternalAuth(URL),)
    ),
    # satisfy: the access checks, then the marker that makes them alternatives
    "satisfy-any": Row(
        {N + "auth-url": URL, N + "whitelist-source-range": "10.0.0.0/8", N + "satisfy": "any"},
        (SourceRanges(("10.0.0.0/8",)), ExternalAuth(URL), SatisfyAny()),
    ),
    "satisfy-all": Row(
        {N + "auth-url": URL, N + "whitelist-source-range": "10.0.0.0/8", N + "satisfy": "all"},
        (SourceRanges(("10.0.0.0/8",)), ExternalAuth(URL)),
    ),
    "satisfy-invalid-is-all": Row(
        {N + "auth-url": URL, N + "satisfy": "either"}, (ExternalAuth(URL),), ("InvalidAnnotation",)
    ),
}


@pytest.mark.parametrize("row", [pytest.param(r, id=k) for k, r in ROWS.items()])
def test_annotations(row: Row) -> None:
    result = run(row.annotations)
    assert policy(result) == row.policy
    assert tuple(sorted(p.reason for p in result.problems)) == row.problems


GLOBAL = ExternalAuth("http://global.example/auth", signin="http://$host/start")


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        # global_external_auth.go: every Ingress takes the ConfigMap's global-auth-url ...
        ({}, (GLOBAL,)),
        ({N + "enable-global-auth": "true"}, (GLOBAL,)),
        # ... "should return status code 200 when request whitelisted (via ingress annotation)"
        ({N + "enable-global-auth": "false"}, ()),
        # an Ingress's own auth-url replaces it (shouldApplyGlobalAuth)
        ({N + "auth-url": URL}, (ExternalAuth(URL),)),
    ],
)
def test_global_auth(annotations: dict[str, str], expected: tuple[object, ...]) -> None:
    assert policy(run(annotations, CompileSettings(global_auth=GLOBAL))) == expected


@pytest.mark.parametrize(
    ("data", "step", "errors"),
    [
        ({}, None, {}),
        ({"global-auth-url": ""}, None, {}),
        (
            {"global-auth-url": "http://a/", "global-auth-response-headers": "X-User"},
            ExternalAuth("http://a/", response_headers=("X-User",)),
            {},
        ),
        ({"global-auth-url": "a/"}, None, {"global-auth-url"}),
        (
            {"global-auth-url": "http://a/", "global-auth-method": "get"},
            None,
            {"global-auth-method"},
        ),
    ],
)
def test_global_auth_keys(data: dict[str, str], step: object, errors: set[str]) -> None:
    found, problems = global_auth(data)
    assert found == step and set(problems) == set(errors)


def test_auth_proxy_set_headers_from_a_configmap() -> None:
    # auth.go `should set "proxy_set_header "My-Custom-Header" "42";" when auth-headers are set`
    annotations = {N + "auth-url": URL, N + "auth-proxy-set-headers": "default/auth-headers"}
    headers = configmap("auth-headers", {"My-Custom-Header": "42", "X-Var": "$host"})
    result = run(annotations, None, headers)
    assert policy(result) == (
        ExternalAuth(URL, set_names=("My-Custom-Header",), set_values=("42",)),
    )
    # An entry naming an nginx variable is a problem and is not sent.
    assert [p.reason for p in result.problems] == ["InvalidHeader"]
    # A missing ConfigMap denies the routes rather than ask the auth service without them.
    missing = run(annotations)
    assert policy(missing) == (DENIED,)
    assert [p.reason for p in missing.problems] == ["ConfigMapNotFound"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200 202 401 5m", ((200, 202, 401), (300, 300, 300))),
        ("5m", ((200, 301, 302), (300, 300, 300))),  # nginx's proxy_cache_valid time alone
        ("200 1h, 200 1s", ((200,), (1,))),  # the later entry wins
        ("401 500ms", ((401,), (1,))),  # at least one second
    ],
)
def test_cache_durations(text: str, expected: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    assert cache_durations(text) == expected
