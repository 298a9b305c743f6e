"""CORS in the compiler: the grammars of enable-cors and the cors-* annotations, ingress-nginx's
defaults, what an invalid value becomes, and where the Cors step goes in a route's policy.

Rows cite ingress-nginx: internal/ingress/annotations/cors/main.go (grammar, defaults), its e2e
tests (test/e2e/annotations/cors.go "<name>") and the template's CORS block
(rootfs/etc/nginx/template/nginx.tmpl).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controller.compiler import CompileSettings, compile_view
from controller.compiler.annotations import (
    CORS_DEFAULT_HEADERS,
    CORS_DEFAULT_METHODS,
    parse_annotations,
)
from proxy.config import (
    AppRoot,
    Cors,
    HTTPSRedirect,
    PolicyStep,
    Redirect,
    Refuse,
    SourceRanges,
)
from tests.kube_factory import (
    endpoint_slice,
    ingress,
    ingress_class,
    rule,
    service,
    service_port,
    store_of,
    tls_entry,
)
from tests.unenforced import unenforced  # noqa: F401 (a fixture)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
DEFAULT = Cors(("*",), CORS_DEFAULT_METHODS, CORS_DEFAULT_HEADERS, "", True, 1728000)


def _cors(annotations: dict[str, str], prefix: str = N) -> tuple[Cors | None, list[str]]:
    opts, errors = parse_annotations({prefix + k: v for k, v in annotations.items()})
    return opts.cors, [e.annotation.removeprefix(prefix) for e in errors]


# (annotations besides enable-cors "true", the Cors step's fields that differ from DEFAULT)
VALID: list[tuple[dict[str, str], dict[str, Any]]] = [
    # cors.go "should enable cors": ingress-nginx's defaults (main.go's default* constants).
    ({}, {}),
    # cors.go "should not break functionality", "... with extra domain": "*" anywhere wins.
    ({"cors-allow-origin": "*"}, {}),
    ({"cors-allow-origin": "*, foo.bar.com"}, {}),
    ({"cors-allow-origin": "https://a.test, *"}, {}),
    # cors.go "should allow - missing origins (should allow all origins)": blank is the default.
    ({"cors-allow-origin": "      "}, {}),
    ({"cors-allow-origin": ""}, {}),
    # cors.go "should allow origin for cors".
    (
        {"cors-allow-origin": "https://origin.cors.com:8080"},
        {"origins": ("https://origin.cors.com:8080",)},
    ),
    # cors.go "should allow correct origins - single origin for multiple cors values": an entry
    # without a scheme is skipped (corsOriginRegex), without error.
    (
        {"cors-allow-origin": "origin.cors.com:8080, https://origin2.cors.com, https://origin.com"},
        {"origins": ("https://origin2.cors.com", "https://origin.com")},
    ),
    # Only entries without a scheme: no origin at all (ingress-nginx writes no CORS `if`).
    ({"cors-allow-origin": "foo.bar.com"}, {"origins": ()}),
    # cors.go "... contain trailing comma": empty entries are skipped.
    (
        {"cors-allow-origin": "https://a.test:8080,   ,https://b.test:8080,"},
        {"origins": ("https://a.test:8080", "https://b.test:8080")},
    ),
    # cors.go "... wildcard origin (2 subdomains)": one wildcard label after the scheme.
    (
        {"cors-allow-origin": "http://*.origin.cors.com, http://*.origin.com:8080"},
        {"origins": ("http://*.origin.cors.com", "http://*.origin.com:8080")},
    ),
    # cors.go "should allow - origins with non-http[s] protocols"; "null" (main.go's doc).
    (
        {"cors-allow-origin": "test://localhost, tauri://localhost:3000, null"},
        {"origins": ("test://localhost", "tauri://localhost:3000", "null")},
    ),
    # cors.go "should set cors methods to only allow POST, GET" (as written).
    ({"cors-allow-methods": "POST, GET"}, {"methods": "POST, GET"}),
    ({"cors-allow-methods": "PUT,PATCH"}, {"methods": "PUT,PATCH"}),
    # cors.go "should allow headers for cors".
    ({"cors-allow-headers": "DNT, User-Agent"}, {"headers": "DNT, User-Agent"}),
    ({"cors-allow-headers": "X_Custom-1"}, {"headers": "X_Custom-1"}),
    # cors.go "should expose headers for cors"; "*" (corsExposeHeadersRegex).
    (
        {"cors-expose-headers": "X-CustomResponseHeader, X-CustomSecondHeader"},
        {"expose_headers": "X-CustomResponseHeader, X-CustomSecondHeader"},
    ),
    ({"cors-expose-headers": "*"}, {"expose_headers": "*"}),
    # cors.go "should disable cors allow credentials" (strconv.ParseBool spellings).
    ({"cors-allow-credentials": "false"}, {"credentials": False}),
    ({"cors-allow-credentials": "0"}, {"credentials": False}),
    ({"cors-allow-credentials": "True"}, {}),
    # cors.go "should set cors max-age" (strconv.Atoi).
    ({"cors-max-age": "200"}, {"max_age": 200}),
    ({"cors-max-age": "0"}, {"max_age": 0}),
    # main.go: an empty list takes the default (parseString refuses "").
    ({"cors-allow-methods": " "}, {}),
    ({"cors-allow-headers": ""}, {}),
]


@pytest.mark.parametrize(("annotations", "changes"), VALID, ids=repr)
def test_valid(annotations: dict[str, str], changes: dict[str, Any]) -> None:
    cors, errors = _cors({"enable-cors": "true", **annotations})
    assert errors == []
    assert cors == dataclasses.replace(DEFAULT, **changes)


# (annotation, value, the Cors step's fields that differ from DEFAULT): an InvalidAnnotation.
INVALID: list[tuple[str, str, dict[str, Any]]] = [
    # corsOriginRegexValidator: a path, a query or a space inside is no origin. ingress-nginx
    # would allow every origin; Portico allows none (fails closed).
    ("cors-allow-origin", "https://a.test/path", {"origins": ()}),
    ("cors-allow-origin", "https://a.test, https://b.test?x", {"origins": ()}),
    ("cors-allow-origin", "https://a .test", {"origins": ()}),
    ("cors-allow-origin", "https://*.*.a.test", {"origins": ()}),
    # corsMethodsRegex: letters only; the default applies (as main.go's fallback).
    ("cors-allow-methods", "GET;", {}),
    ("cors-allow-methods", "GET\nX-Injected: 1", {}),
    ("cors-allow-methods", ",GET", {}),
    # HeadersVariable: letters, digits, -, _, commas and spaces.
    ("cors-allow-headers", "X-A: 1", {}),
    ("cors-allow-headers", "$http_x", {}),
    # corsExposeHeadersRegex.
    ("cors-expose-headers", "X-A;", {}),
    # ParseBool: ingress-nginx would allow credentials; Portico does not (fails closed).
    ("cors-allow-credentials", "yes", {"credentials": False}),
    # Atoi: the default applies.
    ("cors-max-age", "1d", {}),
    ("cors-max-age", "1.5", {}),
]


@pytest.mark.parametrize(("name", "value", "changes"), INVALID, ids=repr)
def test_invalid(name: str, value: str, changes: dict[str, Any]) -> None:
    cors, errors = _cors({"enable-cors": "true", name: value})
    assert errors == [name]
    assert cors == dataclasses.replace(DEFAULT, **changes)


@pytest.mark.parametrize(
    ("annotations", "errors"),
    [
        # No enable-cors, or "false": the cors-* annotations do nothing (main.go).
        ({"cors-allow-origin": "https://a.test"}, []),
        ({"enable-cors": "false", "cors-allow-origin": "https://a.test"}, []),
        ({"enable-cors": "F"}, []),
        # An invalid enable-cors is false (main.go: "enable-cors is invalid, defaulting to
        # 'false'"), and reported.
        ({"enable-cors": "yes"}, ["enable-cors"]),
    ],
    ids=repr,
)
def test_not_enabled(annotations: dict[str, str], errors: list[str]) -> None:
    assert _cors(annotations) == (None, errors)


def test_portico_prefix_wins() -> None:
    cors, _ = _cors({"enable-cors": "true", "cors-max-age": "5"})
    assert cors is not None
    opts, errors = parse_annotations(
        {N + "enable-cors": "true", N + "cors-max-age": "5", P + "cors-max-age": "7"}
    )
    assert errors == () and opts.cors == dataclasses.replace(cors, max_age=7)


# ---- where the step goes --------------------------------------------------------------------


def _policy(annotations: dict[str, str], tls: bool = False) -> tuple[PolicyStep, ...]:
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("web", endpoints=["10.0.0.1"], ports=[("http", 8080)]),
        ingress(
            "ing",
            annotations={N + k: v for k, v in annotations.items()},
            rules=[rule("a.test")],
            tls=[tls_entry("missing", "a.test")] if tls else [],
        ),
    ]
    snapshot = compile_view(store_of(*objects), CompileSettings()).snapshot
    (host,) = [h for h in snapshot.routes.virtual_hosts if h.host == "a.test"]
    return host.rules[0].options.policy


def _kinds(policy: tuple[PolicyStep, ...]) -> list[type]:
    return [type(step) for step in policy]


@pytest.mark.parametrize(
    ("annotations", "tls", "kinds"),
    [
        # The template's CORS `if` blocks run in the rewrite phase: the preflight answer comes
        # before the HTTPS redirect (Lua, at the end of that phase) and the access checks.
        ({"whitelist-source-range": "10.0.0.0/8"}, True, [Cors, HTTPSRedirect, SourceRanges]),
        # ... and before permanent-redirect's `return`, written later in the location.
        ({"permanent-redirect": "https://b.test/"}, False, [Cors, Redirect]),
        # app-root is a server-level `if`: before any location's.
        ({"app-root": "/app"}, False, [AppRoot, Cors]),
        # A denied location (a source range that does not read) has no CORS block.
        ({"whitelist-source-range": "nonsense"}, False, [Refuse]),
        # Unenforced access control fails closed: no preflight answer either.
        ({"auth-tls-match-cn": "CN=client"}, False, [Refuse]),
    ],
    ids=repr,
)
@pytest.mark.usefixtures("unenforced")
def test_policy_order(annotations: dict[str, str], tls: bool, kinds: list[type]) -> None:
    assert _kinds(_policy({"enable-cors": "true", **annotations}, tls)) == kinds
